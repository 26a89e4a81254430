"""The training loop (`Trainer`): one global batch per step, a replay KL term beside the
domain's cross-entropy, validation after every epoch, checkpoints, and the output file."""

import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import lora
from training import replay as replay_loss
from training.checkpoint import checkpoint_path, save_checkpoint
from training.data import IGNORE, Job, Utterance, collate, lr_at
from training.encoder_cache import load_mel
from training.methods import save_finetune


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


class Trainer:
    """The training loop of one run and what it writes: progress lines, validation after every
    epoch (OUT keeps the best), checkpoints, and OUT itself."""

    def __init__(self, args, model, teacher, optimizer, job: Job, cache, out: Path, base_fingerprint: str,
                 best: dict, rank: int, world: int, log):
        self.args, self.model, self.teacher, self.optimizer = args, model, teacher, optimizer
        self.job, self.cache, self.out, self.base_fingerprint = job, cache, out, base_fingerprint
        self.best, self.rank, self.world, self.log = best, rank, world, log  # best: {"loss", "step"} so far
        self.device = model.device
        self.step_module = TrainStep(model, run_encoder=cache is None, train_encoder=args.method == "ft-enc-dec")
        if world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        self.stop = 0  # the signal that asked to stop, if any

    def audio(self, utts: list[Utterance]) -> Tensor:
        """(b, n_audio_ctx, D) cached encoder outputs, or (b, n_mels, 3000) log-mels without a cache."""
        audio = self.cache.get([u.audio for u in utts]) if self.cache else \
            torch.stack([load_mel(u.audio, self.model.dims.n_mels) for u in utts])
        return audio.to(self.device, torch.float32)

    def step(self, step: int) -> tuple[float, float, bool]:
        """Forward and backward of one global batch (this rank's share). Returns, the same on
        every rank: the mean loss per target token, the replay KL per replay token, and
        whether any rank was asked to stop."""
        job, world, rank = self.job, self.world, self.rank
        everyone = [job.data[d][i] for d, i in job.batches[step]]
        mine = everyone[rank::world]
        n_tokens = sum(len(u.tokens) - job.n_prompt for u in everyone)
        # Replay rows ride in the same forward pass (one DDP forward per backward), after the domain's.
        others = [job.replay[i] for _, i in job.replay_batches[step]] if job.replay else []
        n_replay = sum(len(u.tokens) - job.n_prompt for u in others)
        rows = mine + others[rank::world]
        inputs, labels = collate(rows, job.n_prompt, job.eot)
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        audio = self.audio(rows)
        logits = self.step_module(inputs, audio)  # (b, T-1, V)
        b = len(mine)
        loss_sum = F.cross_entropy(logits[:b].flatten(0, 1), labels[:b].flatten(), ignore_index=IGNORE,
                                   reduction="sum")
        objective = loss_sum * world / n_tokens  # DDP averages over ranks: the global mean
        kl_sum = torch.zeros((), device=self.device)
        if job.replay:
            base = replay_loss.teacher_logits(self.teacher, inputs[b:], audio[b:], encoded=self.cache is not None)
            kl_sum = replay_loss.kl_sum(logits[b:], base, labels[b:] != IGNORE)
            objective = objective + self.args.replay_weight * kl_sum * world / n_replay
        objective.backward()
        stats = torch.stack([loss_sum.detach().float(), kl_sum.detach().float(),
                             torch.tensor(float(self.stop), device=self.device)])
        if world > 1:
            dist.all_reduce(stats)  # every rank sees the same loss and the same stop request
        return stats[0].item() / n_tokens, stats[1].item() / max(1, n_replay), bool(stats[2] > 0)

    def loop(self, start: int) -> int:
        """Steps from `start` to the end (or --max-steps); 0 when done, 130 when stopped by a
        signal (checkpoint written), 1 when the loss is not finite (nothing written)."""
        args, job, out = self.args, self.job, self.out
        if job.val and start == 0 and self.rank == 0:
            self.validate(0)  # the starting point is a candidate too: training may only make things worse

        def on_signal(signum, frame):  # finish the step, checkpoint, exit; a second Ctrl-C kills at once
            self.stop = signum
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        last_log, t0, seen = time.monotonic(), time.monotonic(), 0
        last_step = job.total if args.max_steps is None else min(job.total, start + args.max_steps)
        try:
            for step in range(start, last_step):
                loss, kl, stopping = self.step(step)
                if not math.isfinite(loss + kl):
                    return self.diverged(step, loss, kl)
                lr = lr_at(step, job.total, args.lr, args.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                seen += args.batch_size
                done = step + 1
                if time.monotonic() - last_log >= args.progress_every or done == last_step:
                    rate = seen / (time.monotonic() - t0)
                    eta = fmt_time((job.total - done) * args.batch_size / rate)
                    self.log(f"step {done}/{job.total} epoch {done / job.steps_per_epoch:.2f}/{args.epochs:g} "
                             f"loss {loss:.4f} " + (f"replay kl {kl:.4f} " if job.replay else "")
                             + f"lr {lr:.2e} {rate:.1f} utt/s eta {eta}")
                    last_log = time.monotonic()
                if job.val and self.rank == 0 and (done % job.steps_per_epoch == 0 or done == job.total):
                    self.validate(done)
                if self.rank == 0 and (done % args.checkpoint_every == 0 or stopping or done == last_step < job.total):
                    save_checkpoint(checkpoint_path(out), self.model, self.optimizer, done, job.run_id, self.best)
                if stopping:
                    self.log(f"train: interrupted after step {done}; checkpoint {checkpoint_path(out)}; "
                             "rerun with --resume to continue")
                    return 130
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.rank == 0:
            self.finish(last_step)
        return 0

    def diverged(self, step: int, loss: float, kl: float) -> int:
        """Stop on a loss that is not finite, writing nothing: say where, and what is left."""
        ckpt = checkpoint_path(self.out)
        self.log(f"train: loss is {loss}" + (f" (replay kl {kl})" if self.job.replay else "")
                 + f" at step {step + 1} (epoch {step // self.job.steps_per_epoch + 1}); stopping without writing "
                 f"{self.out}. Lower --lr or check the data; "
                 + (f"last checkpoint: {ckpt}" if ckpt.is_file() else "no checkpoint"))
        return 1

    def finish(self, last_step: int) -> None:
        job, out = self.job, self.out
        if not job.val:
            self.save(last_step)
        self.log(f"train: wrote {out}" + (f" (best epoch: step {self.best['step']}, validation loss "
                                          f"{self.best['loss']:.4f})" if job.val else "")
                 + ("" if last_step == job.total else f" after {last_step} of {job.total} steps "
                    f"(--max-steps); --resume continues from {checkpoint_path(out)}"))
        if last_step == job.total:  # finished: a checkpoint would only be a stale copy beside the output
            checkpoint_path(out).unlink(missing_ok=True)

    def validate(self, at_step: int) -> None:
        """Score the epoch just finished; OUT is rewritten only when it beats every earlier one."""
        job, best = self.job, self.best
        loss = validation_loss(self.model, job.val, self.cache, job.n_prompt, job.eot)
        better = not best or loss < best["loss"]
        self.log(f"validation after step {at_step} (epoch {at_step / job.steps_per_epoch:.2f}): loss {loss:.4f}"
                 + (" (best so far; saved)" if better else f" (best {best['loss']:.4f} at step {best['step']})"))
        if better:
            best.update(loss=loss, step=at_step)
            self.save(at_step, {"val_loss": f"{loss:.6f}", "val_sha256": job.val_sha})

    def save(self, at_step: int, extra: dict | None = None) -> None:
        args, job = self.args, self.job
        metadata = {"method": args.method, "steps": str(at_step), "total_steps": str(job.total), "lr": str(args.lr),
                    "epochs": str(args.epochs), "batch_size": str(args.batch_size), "seed": str(args.seed),
                    **({"replay_sha256": job.replay_sha, "replay_weight": str(args.replay_weight),
                        "replay_batch": str(job.replay_batch)} if job.replay else {}), **(extra or {})}
        if args.method == "lora":
            lora.save_adapter(self.model, self.out, domain=job.domain, base_model=str(args.model),
                              data_sha256=job.data_sha, extra=metadata)
        else:
            save_finetune(self.model, self.out, {"domain": job.domain, "base_model": str(args.model),
                                                 "data_sha256": job.data_sha,
                                                 "base_fingerprint": self.base_fingerprint, **metadata})
