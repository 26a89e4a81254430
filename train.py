"""`das.py train`: fine-tune Whisper's decoder on a synthetic-speech manifest (DAS paper, Section IV).

    python das.py train --data data/music/manifest.jsonl --out adapters/music.st [--model base]

One LoRA adapter per domain by default; the paper's baselines by `--method`: `ft` (whole
decoder), `ft-last3` (last three decoder blocks and the final layer norm), `ft-enc-dec`
(everything). Several `--data` manifests train one multi-domain model whose every batch
draws equally from each domain (the paper's FT-Multi and LoRA-ft-Multi).

Paper defaults: AdamW, lr 3e-6, 10 epochs, batch 16, linear warmup over the first 10% of
steps (then linear decay to zero, as Hugging Face's default "linear" schedule does).

With `--replay`, each step also pulls the model toward the frozen base model on a batch of
out-of-domain utterances, so that it stays the base outside its domain (replay.py).

With `--val`, the loss on a held-out manifest is measured after every epoch and OUT always
holds the weights of the best epoch so far (early stopping by choice of epoch): the paper's
learning rate is far too small for a few hundred utterances, and too large a one forgets.

The encoder is frozen for every method but `ft-enc-dec`, so its output is computed once per
utterance and cached on disk (see encoder_cache.py); training then never runs the encoder.

Batches are a pure function of (seed, step), so `--resume` continues exactly where an
uninterrupted run would be, and under `torchrun` each rank takes every world-th utterance
of the same global batch. The loss is the sum over the global batch's target tokens divided
by their count, on any number of ranks, so 1 and N processes compute the same gradient.
"""

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

import lora
import replay as replay_loss
from checkpoint import checkpoint_path, read_checkpoint, restore, save_checkpoint
from encoder_cache import EncoderCache, load_mel

METHODS = ("lora", "ft", "ft-last3", "ft-enc-dec")
IGNORE = -100  # label for positions that carry no loss (prompt and padding)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, help="manifest.jsonl; repeat for multi-domain")
    parser.add_argument("--replay", help="out-of-domain manifest: keep the model close to the base there (replay.py)")
    parser.add_argument("--replay-weight", type=float, default=1.0, help="weight of the replay KL term")
    parser.add_argument("--replay-batch", type=int, help="replay utterances per step (default: half of --batch-size)")
    parser.add_argument("--val", help="held-out manifest: loss after each epoch; OUT keeps the best epoch")
    parser.add_argument("--out", required=True, help="output .st file (adapter, or changed tensors for ft methods)")
    parser.add_argument("--model", default="base", help="'base', 'tiny.en' or a model directory")
    parser.add_argument("--method", choices=METHODS, default="lora", help="what to train (the paper's baselines)")
    parser.add_argument("--domain", help="domain name stored in the file (default: the manifests' folder names)")
    parser.add_argument("--epochs", type=float, default=10, help="passes over the data")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch, summed over all processes")
    parser.add_argument("--lr", type=float, default=3e-6, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with linear warmup")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    parser.add_argument("--lora-r", type=int, default=32, help="LoRA rank (not --r: torchrun takes that)")
    parser.add_argument("--lora-alpha", type=float, default=64, help="LoRA alpha")
    parser.add_argument("--no-rslora", action="store_true", help="scale alpha / r instead of alpha / sqrt(r)")
    parser.add_argument("--init", choices=sorted(lora.INITS), default="pissa", help="LoRA initialisation")
    parser.add_argument("--targets", default=",".join(lora.DEFAULT_TARGETS), help="decoder-block Linears to adapt")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and batch order")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--cache-dir", help="encoder-output cache (default: $XDG_CACHE_HOME/das/encoder)")
    parser.add_argument("--no-encoder-cache", action="store_true", help="run the encoder on every batch")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.st")
    parser.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (tests, benchmarks)")


@dataclass
class Utterance:
    audio: Path
    text: str
    tokens: list[int]  # prompt + text + end of text
    domain: int


