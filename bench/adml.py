"""The paper's Table VI on this machine: real-time factor of ADML with k adapters, batched
(one pass, B(AX)) and sequential (each adapter's model run on its own), against the base.

    python bench/adml.py [--quick] [--device cuda] [--ks 1,2,3,10,25] [--clips N]
    python bench/adml.py --threads 1 --clock cpu   # on a CPU shared with other work
    python bench/adml.py --profile 3 --clips 1     # where the time goes, by operator
    python bench/adml.py --device cuda --cuda-graphs   # steps replayed from CUDA graphs (cuda_graphs.py)

RTF = wall time (log-mel + encoder + decoding, per utterance as the paper decodes) / audio
seconds. %dP and %dS are the RTF increases over the base of the batched and the sequential
forms; speed-up = %dS / %dP, the paper's last column. Every configuration runs once per
round, rounds interleaved, and each reports its fastest round: the machine is shared, so
only ratios from the same run mean anything. Adapters are random rank-64 deltas (the rank
of real PiSSA deltas) on the paper's targets, small enough that the transcripts (and so
the number of decoding steps) stay the base's; the token counts are printed to check.
With --cuda-graphs the original and the batched rows decode through cuda_graphs.GraphedDecoder
(the same loop for both, k = 0 for the original), recorded in an untimed first pass whose
token ids are checked against eager decoding; the sequential rows stay eager.
With --strategy route (adml_route.py) the batched rows are routing's one pass (replayed from
CUDA graphs with --cuda-graphs) and the sequential rows its k + 1 plain decodes; the
transcripts are the base's either way.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adml  # noqa: E402
import adml_reference  # noqa: E402
import adml_route  # noqa: E402
import cuda_graphs  # noqa: E402
import whisper_min  # noqa: E402
from whisper_min.decoding import DecodingOptions, decode  # noqa: E402

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
TARGETS = ["attn.query", "attn.value", "cross_attn.query", "cross_attn.value"]


def random_adapters(model, k: int, rank: int, scale: float = 0.05):
    g = torch.Generator().manual_seed(0)
    adapters = []
    for i in range(k):
        deltas = {}
        for b in range(len(model.decoder.blocks)):
            for t in TARGETS:
                lin = model.get_submodule(f"decoder.blocks.{b}.{t}")
                A = torch.randn(rank, lin.in_features, generator=g) / math.sqrt(lin.in_features)
                B = torch.randn(lin.out_features, rank, generator=g) * scale / math.sqrt(rank)
                deltas[f"decoder.blocks.{b}.{t}"] = (A, B)
        adapters.append({"name": f"random{i}", "deltas": deltas})
    return [type("Adapter", (), a)() for a in adapters]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_config(model, tokenizer, audios, decode_fn, device, clock) -> tuple[float, list[list[int]]]:
    """Seconds for all clips (mel, encoder, decoding; one utterance at a time), and each clip's tokens."""
    options = DecodingOptions(without_timestamps=True)
    sync(device)
    t0 = clock()
    tokens = []
    for audio in audios:
        mel = whisper_min.log_mel_spectrogram(whisper_min.pad_or_trim(audio), device=device)
        tokens.append(list(decode_fn(model, mel, tokenizer, options)[0].tokens))
    sync(device)
    return clock() - t0, tokens


