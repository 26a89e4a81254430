"""The paper's Table VI on this machine: real-time factor of ADML with k adapters, batched
(one pass, B(AX)) and sequential (each adapter's model run on its own), against the base.

    python bench/table6.py [--quick] [--device cuda] [--ks 1,2,3,10,25] [--clips N]
    python bench/table6.py --threads 1 --clock cpu   # on a CPU shared with other work
    python bench/table6.py --device cuda --cuda-graphs --sdpa-math --strategy route

RTF = time (log-mel + encoder + decoding, one utterance at a time as the paper decodes) /
audio seconds. %dP and %dS are the RTF increases over the base of the batched and the
sequential forms; speed-up = %dS / %dP, the paper's last column. Every configuration runs
once per round, rounds interleaved, and each keeps its fastest round: on a shared machine
only ratios from the same run mean anything. Adapters are random rank-64 deltas (the rank of
real PiSSA deltas) on the paper's targets, small enough that the transcripts, and so the
number of decoding steps, stay the base's; the token counts are printed to check.
--strategy route: the batched rows are routing's one pass, the sequential rows its k + 1
plain decodes. --cuda-graphs: the original and batched rows replay each step from CUDA
graphs (decoders/cuda_graphs.py, the same loop for both, k = 0 for the original), recorded in
an untimed first pass whose token ids are checked against eager decoding.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adml  # noqa: E402
import lora  # noqa: E402
import whisper_min  # noqa: E402
from decoders import STRATEGIES, decode as decode_adml  # noqa: E402
from decoders.cuda_graphs import GraphedDecoder  # noqa: E402
from decoders.reference import decode_sequential, decode_streams_plain  # noqa: E402
from decoders.route import decode_routed, route  # noqa: E402
from whisper_min.decoding import DecodingOptions, decode  # noqa: E402

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def random_adapters(model, k: int, rank: int, scale: float = 0.05) -> adml.StackedAdapters:
    """k random rank-`rank` adapters on lora.DEFAULT_TARGETS of every decoder block, stacked."""
    g, adapters = torch.Generator().manual_seed(0), []
    for i in range(k):
        deltas = {}
        for b in range(len(model.decoder.blocks)):
            for t in lora.DEFAULT_TARGETS:
                lin = model.get_submodule(f"decoder.blocks.{b}.{t}")
                A = torch.randn(rank, lin.in_features, generator=g) / math.sqrt(lin.in_features)
                B = torch.randn(lin.out_features, rank, generator=g) * scale / math.sqrt(rank)
                deltas[f"decoder.blocks.{b}.{t}"] = (A, B)
        adapters.append(SimpleNamespace(name=f"random{i}", deltas=deltas))
    return adml.stack_adapters(adapters, model)


def configurations(model, args, ks: list[int]) -> tuple[dict, dict]:
    """{name: decode_fn} to time ("original", "<k>-P" batched, "<k>-S" sequential), and with
    --cuda-graphs each graphed configuration's eager twin, to check its tokens against."""
    strategy = args.strategy
    tau = 0.0 if strategy == "route" else 0.025  # routing's cost does not depend on τ; 0.025 is the paper's
    configs, stacks = {"original": decode}, {k: random_adapters(model, k, args.rank) for k in ks}
    for k, stack in stacks.items():
        if strategy == "route":
            configs[f"{k}-P"] = lambda m, mel, tok, opt, s=stack: decode_routed(m, mel, tok, opt, None, s, tau)
            configs[f"{k}-S"] = lambda m, mel, tok, opt, s=stack: route(
                decode_streams_plain(m, mel, tok, opt, None, s), tau)
        else:
            configs[f"{k}-P"] = lambda m, mel, tok, opt, s=stack: decode_adml(m, mel, tok, opt, adapters=s, tau=tau,
                                                                              strategy=strategy)
            # the sequential reference takes per-adapter deltas: unstacked here, outside the timing
            deltas = [{n: (A[i], B[i]) for n, (A, B) in stack.deltas.items()} for i in range(k)]
            configs[f"{k}-S"] = lambda m, mel, tok, opt, d=deltas: decode_sequential(
                m, mel, tok, opt, adapters=d, tau=tau, strategy=strategy)
        if args.no_sequential:
            del configs[f"{k}-S"]
    eager = {}
    if args.cuda_graphs:
        eager = {name: configs[name] for name in ["original", *(f"{k}-P" for k in ks)]}
        configs["original"] = GraphedDecoder(model)
        configs.update({f"{k}-P": GraphedDecoder(model, stacks[k], tau, strategy) for k in ks})
    return configs, eager


def run_config(model, tokenizer, audios, decode_fn, clock) -> tuple[float, list[list[int]]]:
    """Seconds for all clips (mel, encoder, decoding; one utterance at a time), and each clip's tokens."""
    options = DecodingOptions(without_timestamps=True)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    t0, tokens = clock(), []
    for audio in audios:
        mel = whisper_min.log_mel_spectrogram(whisper_min.pad_or_trim(audio), device=model.device)
        tokens.append(list(decode_fn(model, mel, tokenizer, options)[0].tokens))
    sync()
    return clock() - t0, tokens


