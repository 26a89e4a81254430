"""What the eval and tune stages score systems with. Every system runs the same frozen encoder
on the same speech, and routing at every τ needs the same streams, so one process builds all
of them on one base model and its memos (memo.py) instead of running das.py eval for each.

A system is (name, config, files). Its config, recorded in each of its scores, is what its
transcripts depend on, so a score is redone only when its system changes. Kinds: "base" (the
original model), "adml" (DAS: adapters decoded together by a strategy at τ), "lora" (one
adapter merged into the base), "finetune" (a fine-tuned copy of the model)."""

import json
import time
from pathlib import Path

from study_data import claim, log, read_rows, write_rows


def config(kind: str, files, tau: float | None = None, strategy: str | None = None) -> dict:
    return {"kind": kind, "files": [Path(f).name for f in files],
            **({"tau": tau, "strategy": strategy} if kind == "adml" else {})}


def is_done(out: Path, config: dict) -> bool:
    return out.is_file() and read_rows(out)[0].get("config") == config


class Scorer:
    """The base model, its encoder memo and the audio, shared by every system one process scores."""

    def __init__(self, args, run: Path):
        import torch

        import whisper_min
        from memo import EncoderMemo

        if args.threads:
            torch.set_num_threads(args.threads)
        self.args, self.memo_root = args, run / "cache" / "eval"
        self.base = whisper_min.load_model(args.model, device=args.device)
        self.tokenizer = whisper_min.get_tokenizer(args.model, language="en")
        self.options = whisper_min.DecodingOptions(language="en", without_timestamps=True)
        self.base.embed_audio = EncoderMemo(self.base, self.memo_root)
        self.audio: dict[str, object] = {}  # every system hears the same files: each is read once
        self.built: dict[str, tuple] = {}
        self.streams: dict[tuple, object] = {}  # adapter files -> memo.StreamMemo, kept across systems

    def load_audio(self, path: str):
        import whisper_min

        if path not in self.audio:
            self.audio[path] = whisper_min.load_audio(path)
        return self.audio[path]

    def build(self, name: str, config: dict, files):
        """(model, decode_fn) of a system; one system's models in memory at a time. Only the
        base model ends a token-level transcript (das.py's --end base): the adapters, trained
        on single sentences, ended long prompts early."""
        import whisper_min
        from adml import load_stack
        from decoders import make_decoder
        from memo import EncoderMemo, StreamMemo
        from training.methods import load_finetune

        key, files = json.dumps([name, config]), [str(Path(f).resolve()) for f in files]
        if key not in self.built:
            self.built.clear()
            model, decode_fn, kind = self.base, whisper_min.decode, config["kind"]
            if kind == "adml" and config["strategy"] == "route":  # one decode of the streams serves every τ
                if tuple(files) not in self.streams:
                    self.streams[tuple(files)] = StreamMemo(load_stack(self.base, files))
                decode_fn = self.streams[tuple(files)].decoder(config["tau"])
            elif kind == "adml":
                decode_fn = make_decoder(self.base, files, config["tau"], config["strategy"], end="base")
            elif kind == "lora":
                decode_fn = make_decoder(self.base, files)  # one file: plain decoding with it merged in
            elif kind == "finetune":
                model = whisper_min.load_model(self.args.model, device=self.args.device)  # a fresh copy
                load_finetune(files[0], model)
                # An encoder trained too has its own memo, in its own folder: the memo's fingerprint
                # reads fp16-cast layer norms, which a small learning rate may leave unchanged.
                model.embed_audio = EncoderMemo(model, self.memo_root / name) if "enc-dec" in name \
                    else self.base.embed_audio
            self.built[key] = model, decode_fn
        return self.built[key]

    def score(self, name: str, config: dict, files, rows: list[dict], set_name: str, out: Path) -> dict | None:
        """Score one system on one set into `out`; None when it is done or another process has it."""
        from evaluation.evaluate import evaluate_set, transcriber

        lock = out.with_name(out.name + ".lock")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not claim(lock):
            return None
        try:
            if is_done(out, config):
                return None
            model, decode_fn = self.build(name, config, files)
            transcribe_fn = transcriber(model, self.tokenizer, self.options, decode_fn, self.load_audio)
            t = time.time()
            result = evaluate_set(rows, transcribe_fn, f"{name} on {set_name}")
            result.update(system=name, test_set=set_name, config=config, seconds=round(time.time() - t, 1))
            result.pop("rtf", None)  # meaningless with the encoder shared between systems: Table VI measures it
            write_rows(out, [result])
            log(f"{name} on {set_name}: WER {result['wer']}% ({result['utterances']} utts, {result['seconds']} s)")
            return result
        finally:
            lock.unlink(missing_ok=True)


def score_all(args, run: Path, folder: str, todo: list[tuple], sets: dict[str, list[dict]]) -> dict:
    """Score each (name, config, files, set) of `todo` into run/folder/<name>/<set>.json,
    skipping what is done; the base model loads only if something is left to score. Returns
    {(name, set): score} of the scores present (another process may still hold some)."""
    scorer = None
    for name, cfg, files, s in todo:
        if not is_done(run / folder / name / f"{s}.json", cfg):
            scorer = scorer or Scorer(args, run)
            scorer.score(name, cfg, files, sets[s], s, run / folder / name / f"{s}.json")
    return {(name, s): read_rows(run / folder / name / f"{s}.json")[0] for name, cfg, _, s in todo
            if is_done(run / folder / name / f"{s}.json", cfg)}
