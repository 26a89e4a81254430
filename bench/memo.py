"""The study's two memos, so that scoring many systems on the same speech decodes little
twice: `EncoderMemo` runs the frozen encoder once per window for every system, and
`StreamMemo` keeps routing's every-stream transcripts so that any τ reuses one decode."""

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import lora
from adml import StackedAdapters
from decoders.route import decode_streams, route
from whisper_min.decoding import DecodingOptions, DecodingResult


def mel_key(mel: Tensor) -> str:
    """sha256 of a mel's exact fp32 values."""
    return hashlib.sha256(mel.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


class EncoderMemo:
    """Evaluation's encoder cache: `model.embed_audio` remembered by the exact mel it was given.

    Every system the study scores (the original model, each fine-tune of the decoder, each set of
    adapters) runs the same frozen encoder on the same windows; this runs it once per window.
    Unlike `EncoderCache` it is keyed by the mel's bytes, not the audio file, and keeps fp32, so
    a decode through it is bit-identical to one without it, whatever the window or audio length.
    Install with `model.embed_audio = EncoderMemo(model, root)`.
    """

    def __init__(self, model, root: str | Path):
        self.embed = model.embed_audio  # the real encoder, bound before it is replaced
        self.dir = Path(root) / f"{lora.model_fingerprint(model)}-exact"
        self.hits = self.misses = 0

    def path(self, mel: Tensor) -> Path:
        k = mel_key(mel)
        return self.dir / k[:2] / f"{k}.st"

    def __call__(self, mel: Tensor) -> Tensor:
        paths = [self.path(m) for m in mel]  # one file per window of the batch (B, M, 3000)
        todo = [i for i, p in enumerate(paths) if not p.is_file()]
        rows: dict[int, Tensor] = {}
        if todo:
            features = self.embed(mel[todo])  # (len(todo), n_audio_ctx, D)
            for i, f in zip(todo, features):
                rows[i] = f
                paths[i].parent.mkdir(parents=True, exist_ok=True)
                tmp = paths[i].with_name(f".{paths[i].name}.{os.getpid()}.tmp")
                save_file({"features": f.detach().to("cpu", torch.float32).contiguous()}, tmp)
                tmp.replace(paths[i])
        self.misses += len(todo)
        self.hits += len(paths) - len(todo)
        for i, p in enumerate(paths):
            if i not in rows:
                rows[i] = load_file(p)["features"].to(mel.device)
        return torch.stack([rows[i] for i in range(len(paths))]).to(mel.dtype)  # (B, n_audio_ctx, D)


class StreamMemo:
    """Every stream's results per window (`decode_streams`), kept in memory for one model and
    one stack of adapters, so that routing at another τ decodes nothing again."""

    def __init__(self, stack: StackedAdapters):
        self.stack = stack
        self.results: dict[str, list[list[DecodingResult]]] = {}
        self.decodes = 0  # windows actually decoded (the rest came from memory)

    def decoder(self, tau: float):
        """A `decode_fn(model, mel, tokenizer, options, audio_features=None)` routing at τ."""
        def decode_fn(model, mel, tokenizer, options=DecodingOptions(), audio_features=None):
            # The window's exact mel and the options (a prompt, say) decide every stream's transcript.
            key = mel_key(mel) + f"{tuple(mel.shape)}{options!r}"
            if key not in self.results:
                self.results[key] = decode_streams(model, mel, tokenizer, options, audio_features, self.stack)
                self.decodes += 1
            return route(self.results[key], tau)

        return decode_fn
