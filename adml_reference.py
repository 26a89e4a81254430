"""The naive reference for adml.py: every stream's own model, run one after the other.

At each step stream 0 (the base) and then stream i (the base with adapter i swapped in, as
W0 x + B_i (A_i x) or with W0 + B_i A_i merged into the weight) runs its own decoder on
its own cache and cross-attention keys/values; `adml.run`, the same loop and selection as
the batched path, picks the token. This is Algorithm 1 as written, and what the paper's
Table VI times as "sequential". Letters as in adml.py.
"""

import torch
from torch import Tensor, nn

from adml import MergedLinear, _audio_features, check_options, run, swapped
from whisper_min.decoding import DecodingOptions, DecodingResult
from whisper_min.model import Whisper
from whisper_min.tokenizer import Tokenizer


def one_adapter_modules(model: Whisper, deltas: dict, merged: bool) -> dict[str, nn.Module]:
    """Replacements that make the model base + B A for one adapter (the naive form)."""
    out = {}
    for name, (A, B) in deltas.items():
        base = model.get_submodule(name)
        A, B = A.to(base.weight), B.to(base.weight)
        out[name] = MergedLinear(base.weight + B @ A, base.bias) if merged else LoRALinear(base, A, B)
    return out


class LoRALinear(nn.Module):
    """One adapter, as written: W0 x + B (A x)."""

    def __init__(self, base: nn.Linear, A: Tensor, B: Tensor):
        super().__init__()
        self.base, self.A, self.B = base, A, B

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.A.T) @ self.B.T


class SequentialStreams:
    """The reference: each stream's own model (base, or base + one adapter) runs separately."""

    def __init__(self, model: Whisper, adapters, audio_features: Tensor, merged: bool = False):
        self.model = model
        deltas = [a.deltas if hasattr(a, "deltas") else a for a in adapters]
        self.modules = [{}] + [one_adapter_modules(model, d, merged) for d in deltas]
        self.cross_kv, self.caches = [], []
        for m in self.modules:
            with swapped(model, m):
                self.cross_kv.append(model.decoder.cross_kv(audio_features))
            self.caches.append(model.decoder.new_cache(audio_features.shape[0]))

    def _all(self, tokens: Tensor, offset: int) -> Tensor:
        out = []
        for m, kv, cache in zip(self.modules, self.cross_kv, self.caches):
            with swapped(self.model, m):
                out.append(self.model.decoder(tokens, kv, cache, offset))
        return torch.stack(out)  # (S, U, T, V)

    def prefill(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        logits = self._all(tokens, 0)  # (S, U, T0, V)
        return logits[:, :, -1], logits[0]

    def step(self, token: Tensor, offset: int) -> Tensor:
        return self._all(token, offset)[:, :, -1]  # (S, U, V)


@torch.inference_mode()
def decode_sequential(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions = DecodingOptions(),
                      audio_features: Tensor | None = None, adapters=(), tau: float = 0.025, strategy: str = "das",
                      merged: bool = False, end: str = "any", switch: str = "token",
                      guard: int = 0) -> list[DecodingResult]:
    """The reference for `decode`: every adapter's model run on its own at each step,
    as base + B (A x) or, with merged=True, with W0 + B A merged into the weights."""
    tau = check_options(tau, strategy, end, switch, guard)
    features = _audio_features(model, mel, audio_features)
    streams = SequentialStreams(model, adapters, features, merged)
    return run(streams, features, tokenizer, options, model.dims.n_vocab, model.dims.n_text_ctx, tau, strategy, end,
               switch, guard)
