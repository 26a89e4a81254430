"""The naive references the batched code is tested against: every stream's own model, run
one after the other.

Token-level ADML: at each step stream 0 (the base) and then stream i (the base with adapter
i swapped in, as W0 x + B_i (A_i x) or with W0 + B_i A_i merged into the weight) runs its own
decoder on its own cache and cross-attention keys/values; `rules.run`, the same loop and
selection as the batched path, picks the token. This is Algorithm 1 as written, and what
the paper's Table VI times as "sequential".

Routing: `decode_streams_plain` is k + 1 plain greedy decodes, the base and then each
adapter merged in (`decode_merged`), against which route.decode_streams (one batched pass)
is tested. With a single adapter there is nothing to batch, so `decode_merged` is also what
`decoders.make_decoder` runs for one adapter file.
Letters as in adml.py.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adml import StackedAdapters, encoder_output, swapped
from decoders.rules import check_options, run
from whisper_min.decoding import decode as plain_decode
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


@torch.inference_mode()
def decode_merged(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                  audio_features: Tensor | None, stack: StackedAdapters) -> list[DecodingResult]:
    """Plain greedy decoding with one adapter merged in (W0 + B A, new tensors for the
    duration; the model's own weights are never written)."""
    if stack.k != 1:
        raise ValueError(f"decode_merged takes exactly one adapter, not {stack.k}")
    merged = {}
    for name, (A, B) in stack.deltas.items():
        base = model.get_submodule(name)
        merged[name] = MergedLinear(base.weight + B[0] @ A[0], base.bias)
    with swapped(model, merged):
        results = plain_decode(model, mel, tokenizer, options, audio_features)
    for r in results:
        r.stream_tokens = [0, len(r.tokens)]
    return results


class MergedLinear(nn.Module):
    """One adapter merged into the weight: (W0 + B A) x + b, with new tensors (W0 untouched)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


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
                      merged: bool = False, end: str = "any") -> list[DecodingResult]:
    """The reference for `decode`: every adapter's model run on its own at each step,
    as base + B (A x) or, with merged=True, with W0 + B A merged into the weights."""
    tau = check_options(tau, strategy, end)
    features = encoder_output(model, mel, audio_features)
    streams = SequentialStreams(model, adapters, features, merged)
    return run(streams, features, tokenizer, options, model.dims.n_vocab, model.dims.n_text_ctx, tau, strategy, end)


def one_adapter(stack: StackedAdapters, i: int) -> StackedAdapters:
    """Adapter i of a stack as a stack of one (its zero-padded rank changes nothing)."""
    return StackedAdapters([stack.names[i]], {m: (A[i : i + 1], B[i : i + 1]) for m, (A, B) in stack.deltas.items()})


@torch.inference_mode()
def decode_streams_plain(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                         audio_features: Tensor | None, stack: StackedAdapters) -> list[list[DecodingResult]]:
    """The reference for `decode_streams`: k + 1 plain greedy decodes (the base, then each
    adapter merged in) sharing the encoder output. About k + 1 times the base's decoding cost."""
    features = encoder_output(model, mel, audio_features)
    results = [plain_decode(model, mel, tokenizer, options, features)]
    return results + [decode_merged(model, mel, tokenizer, options, features, one_adapter(stack, i))
                      for i in range(stack.k)]
