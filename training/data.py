"""Training data as the loop sees it: manifest lines as token sequences, the batch schedule,
and teacher-forced (inputs, labels) pairs.

Batches are a pure function of (seed, step), so `--resume` continues exactly where an
uninterrupted run would be, and every DDP rank can take its share of the same global batch.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

IGNORE = -100  # label for positions that carry no loss (prompt and padding)


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


@dataclass
class Job:
    """What one run trains on, and in which order: the data, its batch schedule, and the id
    that a checkpoint must carry to be resumed by this run."""
    data: list[list[Utterance]]  # one list per domain
    val: list[Utterance]
    replay: list[Utterance]
    replay_batch: int
    domain: str
    data_sha: str
    val_sha: str | None
    replay_sha: str | None
    n_prompt: int  # start tokens before the text: no loss on them
    eot: int  # end of text: the last target, and the padding
    steps_per_epoch: int
    batches: list[list[tuple[int, int]]]  # every step's (domain, index) pairs
    replay_batches: list[list[tuple[int, int]]] | None
    run_id: str = ""

    @property
    def total(self) -> int:
        """Steps in the whole run."""
        return len(self.batches)


def read_data(args, tokenizer, n_text_ctx: int, world: int, base_fingerprint: str) -> Job:
    """The manifests, checked, and every step's batch (a pure function of seed and step)."""
    manifests = [Path(d) for d in args.data]
    data = [read_manifest(m, tokenizer, n_text_ctx, d) for d, m in enumerate(manifests)]

    def sha(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None

    replay = read_manifest(Path(args.replay), tokenizer, n_text_ctx, -1) if args.replay else []
    replay_batch = args.replay_batch or max(1, args.batch_size // 2)
    if replay and replay_batch < world:
        raise ValueError(f"--replay-batch {replay_batch} is smaller than the {world} processes")
    steps_per_epoch = math.ceil(sum(len(d) for d in data) / args.batch_size)
    total = max(1, math.ceil(args.epochs * steps_per_epoch))
    job = Job(data=data, val=read_manifest(Path(args.val), tokenizer, n_text_ctx, 0) if args.val else [],
              replay=replay, replay_batch=replay_batch,
              domain=args.domain or "+".join(m.parent.name for m in manifests),
              data_sha=hashlib.sha256(b"".join(m.read_bytes() for m in manifests)).hexdigest(),
              val_sha=sha(args.val), replay_sha=sha(args.replay), n_prompt=len(tokenizer.sot_sequence) + 1,
              eot=tokenizer.eot,
              steps_per_epoch=steps_per_epoch,
              batches=schedule([len(d) for d in data], args.batch_size, total, args.seed),
              # Replay batches come from a stream of their own, also a pure function of (seed, step).
              replay_batches=schedule([len(replay)], replay_batch, total, args.seed + 1) if replay else None)
    settings = [job.data_sha, base_fingerprint, args.method, args.lr, args.batch_size, args.epochs, args.warmup,
                args.weight_decay, args.lora_r, args.lora_alpha, args.no_rslora, args.init, args.targets, args.seed,
                job.val_sha] + ([job.replay_sha, args.replay_weight, replay_batch] if replay else [])
    job.run_id = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    return job
