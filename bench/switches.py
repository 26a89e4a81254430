"""Where ADML took an adapter's word: every decoding step at which the transcript took a
token the base model did not propose, with the base's own rank and probability of it.

    python bench/switches.py --run runs/session --set asterisk   # where DAS made more errors
    python bench/switches.py --loras a.st,b.st clip.wav ...      # any clips, any adapters

With --run it reads the study's scores of the original model and of DAS on --set, takes the
utterances where DAS made more word errors, and decodes them again with DAS's config. It
prints one line per switch and a summary: how the base ranked the adapters' tokens, and
how sure the base was of its own. This is how RESULTS.md found that on real speech the
adapters' wrong words were mostly the base's own second choice (the fifth pass).

Nothing of adml's loop is copied: `Recorder` wraps the batched streams, keeps each step's
logits of every stream, and learns which token was taken from the next step's input.
Greedy decoding only: a clip that the temperature fallback decoded by sampling is marked, not
recorded.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adml  # noqa: E402
import das  # noqa: E402
import whisper_min  # noqa: E402


class Recorder:
    """BatchedStreams with a memory: `records` gets one dict per step where a row took a
    token that the base did not propose (and one of the adapters did)."""

    def __init__(self, streams, names: list[str], tokenizer):
        self.streams, self.names, self.tokenizer = streams, names, tokenizer
        self.logits, self.n, self.done, self.records = None, 0, set(), []

    def prefill(self, tokens):
        logits, base = self.streams.prefill(tokens)
        self.logits = logits  # run filters these in place before it picks, so they are what it saw
        return logits, base

    def step(self, token, offset):
        self.record(token[:, 0])
        self.logits = self.streams.step(token, offset)
        return self.logits

    def record(self, taken):
        """taken (U,): the token each row took from the logits kept last."""
        logprobs = F.log_softmax(self.logits.float(), dim=-1)  # (S, U, V)
        best = logprobs.max(dim=-1)  # values, indices: (S, U) each
        for u, t in enumerate(taken.tolist()):
            base = best.indices[0, u].item()
            if u in self.done:
                continue  # a finished row keeps "taking" end-of-text
            if t == self.tokenizer.eot:
                self.done.add(u)
            if t == base:
                continue
            proposers = [s for s in range(1, logprobs.shape[0]) if best.indices[s, u].item() == t]
            if not proposers:
                continue
            s = max(proposers, key=lambda s: best.values[s, u].item())  # the surest adapter that proposed it
            lp = logprobs[0, u]
            self.records.append({
                "row": u, "step": self.n, "adapter": self.names[s - 1],
                "base_id": base, "taken_id": t,
                "base_token": self.tokenizer.decode([base]), "taken": self.tokenizer.decode([t]),
                "base_place": int((lp > lp[t]).sum()) + 1,  # 1: the base's own best
                "base_p": round(lp[t].exp().item(), 3), "base_best_p": round(best.values[0, u].exp().item(), 3),
                "adapter_p": round(best.values[s, u].exp().item(), 3)})
        self.n += 1


def recording_decoder(model, paths: list[str], tau: float, strategy: str, end: str, switch: str):
    """(decode_fn for whisper_min.transcribe, `log`). Set log["windows"] = [] before each
    clip; each window decoded then adds its list of switches, and log["sampled"] tells
    whether a window was decoded by a sampled retry (its switches are not recorded)."""
    stack = adml.load_stack(model, paths)
    names = [Path(p).stem for p in paths]
    log = {"windows": [], "sampled": False}

    @torch.inference_mode()
    def decode_fn(model, mel, tokenizer, options, audio_features=None):
        if audio_features is None:
            mel = mel[None] if mel.ndim == 2 else mel
            audio_features = model.embed_audio(mel.to(model.device, model.decoder.token_embedding.weight.dtype))
        with adml.swapped(model, adml.multi_lora_modules(model, stack)):
            streams = Recorder(adml.BatchedStreams(model, stack.k, audio_features), names, tokenizer)
            results = adml.run(streams, audio_features, tokenizer, options, model.dims.n_vocab,
                               model.dims.n_text_ctx, tau, strategy, end, switch)
        if options.temperature == 0:
            log["windows"].append(streams.records)
        else:  # a retry of the window just decoded greedily, whose switches no longer apply
            log["windows"][-1:] = [[]]
            log["sampled"] = True
        return results

    return decode_fn, log


def summary(records: list[dict]) -> str:
    places = Counter(min(r["base_place"], 11) for r in records)
    unsure = sum(r["base_best_p"] < 0.5 for r in records)
    ranks = ", ".join(f"{'>10' if p == 11 else p}: {n}" for p, n in sorted(places.items()))
    return (f"{len(records)} switches to an adapter's token; the base's place for it ({ranks}); "
            f"the base's own best token below probability 0.5 in {unsure}")


def worse_utterances(run: Path, test_set: str, system: str) -> tuple[list[dict], dict]:
    """The utterances of `test_set` where `system` made more word errors than the original
    model, and the system's config (from the study's score files)."""
    def score(name):
        path = run / "eval" / name / f"{test_set}.json"
        if not path.is_file():
            raise SystemExit(f"{path}: no such score; run bench/reproduce.py --stages eval first")
        return json.loads(path.read_text().splitlines()[0])

    def errors(d):
        return d["substitutions"] + d["deletions"] + d["insertions"]

    ours, original = score(system), score("original")
    before = {d["audio"]: d for d in original["details"]}
    return [d for d in ours["details"] if errors(d) > errors(before[d["audio"]])], ours["config"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audio", nargs="*", help="clips to decode (without --run)")
    ap.add_argument("--run", type=Path, help="a bench/reproduce.py run folder")
    ap.add_argument("--set", default="asterisk", help="with --run: the test set (default asterisk)")
    ap.add_argument("--system", default="DAS", help="with --run: the scored system (default DAS)")
    ap.add_argument("--loras", default="", help="without --run: comma-separated adapter files")
    # Without --run: the shipped token-level setting (streams switch only token by token, so
    # not das.py's default, route, which keeps one stream's whole transcript).
    ap.add_argument("--tau", type=float, default=das.DEFAULT_TAU)
    ap.add_argument("--strategy", default="max-only", choices=[s for s in adml.STRATEGIES if s != "route"])
    ap.add_argument("--end", default=das.DEFAULT_END, choices=adml.ENDS)
    ap.add_argument("--switch", default=das.DEFAULT_SWITCH, choices=adml.SWITCHES)
    ap.add_argument("--model", default="base")
    ap.add_argument("--json", type=Path, help="write every record here")
    args = ap.parse_args()

    refs = {}
    if args.run:
        rows, config = worse_utterances(args.run, args.set, args.system)
        paths = [str(args.run / "models" / f) for f in config["files"]]
        tau, strategy = config["tau"], config["strategy"]
        end, switch = config.get("end", "any"), config.get("switch", "token")
        clips, refs = [d["audio"] for d in rows], {d["audio"]: d["ref_norm"] for d in rows}
        print(f"{len(clips)} utterances of {args.set} where {args.system} made more errors than the original")
    else:
        paths, clips = [p for p in args.loras.split(",") if p], args.audio
        tau, strategy, end, switch = args.tau, args.strategy, args.end, args.switch
        if not paths or not clips:
            ap.error("give --run, or --loras and audio files")
    model = whisper_min.load_model(args.model)
    tokenizer = whisper_min.get_tokenizer(args.model, language="en")
    decode_fn, log = recording_decoder(model, paths, tau, strategy, end, switch)
    options = whisper_min.DecodingOptions(language="en", without_timestamps=True)
    everything = []
    for clip in clips:
        log["windows"], log["sampled"] = [], False
        text = whisper_min.transcribe(model, whisper_min.load_audio(clip), tokenizer, options,
                                      decode_fn=decode_fn)["text"].strip()
        print(f"\n{clip}\n  reference: {refs.get(clip, '?')}\n  decoded:   {text}")
        if log["sampled"]:
            print("  (a window decoded by a sampled retry of the temperature fallback: not recorded)")
        records = [{"window": w, **r} for w, window in enumerate(log["windows"]) for r in window]
        for r in records:
            print(f"  window {r['window']} step {r['step']:3d}  {r['adapter']:>10}: {r['base_token']!r} -> "
                  f"{r['taken']!r}  (the base's place {r['base_place']}, p {r['base_p']}; "
                  f"its best p {r['base_best_p']})")
        everything += [{"audio": clip, "text": text, **r} for r in records]
    print("\n" + summary(everything))
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