def measure(model, tokenizer, audios, configs: dict, eager: dict, args, clock) -> tuple[dict, dict]:
    """Each configuration's fastest round in seconds, and its tokens."""
    run_config(model, tokenizer, audios[:1], decode, clock)  # warm-up
    for name, fn in eager.items():  # record every graph (untimed), and check the tokens against eager decoding
        same = run_config(model, tokenizer, audios, configs[name], clock)[1] == \
            run_config(model, tokenizer, audios, fn, clock)[1]
        print(f"# {name}: CUDA-graph token ids {'equal' if same else 'DIFFER FROM'} eager decoding's", flush=True)
    best, tokens = {}, {}
    for r in range(args.rounds):
        for name, fn in configs.items():
            t, tokens[name] = run_config(model, tokenizer, audios, fn, clock)
            best[name] = min(best.get(name, math.inf), t)
            print(f"  round {r + 1} {name:>9}: {t:7.2f} s, {sum(map(len, tokens[name]))} tokens", file=sys.stderr,
                  flush=True)
    return best, tokens


def table(best: dict, tokens: dict, ks: list[int], seconds: float) -> tuple[float, list[dict]]:
    """Print Table VI; returns the original's RTF and a row per k. P = S: the batched and the
    sequential forms gave the same token ids on every clip (what the tests check on the CPU,
    here on whatever device this runs on)."""
    base = best["original"] / seconds
    print(f"{'':>10} {'RTF':>8} {'%dP':>8} {'%dS':>8} {'speed-up':>9} {'tokens':>7} {'P = S':>6}")
    print(f"{'original':>10} {base:8.4f} {'-':>8} {'-':>8} {'-':>9} {sum(map(len, tokens['original'])):>7} {'-':>6}")
    rows = []
    for k in ks:
        rtf, seq = best[f"{k}-P"] / seconds, best.get(f"{k}-S")
        dp, ds = rtf / base - 1, None if seq is None else seq / seconds / base - 1
        speedup = ds / dp if ds is not None and dp > 0 else None
        same = tokens[f"{k}-P"] == tokens[f"{k}-S"] if seq is not None else None
        print(f"{f'{k}-domain':>10} {rtf:8.4f} {100 * dp:+7.1f}% {'-' if ds is None else f'{100 * ds:+7.1f}%':>8} "
              f"{'-' if speedup is None else f'{speedup:.1f}x':>9} {sum(map(len, tokens[f'{k}-P'])):>7} "
              f"{'-' if same is None else 'yes' if same else 'NO':>6}")
        rows.append({"k": k, "rtf": rtf, "dP": dp, "dS": ds, "speedup": speedup, "same_tokens": same,
                     "rtf_sequential": None if seq is None else seq / seconds})
    return base, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base", help="embedded model name or model directory")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--ks", default="1,2,3,10,25", help="adapter counts, comma-separated")
    p.add_argument("--rank", type=int, default=64, help="adapter rank (real PiSSA deltas are 2r = 64)")
    p.add_argument("--clips", type=int, default=5, help="how many LibriVox clips")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each config keeps its fastest")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: time.perf_counter; cpu: this process's CPU time, which on a shared machine "
                        "leaves out the time other processes hold the cores (use with --threads 1)")
    p.add_argument("--no-sequential", action="store_true", help="skip the sequential reference (it is slow)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="original and batched ADML replay each decoding step from a CUDA graph (needs --device cuda)")
    p.add_argument("--sdpa-math", action="store_true",
                   help="on CUDA, attention through PyTorch's plain-matmul SDPA instead of its fused kernels, whose "
                        "one-query-row kernel is slow (the base uses SDPA everywhere, ADML's cross-attention never)")
    p.add_argument("--strategy", default="das", choices=STRATEGIES,
                   help="the rule the streams decode with (das: Eq. (3), the paper's; route: decoders/route.py)")
    p.add_argument("--quick", action="store_true", help="2 clips, 1 round, k = 1, 3, 25")
    p.add_argument("--json", default=None, help="also write the table here (bench/report.py reads it)")
    args = p.parse_args()
    if args.quick:
        args.clips, args.rounds, args.ks = 2, 1, "1,3,25"
    if args.cuda_graphs and not args.device.startswith("cuda"):
        p.error("--cuda-graphs needs --device cuda")
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu measures CPU time, which misses GPU work: use --clock wall with --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sdpa_math:
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.set_grad_enabled(False)

    model = whisper_min.load_model(args.model, device=args.device)
    tokenizer = whisper_min.get_tokenizer(args.model)
    audios = [torch.from_numpy(whisper_min.load_audio(str(w))) for w in sorted(LIBRIVOX.glob("*.wav"))[: args.clips]]
    seconds = sum(len(a) for a in audios) / 16000
    ks = [int(k) for k in args.ks.split(",")]
    setup = (f"{args.model} on {args.device} ({torch.get_num_threads()} threads), {len(audios)} LibriVox clips, "
             f"{seconds:.1f} s of audio, --strategy {args.strategy}, rank {args.rank}, {args.rounds} round(s), "
             f"{args.clock} clock" + (", CUDA graphs" if args.cuda_graphs else "")
             + (", math SDPA" if args.sdpa_math else ""))
    print(f"# {setup}", flush=True)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    best, tokens = measure(model, tokenizer, audios, *configurations(model, args, ks), args, clock)
    base, rows = table(best, tokens, ks, seconds)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setup": setup, "original": base, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
