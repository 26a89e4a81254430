"""`das.py train`: fine-tune Whisper's decoder on a synthetic-speech manifest (DAS paper, Section IV).

    python das.py train --data data/music/manifest.jsonl --out adapters/music.st [--model base]

One LoRA adapter per domain by default; the paper's baselines by `--method`: `ft` (whole
decoder), `ft-last3` (last three decoder blocks and the final layer norm), `ft-enc-dec`
(everything). Several `--data` manifests train one multi-domain model whose every batch
draws equally from each domain (the paper's FT-Multi and LoRA-ft-Multi).

Paper defaults: AdamW, lr 3e-6, 10 epochs, batch 16, linear warmup over the first 10% of
steps (then linear decay to zero, as Hugging Face's default "linear" schedule does).

With `--replay`, each step also pulls the model toward the frozen base model on a batch of
out-of-domain utterances, so that it stays the base outside its domain (training/replay.py).

With `--val`, the loss on a held-out manifest is measured after every epoch and OUT always
holds the weights of the best epoch so far (early stopping by choice of epoch): the paper's
learning rate is far too small for a few hundred utterances, and too large a one forgets.

The encoder is frozen for every method but `ft-enc-dec`, so its output is computed once per
utterance and cached on disk (training/encoder_cache.py); training then never runs the encoder.

Batches are a pure function of (seed, step) (training/data.py), so `--resume` continues
exactly where an uninterrupted run would be, and under `torchrun` each rank takes every
world-th utterance of the same global batch. The loss is the sum over the global batch's
target tokens divided by their count, on any number of ranks, so 1 and N processes compute
the same gradient.

`main` is five steps: build the model, read the data, set up what trains (or resume it),
fill the encoder cache, and loop (validating, checkpointing and saving as it goes).
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import lora
from training import replay as replay_loss
from training.checkpoint import checkpoint_path, read_checkpoint, restore
from training.data import Job, read_data
from training.encoder_cache import EncoderCache
from training.loop import Trainer
from training.methods import METHODS, count_parameters, set_trainable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, help="manifest.jsonl; repeat for multi-domain")
    parser.add_argument("--replay", help="out-of-domain manifest: keep the model close to the base there")
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


def set_up_training(args, model: nn.Module, job: Job, out: Path, log) -> tuple[torch.optim.Optimizer, int, dict]:
    """Make the chosen parameters trainable, and the optimizer; on --resume, restore both from
    the checkpoint. Returns (optimizer, first step, best validation so far: {"loss", "step"})."""
    torch.manual_seed(args.seed)
    # On resume PiSSA's start comes from the checkpoint (`restore`), not from a second SVD that
    # need not come out bit-identical; init_standard leaves W0 alone and A, B are overwritten.
    set_trainable(model, args, lora.init_standard if args.resume else lora.INITS[args.init])
    if args.resume and args.method == "lora":
        model.lora_config["init"] = args.init
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start, best = 0, {}
    if args.resume:
        start, state, best = read_checkpoint(checkpoint_path(out), job.run_id)
        restore(model, optimizer, state)
        saved = lora.read_header(out).get("__metadata__", {}) if out.is_file() else {}
        newer = args.val and saved.get("val_sha256") == job.val_sha
        if newer and float(saved["val_loss"]) < best.get("loss", math.inf):
            # OUT was validated after the last checkpoint: it, not the checkpoint's record, is the best.
            best = {"loss": float(saved["val_loss"]), "step": int(saved["steps"])}
        log(f"resuming from {checkpoint_path(out)} at step {start}")
    return optimizer, start, best


def fill_cache(args, model: nn.Module, job: Job, rank: int, world: int, log) -> EncoderCache | None:
    """Encode every utterance not yet in the on-disk encoder cache (each rank a share), or
    None when the encoder trains or the cache is off."""
    if args.no_encoder_cache or args.method == "ft-enc-dec":
        return None
    cache = EncoderCache(args.cache_dir, model)
    audios = sorted({u.audio for d in job.data + [job.val, job.replay] for u in d}, key=str)
    model.eval()
    t = time.monotonic()
    encoded = cache.fill(audios[rank::world], log=log)
    model.train()
    if world > 1:
        dist.barrier()  # every rank reads features the others wrote
    log(f"encoder cache: {encoded} encoded now, {len(audios[rank::world]) - encoded} already cached, "
        f"{time.monotonic() - t:.1f} s, in {cache.dir}")
    return cache


def main(args) -> int:
    from whisper_min import get_tokenizer, load_model

    rank, world, device = setup_distributed(args.device)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if rank == 0 else (lambda msg: None)
    out = Path(args.out)
    if args.batch_size < world:
        raise ValueError(f"--batch-size {args.batch_size} is smaller than the {world} processes")

    # 1. The model, and for replay a frozen copy of it as the teacher.
    model = load_model(args.model, device=device)
    teacher = replay_loss.frozen_teacher(load_model, args.model, device) if args.replay else None
    tokenizer = get_tokenizer(args.model)
    base_fingerprint = lora.model_fingerprint(model)
    # 2. The data and its schedule.
    job = read_data(args, tokenizer, model.dims.n_text_ctx, world, base_fingerprint)
    # 3. What trains, from the start or from the checkpoint.
    optimizer, start, best = set_up_training(args, model, job, out, log)
    counts = count_parameters(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"train: {args.method} on {args.model} ({counts['base']:,} parameters), {n_train:,} trainable "
        f"({100 * n_train / counts['base']:.2f}% of base); {sum(map(len, job.data))} utterances in {len(job.data)} "
        f"domain(s), {job.total} steps of {args.batch_size} over {world} process(es) on {device}"
        + (f"; replay: {len(job.replay)} utterances, {job.replay_batch} a step, weight {args.replay_weight:g}"
           if job.replay else ""))
    # 4. The frozen encoder's outputs, once.
    cache = fill_cache(args, model, job, rank, world, log)
    # 5. The loop, which saves OUT.
    trainer = Trainer(args, model, teacher, optimizer, job, cache, out, base_fingerprint, best, rank, world, log)
    code = trainer.loop(start)
    if world > 1 and code == 0:
        dist.barrier()
        dist.destroy_process_group()
    return code
