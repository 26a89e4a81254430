"""What reproduce.py's eval stage and bench/tune.py score systems with (the class says how)."""

import json
import time
from pathlib import Path

from study_data import claim, log, read_rows, write_rows


class Scorer:
    """The base model, its encoder memo and the audio, shared by every system one process
    scores (evaluation and tuning alike). Each (system, set) score is one JSON that records
    the system's config; a score is redone only when that config changes. A `.lock` beside
    it lets two processes work through the same list without scoring anything twice."""

    def __init__(self, args, run: Path):
        import torch

        import whisper_min
        from encoder_cache import EncoderMemo
        from whisper_min import DecodingOptions

        if args.threads:
            torch.set_num_threads(args.threads)
        self.args, self.memo_root = args, run / "cache" / "eval"
        self.base = whisper_min.load_model(args.model, device=args.device)
        self.tokenizer = whisper_min.get_tokenizer(args.model, language="en")
        self.options = DecodingOptions(language="en", without_timestamps=True)
        self.base.embed_audio = EncoderMemo(self.base, self.memo_root)
        self.audio: dict[str, object] = {}
        self.built: dict[str, tuple] = {}
        self.streams: dict[str, object] = {}  # adapter files -> adml_route.StreamMemo, kept across systems

    def load_audio(self, path: str):  # every system hears the same files: read each once
        import whisper_min

        if path not in self.audio:
            self.audio[path] = whisper_min.load_audio(path)
        return self.audio[path]

    @staticmethod
    def config(kind: str, files, tau: float, strategy: str = "das", end: str = "any", switch: str = "token") -> dict:
        config = {"kind": kind, "files": [Path(f).name for f in files], "tau": tau, "strategy": strategy}
        # Scores made before `end` and `switch` existed stay valid: each is recorded only when not the default.
        return {**config, **({"end": end} if end != "any" else {}), **({"switch": switch} if switch != "token" else {})}

    @staticmethod
    def is_done(out: Path, config: dict) -> bool:
        return out.is_file() and read_rows(out)[0].get("config") == config

    def build(self, name: str, config: dict, files):
        """(model, decode_fn) for a system; one system's models in memory at a time."""
        import adml
        import train
        import whisper_min
        from encoder_cache import EncoderMemo

        key = json.dumps([name, config])
        if key not in self.built:
            self.built.clear()
            model, decode_fn, kind = self.base, whisper_min.decode, config["kind"]
            if kind == "adml" and config["strategy"] == "route":
                decode_fn = self.routed(files, config["tau"])
            elif kind in ("adml", "lora"):
                decode_fn = adml.make_decoder(self.base, [str(f) for f in files], tau=config["tau"],
                                              strategy=config["strategy"], end=config.get("end", "any"),
                                              switch=config.get("switch", "token"))
            elif kind == "finetune":
                model = whisper_min.load_model(self.args.model, device=self.args.device)  # a fresh copy
                train.load_finetune(files[0], model)
                if "enc-dec" in name:  # its encoder changed: its own memo, never the shared one. Its own
                    # folder too: the fingerprint reads fp16-cast layer norms, which a small
                    # learning rate may leave unchanged, so it need not differ from the base's.
                    model.embed_audio = EncoderMemo(model, self.memo_root / name)
                else:
                    model.embed_audio = self.base.embed_audio
            self.built[key] = model, decode_fn
        return self.built[key]

    def routed(self, files, tau: float):
        """`--strategy route` at τ, from one decode of every stream per window for these adapters
        (adml_route.StreamMemo): a τ sweep or the tune stage's routing step decodes once, not per τ."""
        import adml
        from adml_route import StreamMemo

        tau = adml.check_options(tau, "route", "any")
        key = json.dumps([str(Path(f).resolve()) for f in files])
        if key not in self.streams:
            self.streams[key] = StreamMemo(adml.load_stack(self.base, [str(f) for f in files]))
        return self.streams[key].decoder(tau)

    def score(self, name: str, config: dict, files, rows: list[dict], set_name: str, out: Path) -> dict | None:
        """Score one system on one set into `out`; None when it is done or another process has it."""
        from evaluate import evaluate_set, transcriber

        lock = out.with_name(out.name + ".lock")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not claim(lock):
            return None  # a live process is scoring it
        try:
            if self.is_done(out, config):
                return None
            model, decode_fn = self.build(name, config, files)
            transcribe_fn = transcriber(model, self.tokenizer, self.options, decode_fn, self.load_audio)
            t = time.time()
            result = evaluate_set(rows, transcribe_fn, f"{name} on {set_name}")
            result.update(system=name, test_set=set_name, config=config, seconds=round(time.time() - t, 1))
            result.pop("rtf", None)  # meaningless with the encoder shared between systems
            write_rows(out, [result])
            log(f"{name} on {set_name}: WER {result['wer']}% ({result['utterances']} utts, {result['seconds']} s)")
            return result
        finally:
            lock.unlink(missing_ok=True)