def profile(model, tokenizer, audio, k: int, rank: int) -> None:
    """Operator times (self CPU, summed over the decode) and per decoding step."""
    from torch.profiler import profile as torch_profile

    options = DecodingOptions(without_timestamps=True)
    mel = whisper_min.log_mel_spectrogram(whisper_min.pad_or_trim(audio), device=model.device)
    features = model.embed_audio(mel[None])  # the encoder is shared: leave it out
    stack = adml.stack_adapters(random_adapters(model, k, rank), model)
    for name, fn in (("original", lambda: decode(model, mel, tokenizer, options, audio_features=features)),
                     (f"ADML, {k} adapters", lambda: adml.decode(model, mel, tokenizer, options,
                                                                 audio_features=features, adapters=stack))):
        fn()  # warm-up
        with torch_profile() as prof:
            steps = len(fn()[0].tokens) + 1
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
        print(f"# {name}: {steps} steps, {total:.1f} ms of operator time, {total / steps:.2f} ms per step")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


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
    p.add_argument("--strategy", default="das", choices=adml.STRATEGIES,
                   help="the selection rule the adapters decode with (route: adml_route.py)")
    p.add_argument("--quick", action="store_true", help="2 clips, 1 round, k = 1, 3, 25")
    p.add_argument("--json", default=None, help="also write the table here (bench/report.py reads it)")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="instead of the table: where the time goes, torch.profiler's top operators for one "
                        "clip decoded by the original model and by ADML with K adapters")
    args = p.parse_args()
    if args.quick:
        args.clips, args.rounds, args.ks = 2, 1, "1,3,25"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.cuda_graphs and device.type != "cuda":
        p.error("--cuda-graphs needs --device cuda")
    if args.sdpa_math:
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
    if args.clock == "cpu" and device.type != "cpu":
        p.error("--clock cpu measures CPU time, which misses GPU work: use --clock wall with --device cuda")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_grad_enabled(False)

    model = whisper_min.load_model(args.model, device=device)
    tokenizer = whisper_min.get_tokenizer(args.model)
    wavs = sorted(LIBRIVOX.glob("*.wav"))[: args.clips]
    audios = [torch.from_numpy(whisper_min.load_audio(str(w))) for w in wavs]
    seconds = sum(len(a) for a in audios) / 16000
    if args.profile:
        profile(model, tokenizer, audios[0], args.profile, args.rank)
        return
    ks = [int(k) for k in args.ks.split(",")]
    stacks = {k: adml.stack_adapters(random_adapters(model, k, args.rank), model) for k in ks}

    configs = {"original": decode}
    for k in ks:
        if args.strategy == "route":  # tau = 0: the rule's cost does not depend on it
            configs[f"{k}-P"] = (lambda k: lambda m, mel, tok, opt: adml_route.decode_routed(
                m, mel, tok, opt, None, stacks[k], 0.0))(k)
            if not args.no_sequential:
                configs[f"{k}-S"] = (lambda k: lambda m, mel, tok, opt: adml_route.route(
                    adml_route.decode_streams_plain(m, mel, tok, opt, None, stacks[k]), 0.0))(k)
            continue
        configs[f"{k}-P"] = (lambda k: lambda m, mel, tok, opt: adml.decode(
            m, mel, tok, opt, adapters=stacks[k], strategy=args.strategy))(k)
        if not args.no_sequential:
            # the sequential reference takes per-adapter deltas: unstack them once, outside the timing
            deltas = [{n: (A[i], B[i]) for n, (A, B) in stacks[k].deltas.items()} for i in range(k)]
            configs[f"{k}-S"] = (lambda d: lambda m, mel, tok, opt: adml_reference.decode_sequential(
                m, mel, tok, opt, adapters=d, strategy=args.strategy))(deltas)

    eager = {}  # with --cuda-graphs: each graphed configuration's eager twin, for the token check
    if args.cuda_graphs:
        eager = {name: configs[name] for name in ["original", *(f"{k}-P" for k in ks)]}
        configs["original"] = cuda_graphs.GraphedDecoder(model)
        for k in ks:
            configs[f"{k}-P"] = cuda_graphs.GraphedDecoder(model, stacks[k], strategy=args.strategy,
                                                           **({"tau": 0.0} if args.strategy == "route" else {}))

    setup = (f"{args.model} on {device} ({torch.get_num_threads()} threads), {len(audios)} LibriVox clips, "
             f"--strategy {args.strategy}, "
             f"{seconds:.1f} s of audio, rank {args.rank}, {args.rounds} round(s), {args.clock} clock"
             + (", CUDA graphs" if args.cuda_graphs else "") + (", math SDPA" if args.sdpa_math else ""))
    print(f"# {setup}", flush=True)
    run_config(model, tokenizer, audios[:1], decode, device, clock)  # warm-up
    for name, fn in eager.items():  # record every graph (untimed), and check the tokens against eager decoding
        graphed = run_config(model, tokenizer, audios, configs[name], device, clock)[1]
        same = graphed == run_config(model, tokenizer, audios, fn, device, clock)[1]
        print(f"# {name}: CUDA-graph token ids {'equal' if same else 'DIFFER FROM'} eager decoding's", flush=True)
    best, tokens = {}, {}
    for r in range(args.rounds):
        for name, fn in configs.items():
            t, ids = run_config(model, tokenizer, audios, fn, device, clock)
            best[name] = min(best.get(name, math.inf), t)
            tokens[name] = ids
            print(f"  round {r + 1} {name:>9}: {t:7.2f} s, {sum(map(len, ids))} tokens", file=sys.stderr, flush=True)

    base = best["original"] / seconds
    # P = S: batched and sequential ADML gave the same token ids on every clip (the equivalence
    # the tests check on the CPU, here on whatever device this runs on)
    print(f"{'':>10} {'RTF':>8} {'%dP':>8} {'%dS':>8} {'speed-up':>9} {'tokens':>7} {'P = S':>6}")
    print(f"{'original':>10} {base:8.4f} {'-':>8} {'-':>8} {'-':>9} {sum(map(len, tokens['original'])):>7} {'-':>6}")
    rows = []
    for k in ks:
        rtf = best[f"{k}-P"] / seconds
        dp = rtf / base - 1
        ds = best[f"{k}-S"] / seconds / base - 1 if f"{k}-S" in best else None
        if ds is not None:
            speed = f"{ds / dp:8.1f}x" if dp > 0 else "     inf"
            ds_s = f"{100 * ds:+7.1f}%"
        else:
            speed, ds_s = "-", "-"
        same = tokens[f"{k}-P"] == tokens[f"{k}-S"] if f"{k}-S" in tokens else None
        print(f"{f'{k}-domain':>10} {rtf:8.4f} {100 * dp:+7.1f}% {ds_s:>8} {speed:>9} "
              f"{sum(map(len, tokens[f'{k}-P'])):>7} {'-' if same is None else 'yes' if same else 'NO':>6}")
        rows.append({"k": k, "rtf": rtf, "dP": dp, "dS": ds, "speedup": ds / dp if ds is not None and dp > 0 else None,
                     "rtf_sequential": best[f"{k}-S"] / seconds if ds is not None else None,
                     "same_tokens": same})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setup": setup, "original": base, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
