"""das: adapt Whisper to new domains with synthetic data, and decode with many adapters.

    python das.py transcribe [--loras music.st,sports.st] audio.wav ...
    python das.py generate --domain music --count 1500
    python das.py train --data data/music/manifest.jsonl --out adapters/music.st
    python das.py eval --data test/music/manifest.jsonl [--loras ...]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from decoders import ENDS, STRATEGIES, check_tau

# Decoding defaults. route keeps one stream's whole transcript per utterance (decoders/route.py;
# not the paper's token-level rule): on validation speech it made fewer errors than max-only, in
# domain and out (RESULTS.md, "τ for routing"), and τ = 0.01 tied best there (a tie goes to the
# larger τ, which leaves more utterances to the base). The end rule applies to the token-level
# strategies only: "base" lets only the base model end the transcript, because the adapters,
# trained on single sentences, ended long real prompts early; "any" is Algorithm 1 as written.
DEFAULT_TAU, DEFAULT_STRATEGY, DEFAULT_END = 0.01, "route", "base"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="base", help="'base' (default), 'tiny.en', or a model directory")
    p.add_argument("--language", default="en", help="spoken language code (multilingual models)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on a GPU, launch every decoding step's kernels one by one instead of replaying CUDA graphs "
                        "(same tokens, slower; decoders/cuda_graphs.py)")
    p.add_argument("--loras", default="", help="comma-separated adapter files (.st) decoded together with ADML")
    p.add_argument("--tau", default=DEFAULT_TAU, type=tau_argument,
                   help=f"ADML confidence threshold τ of Eq. (3), or route's margin in average log-probability, "
                        f">= 0 (default {DEFAULT_TAU})")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES,
                   help="how the streams make one transcript: route (default; one stream's whole transcript per "
                        "utterance, an adapter's when its average log-probability per token beats the base's by τ; "
                        "not the paper's rule, decoders/route.py), max-only (token by token: an adapter's token when it "
                        "is surer than the base by τ, else the base's), das (Eq. (3) as written: also the least sure "
                        "stream's token when one is less sure than the base by τ), or an ablation")
    p.add_argument("--end", default=DEFAULT_END, choices=ENDS,
                   help="token-level rules only: which streams may end the transcript: base (default; an adapter's "
                        "end-of-text is never taken, and the base's always is) or any (Algorithm 1 as written)")


def tau_argument(value: str) -> float:
    """--tau is checked while parsing, so a bad value fails before any model loads."""
    try:
        return check_tau(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def format_timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(result: dict, path: str, fmt: str, rtf: float, n_files: int, streams: list[str]) -> str:
    if fmt == "jsonl":
        row = {"audio": path, "text": result["text"], "duration": round(result["duration"], 3), "rtf": round(rtf, 4)}
        if streams:  # how many tokens each stream (base, then each adapter) contributed
            row["stream_tokens"] = dict(zip(streams, result["stream_tokens"] or [0] * len(streams)))
        return json.dumps(row, ensure_ascii=False)
    if fmt == "text":
        return f"{path}: {result['text']}" if n_files > 1 else result["text"]
    sep = "," if fmt == "srt" else "."
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    for i, seg in enumerate(result["segments"], 1):
        if fmt == "srt":
            lines.append(str(i))
        lines += [f"{format_timestamp(seg['start'], sep)} --> {format_timestamp(seg['end'], sep)}", seg["text"], ""]
    return "\n".join(lines)


def cmd_transcribe(args) -> int:
    import torch

    from whisper_min import DecodingOptions, load_audio, transcribe
    from whisper_min.audio import SAMPLE_RATE, AudioError
    from whisper_min.transcribe import TranscribeOptions

    if (loaded := load(args, "das")) is None:
        return 2
    model, tokenizer, decode_fn = loaded
    options = DecodingOptions(language=args.language, without_timestamps=args.no_timestamps)
    failed = 0
    for path in args.files:
        try:
            audio = load_audio(path)
            if len(audio) < SAMPLE_RATE // 10:
                raise AudioError(f"{path}: only {len(audio)} samples ({len(audio) / SAMPLE_RATE:.3f} s); "
                                 "need at least 0.1 s of audio")
            start = time.perf_counter()
            with torch.inference_mode():
                result = transcribe(model, audio, tokenizer, options, TranscribeOptions(), decode_fn=decode_fn)
            rtf = (time.perf_counter() - start) / result["duration"]
        except AudioError as e:
            print(f"das: {e}", file=sys.stderr)
            failed += 1
            continue
        if not result["text"]:
            print(f"das: {path}: no speech found", file=sys.stderr)
        streams = ["base", *decode_fn.adapter_names] if hasattr(decode_fn, "adapter_names") else []
        print(render(result, path, args.format, rtf, len(args.files), streams), flush=True)
    return 1 if failed else 0


def cmd_eval(args) -> int:
    """`das.py eval`: WER and RTF of the model, with --loras or without, on each manifest."""
    from evaluation.evaluate import evaluate, transcriber, write_results
    from whisper_min import DecodingOptions

    names = args.name or [p.parent.name or p.stem for p in args.data]
    problems = [f"no such manifest: {p}" for p in args.data if not p.is_file()]
    if len(names) != len(args.data):
        problems.append(f"{len(names)} --name labels for {len(args.data)} --data files")
    if args.limit is not None and args.limit < 1:
        problems.append(f"--limit must be >= 1, not {args.limit}")
    if problems:
        print(f"das eval: {'; '.join(problems)}", file=sys.stderr)
        return 2
    if (loaded := load(args, "das eval")) is None:
        return 2
    model, tokenizer, decode_fn = loaded
    # Test utterances are short requests, decoded as the adapters were trained: no timestamps.
    options = DecodingOptions(language=args.language, without_timestamps=True)
    results = evaluate(args.data, names, transcriber(model, tokenizer, options, decode_fn), args.limit)
    config = {"model": str(args.model), "loras": [p for p in args.loras.split(",") if p.strip()],
              "tau": float(args.tau), "strategy": args.strategy, "end": args.end, "device": args.device}
    write_results(results, config, args.json)
    return 1 if any(r["skipped"] for r in results) else 0


def load(args, prog: str):
    """(model, tokenizer, window decoder) for the model flags, or None once stderr says why."""
    from whisper_min import get_tokenizer, load_model

    try:
        model = load_model(args.model, device=args.device)
        return model, get_tokenizer(args.model, language=args.language), load_decoder(args, model)
    except (OSError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def load_decoder(args, model):
    """The window decoder: plain greedy without --loras, ADML with them."""
    from decoders import make_decoder
    from whisper_min import decode

    paths = [p.strip() for p in args.loras.split(",") if p.strip()]
    if not paths:
        return decode
    return make_decoder(model, paths, tau=args.tau, strategy=args.strategy, end=args.end,
                        cuda_graphs=not args.no_cuda_graphs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="das.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="transcribe audio files (any length, any format soundfile reads)")
    add_model_arguments(p)
    p.add_argument("--format", default="text", choices=["text", "jsonl", "srt", "vtt"], help="output format")
    p.add_argument("--no-timestamps", action="store_true", help="decode each 30 s window without timestamps")
    p.add_argument("files", nargs="+", help="audio files")
    p.set_defaults(run=cmd_transcribe)

    p = sub.add_parser("generate", help="generate synthetic in-domain speech (LLM text + TTS)")
    _lazy(p, "datagen.generate")
    p = sub.add_parser("train", help="train a LoRA adapter (or a baseline) on a manifest")
    _lazy(p, "training.train")
    p = sub.add_parser("eval", help="word error rate and real-time factor on test manifests")
    add_model_arguments(p)
    p.add_argument("--data", nargs="+", required=True, type=Path, help="test manifest.jsonl files, one per test set")
    p.add_argument("--name", nargs="+", default=None, help="a label per --data file (default: the manifest's folder)")
    p.add_argument("--json", type=Path, help="write results with per-utterance details here (default: a JSON line)")
    p.add_argument("--limit", type=int, help="score only the first N utterances of each test set")
    p.set_defaults(run=cmd_eval)

    args = parser.parse_args(argv)
    return args.run(args)


def _lazy(p: argparse.ArgumentParser, module: str) -> None:
    """Subcommands live in their own modules, imported only when present and asked for."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0] and e.name != module:
            raise
        p.set_defaults(run=lambda args: print(f"das: {p.prog} is not available in this build", file=sys.stderr) or 2)
        return
    mod.add_arguments(p)
    p.set_defaults(run=mod.main)


if __name__ == "__main__":
    sys.exit(main())