def read_manifest(path: Path, tokenizer, n_text_ctx: int, domain: int) -> list[Utterance]:
    prompt = list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
    utterances = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio, text = path.parent / row["audio"], row["text"].strip()
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}:{i}: not a manifest line with 'audio' and 'text' ({e})") from None
        tokens = prompt + tokenizer.encode(" " + text) + [tokenizer.eot]
        if len(tokens) > n_text_ctx:
            raise ValueError(f"{path}:{i}: {len(tokens)} tokens, more than the decoder's {n_text_ctx}")
        if float(row.get("duration", 0)) > 30:
            raise ValueError(f"{path}:{i}: {row['duration']} s; Whisper hears at most 30 s per window")
        utterances.append(Utterance(audio, text, tokens, domain))
    if not utterances:
        raise ValueError(f"{path}: the manifest lists no utterances")
    return utterances


def schedule(domain_sizes: list[int], batch: int, steps: int, seed: int) -> list[list[tuple[int, int]]]:
    """(domain, index) pairs of every global batch. Each domain is an endless stream of shuffled
    passes; a batch takes batch // k from each of the k domains, the remainder going to a
    rotating domain so that over time every domain is drawn equally."""
    k = len(domain_sizes)
    streams = []
    for d, n in enumerate(domain_sizes):
        g = torch.Generator().manual_seed(seed * 1000 + d)
        needed = math.ceil(steps * math.ceil(batch / k) / n) + 1
        streams.append(torch.cat([torch.randperm(n, generator=g) for _ in range(needed)]).tolist())
    taken, batches = [0] * k, []
    for step in range(steps):
        rows = []
        for d in range(k):
            count = batch // k + ((d - step) % k < batch % k)
            rows += [(d, i) for i in streams[d][taken[d] : taken[d] + count]]
            taken[d] += count
        batches.append(rows)
    return batches


def collate(utts: list[Utterance], n_prompt: int, eot: int) -> tuple[Tensor, Tensor]:
    """Teacher forcing: inputs tokens[:-1], labels tokens[1:]; loss on text and end of text only."""
    T = max(len(u.tokens) for u in utts)
    inputs = torch.full((len(utts), T - 1), eot, dtype=torch.long)  # (B, T-1), padded with eot
    labels = torch.full((len(utts), T - 1), IGNORE, dtype=torch.long)  # (B, T-1)
    for row, u in enumerate(utts):
        t = torch.tensor(u.tokens)
        inputs[row, : len(t) - 1] = t[:-1]
        labels[row, n_prompt - 1 : len(t) - 1] = t[n_prompt:]  # position j predicts token j + 1
    return inputs, labels


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    n_warm = max(1, round(warmup * total))
    if step < n_warm:
        return peak * (step + 1) / n_warm
    return peak * max(0.0, (total - step) / max(1, total - n_warm))


def set_trainable(model: nn.Module, args, init) -> None:
    """Which parameters train: LoRA adds adapters (started by `init`); the ft methods unfreeze
    parts of the model."""
    if args.method == "lora":
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        lora.add_lora(model, targets, r=args.lora_r, alpha=args.lora_alpha, rslora=not args.no_rslora, init=init)
        lora.mark_only_lora_trainable(model)
        return
    n = len(model.decoder.blocks)
    prefixes = {"ft": ["decoder."],
                "ft-last3": [f"decoder.blocks.{i}." for i in range(n - 3, n)] + ["decoder.ln."],
                "ft-enc-dec": ["encoder.", "decoder."]}[args.method]
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(tuple(prefixes))


class TrainStep(nn.Module):
    """What DDP wraps: (tokens, features or mel) -> logits, running the encoder only when asked."""

    def __init__(self, model: nn.Module, run_encoder: bool, train_encoder: bool):
        super().__init__()
        self.model, self.run_encoder, self.train_encoder = model, run_encoder, train_encoder

    def forward(self, tokens: Tensor, audio: Tensor) -> Tensor:
        if self.run_encoder:
            with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
                audio = self.model.embed_audio(audio)
        return self.model.logits(tokens, audio)


def setup_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: gloo on CPU, nccl on CUDA, one GPU per rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world == 1:
        return 0, 1, torch.device(device or ("cuda" if cuda else "cpu"))
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world, dev


def save_finetune(model: nn.Module, path: Path, metadata: dict) -> Path:
    """Full fine-tunes: the tensors that trained, under their model names."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    return lora.write_safetensors(tensors, path, {"format": "das-finetune", **metadata})


def load_finetune(path: str | Path, model: nn.Module) -> None:
    meta = lora.read_header(Path(path)).get("__metadata__", {})
    if meta.get("base_fingerprint") != lora.model_fingerprint(model):
        raise lora.AdapterError(f"{path}: fine-tuned from a different base model ({meta.get('base_model')!r})")
    with safe_open(path, framework="pt") as f:
        missing, unexpected = model.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=False)
    if unexpected:
        raise lora.AdapterError(f"{path}: tensors this model does not have: {unexpected[:5]}")


@torch.no_grad()
def validation_loss(model: nn.Module, utts: list, cache, n_prompt: int, eot: int, batch: int = 16) -> float:
    """Mean per-token cross-entropy on held-out utterances (teacher forcing, as in training)."""
    was_training, device = model.training, model.device
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(utts), batch):
        chunk = utts[i : i + batch]
        inputs, labels = collate(chunk, n_prompt, eot)
        audio = cache.get([u.audio for u in chunk]).to(device, torch.float32) if cache else \
            model.embed_audio(torch.stack([load_mel(u.audio, model.dims.n_mels) for u in chunk]).to(device))
        logits = model.logits(inputs.to(device), audio)  # (b, T-1, V)
        total += F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=IGNORE,
                                 reduction="sum").item()
        tokens += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / tokens


def fmt_time(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def main(args) -> int:
    from whisper_min import get_tokenizer, load_model

    rank, world, device = setup_distributed(args.device)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if rank == 0 else (lambda msg: None)
    out = Path(args.out)
    if args.batch_size < world:
        raise ValueError(f"--batch-size {args.batch_size} is smaller than the {world} processes")

    model = load_model(args.model, device=device)
    teacher = replay_loss.frozen_teacher(load_model, args.model, device) if args.replay else None
    tokenizer = get_tokenizer(args.model)
    base_fingerprint = lora.model_fingerprint(model)
    manifests = [Path(d) for d in args.data]
    data = [read_manifest(m, tokenizer, model.dims.n_text_ctx, d) for d, m in enumerate(manifests)]
    data_sha = hashlib.sha256(b"".join(m.read_bytes() for m in manifests)).hexdigest()
    val = read_manifest(Path(args.val), tokenizer, model.dims.n_text_ctx, 0) if args.val else []
    val_sha = hashlib.sha256(Path(args.val).read_bytes()).hexdigest() if args.val else None
    domain = args.domain or "+".join(m.parent.name for m in manifests)
    replay = read_manifest(Path(args.replay), tokenizer, model.dims.n_text_ctx, -1) if args.replay else []
    replay_sha = hashlib.sha256(Path(args.replay).read_bytes()).hexdigest() if args.replay else None
    replay_batch = args.replay_batch or max(1, args.batch_size // 2)
    if replay and replay_batch < world:
        raise ValueError(f"--replay-batch {replay_batch} is smaller than the {world} processes")
    n_prompt = len(tokenizer.sot_sequence) + 1

    steps_per_epoch = math.ceil(sum(len(d) for d in data) / args.batch_size)
    total = max(1, math.ceil(args.epochs * steps_per_epoch))
    batches = schedule([len(d) for d in data], args.batch_size, total, args.seed)
    # Replay batches come from a stream of their own, also a pure function of (seed, step).
    replay_batches = schedule([len(replay)], replay_batch, total, args.seed + 1) if replay else None
    settings = [data_sha, base_fingerprint, args.method, args.lr, args.batch_size, args.epochs, args.warmup,
                args.weight_decay, args.lora_r, args.lora_alpha, args.no_rslora, args.init, args.targets, args.seed,
                val_sha] + ([replay_sha, args.replay_weight, replay_batch] if replay else [])
    run_id = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]

    torch.manual_seed(args.seed)
    # On resume PiSSA's start comes from the checkpoint (`restore`), not from a second SVD that
    # need not come out bit-identical; init_standard leaves W0 alone and A, B are overwritten.
    set_trainable(model, args, lora.init_standard if args.resume else lora.INITS[args.init])
    if args.resume and args.method == "lora":
        model.lora_config["init"] = args.init
    train_encoder = args.method == "ft-enc-dec"
    use_cache = not (args.no_encoder_cache or train_encoder)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start, best = 0, {}  # best: {"loss", "step"} of the best validated epoch so far
    if args.resume:
        start, state, best = read_checkpoint(checkpoint_path(out), run_id)
        restore(model, optimizer, state)
        saved = lora.read_header(out).get("__metadata__", {}) if out.is_file() else {}
        if args.val and saved.get("val_sha256") == val_sha and float(saved["val_loss"]) < best.get("loss", math.inf):
            # OUT was validated after the last checkpoint: it, not the checkpoint's record, is the best.
            best = {"loss": float(saved["val_loss"]), "step": int(saved["steps"])}
        log(f"resuming from {checkpoint_path(out)} at step {start}")
    counts = lora.count_parameters(model)
    n_train = sum(p.numel() for p in params)
    log(f"train: {args.method} on {args.model} ({counts['base']:,} parameters), {n_train:,} trainable "
        f"({100 * n_train / counts['base']:.2f}% of base); {sum(map(len, data))} utterances in {len(data)} "
        f"domain(s), {total} steps of {args.batch_size} over {world} process(es) on {device}"
        + (f"; replay: {len(replay)} utterances, {replay_batch} a step, weight {args.replay_weight:g}"
           if replay else ""))

    cache = None
    if use_cache:
        cache = EncoderCache(args.cache_dir, model)
        audios = sorted({u.audio for d in data + [val, replay] for u in d}, key=str)
        model.eval()
        t = time.monotonic()
        encoded = cache.fill(audios[rank::world], log=log)
        model.train()
        if world > 1:
            dist.barrier()  # every rank reads features the others wrote
        log(f"encoder cache: {encoded} encoded now, {len(audios[rank::world]) - encoded} already cached, "
            f"{time.monotonic() - t:.1f} s, in {cache.dir}")

    step_module = TrainStep(model, run_encoder=not use_cache, train_encoder=train_encoder)
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=ids)

    def save(at_step: int, extra: dict | None = None) -> None:
        metadata = {"method": args.method, "steps": str(at_step), "total_steps": str(total), "lr": str(args.lr),
                    "epochs": str(args.epochs), "batch_size": str(args.batch_size), "seed": str(args.seed),
                    **({"replay_sha256": replay_sha, "replay_weight": str(args.replay_weight),
                        "replay_batch": str(replay_batch)} if replay else {}), **(extra or {})}
        if args.method == "lora":
            lora.save_adapter(model, out, domain=domain, base_model=str(args.model), data_sha256=data_sha,
                              extra=metadata)
        else:
            save_finetune(model, out, {"domain": domain, "base_model": str(args.model), "data_sha256": data_sha,
                                       "base_fingerprint": base_fingerprint, **metadata})

    def validate(at_step: int) -> None:
        """Score the epoch just finished; OUT is rewritten only when it beats every earlier one."""
        loss = validation_loss(model, val, cache, n_prompt, tokenizer.eot)
        better = not best or loss < best["loss"]
        log(f"validation after step {at_step} (epoch {at_step / steps_per_epoch:.2f}): loss {loss:.4f}"
            + (" (best so far; saved)" if better else f" (best {best['loss']:.4f} at step {best['step']})"))
        if better:
            best.update(loss=loss, step=at_step)
            save(at_step, {"val_loss": f"{loss:.6f}", "val_sha256": val_sha})

    if val and start == 0 and rank == 0:
        validate(0)  # the starting point is a candidate too: training may only make things worse

    stop = {"signal": 0}

    def on_signal(signum, frame):  # finish the step, checkpoint, exit; a second Ctrl-C kills at once
        stop["signal"] = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    last_log, t0, seen = time.monotonic(), time.monotonic(), 0
    last_step = total if args.max_steps is None else min(total, start + args.max_steps)
    try:
        for step in range(start, last_step):
            everyone = [data[d][i] for d, i in batches[step]]
            mine = everyone[rank::world]
            n_tokens = sum(len(u.tokens) - n_prompt for u in everyone)
            # Replay rows ride in the same forward pass (one DDP forward per backward), after the domain's.
            others = [replay[i] for _, i in replay_batches[step]] if replay else []
            n_replay = sum(len(u.tokens) - n_prompt for u in others)
            rows = mine + others[rank::world]
            inputs, labels = collate(rows, n_prompt, tokenizer.eot)
            inputs, labels = inputs.to(device), labels.to(device)
            audio = cache.get([u.audio for u in rows]) if cache else \
                torch.stack([load_mel(u.audio, model.dims.n_mels) for u in rows])  # (b, n_audio_ctx, D) or (b, M, 3000)
            audio = audio.to(device, torch.float32)
            logits = step_module(inputs, audio)  # (b, T-1, V)
            b = len(mine)
            loss_sum = F.cross_entropy(logits[:b].flatten(0, 1), labels[:b].flatten(), ignore_index=IGNORE,
                                       reduction="sum")
            objective = loss_sum * world / n_tokens  # DDP averages over ranks: the global mean
            kl_sum = torch.zeros((), device=device)
            if replay:
                base = replay_loss.teacher_logits(teacher, inputs[b:], audio[b:], encoded=cache is not None)
                kl_sum = replay_loss.kl_sum(logits[b:], base, labels[b:] != IGNORE)
                objective = objective + args.replay_weight * kl_sum * world / n_replay
            objective.backward()
            stats = torch.stack([loss_sum.detach().float(), kl_sum.detach().float(),
                                 torch.tensor(float(stop["signal"]), device=device)])
            if world > 1:
                dist.all_reduce(stats)  # every rank sees the same loss and the same stop request
            loss, kl = stats[0].item() / n_tokens, stats[1].item() / max(1, n_replay)
            if not math.isfinite(loss + kl):
                ckpt = checkpoint_path(out)
                log(f"train: loss is {loss}" + (f" (replay kl {kl})" if replay else "") + f" at step {step + 1} (epoch {step // steps_per_epoch + 1}); stopping "
                    f"without writing {out}. Lower --lr or check the data; "
                    + (f"last checkpoint: {ckpt}" if ckpt.is_file() else "no checkpoint"))
                return 1
            lr = lr_at(step, total, args.lr, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(everyone)
            now = time.monotonic()
            if now - last_log >= args.progress_every or step + 1 == last_step:
                rate = seen / (now - t0)
                eta = fmt_time((total - step - 1) * args.batch_size / rate)
                log(f"step {step + 1}/{total} epoch {(step + 1) / steps_per_epoch:.2f}/{args.epochs:g} loss {loss:.4f} "
                    + (f"replay kl {kl:.4f} " if replay else "") + f"lr {lr:.2e} {rate:.1f} utt/s eta {eta}")
                last_log = now
            if val and rank == 0 and ((step + 1) % steps_per_epoch == 0 or step + 1 == total):
                validate(step + 1)
            if rank == 0 and ((step + 1) % args.checkpoint_every == 0 or stats[2] > 0 or step + 1 == last_step < total):
                save_checkpoint(checkpoint_path(out), model, optimizer, step + 1, run_id, best)
            if stats[2] > 0:
                log(f"train: interrupted after step {step + 1}; checkpoint {checkpoint_path(out)}; "
                    "rerun with --resume to continue")
                return 130
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)

    if rank == 0:
        if not val:
            save(last_step)
        log(f"train: wrote {out}" + (f" (best epoch: step {best['step']}, validation loss {best['loss']:.4f})"
                                     if val else "")
            + ("" if last_step == total else f" after {last_step} of {total} steps "
               f"(--max-steps); --resume continues from {checkpoint_path(out)}"))
        if last_step == total:  # finished: a checkpoint would only be a stale copy beside the output
            checkpoint_path(out).unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # also `torchrun --nproc_per_node N train.py ...`
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
