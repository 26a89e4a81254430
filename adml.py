"""ADML's one batched pass: the base model and k LoRA adapters as k + 1 streams of one
decoder forward (DAS paper, III-B, Eq. 2).

Stream 0 is the base model, streams 1..k the domain adapters. Their rows are stacked
stream-major, row s * U + u for stream s and utterance u, and each stream keeps its own
self-attention KV cache (adapters on query/value change the attention state). Then:

- every base weight is applied to all S = k + 1 streams as one matmul, read once per step;
- the adapters' low-rank deltas are one batched product B(AX) (`MultiLoRALinear`), which
  computes the k diagonal blocks of blk_diag(B_1..B_k) and none of the zero ones;
- the base's cross-attention keys/values are computed once per utterance and shared by all
  streams (`MultiLoRACrossAttention`); an adapter on cross_attn.key/value would add its
  delta in factored form, so no stream holds a copy of the keys/values.

`BatchedStreams` gives every stream's next-token logits per step. How they become one
transcript is decided above this file: decoders/rules.py (a token at a time, Eq. 3) and
decoders/route.py (one stream's whole transcript, the default).

Letters: k adapters, S = k + 1 streams, U utterances, T tokens, N audio frames, D width,
H heads, Dh = D / H, V vocabulary, r rank (the largest of the adapters: smaller ranks are
zero-padded up to it, which changes nothing but costs the padded columns).
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import lora
from whisper_min.model import KVCache, MultiHeadAttention, Whisper

AUDIO_SIDE = ("cross_attn.key", "cross_attn.value")  # these read the encoder output, not tokens


# ---------------------------------------------------------------------------- adapters


@dataclass
class StackedAdapters:
    """k adapters' deltas stacked per module: name -> (A (k, r, in), B (k, out, r)).

    A module one adapter does not touch gets zeros for it; ranks are zero-padded to the
    largest, since B_i A_i = [B_i 0] [A_i; 0].
    """

    names: list[str]
    deltas: dict[str, tuple[Tensor, Tensor]]

    @property
    def k(self) -> int:
        return len(self.names)


def stack_adapters(adapters, model: Whisper) -> StackedAdapters:
    """Adapter objects (with `.name`, `.deltas`) or plain deltas dicts -> StackedAdapters.

    Raises ValueError for a duplicate name, a module the model does not have (or that is
    not a decoder linear), and a delta whose shape does not fit the module, which is what
    an adapter made for another base model looks like.
    """
    if isinstance(adapters, StackedAdapters):
        return adapters
    adapters = list(adapters)
    names = [getattr(a, "name", None) or f"adapter{i + 1}" for i, a in enumerate(adapters)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate adapters: {', '.join(dupes)} given more than once")
    all_deltas = [a.deltas if hasattr(a, "deltas") else a for a in adapters]
    modules = dict(model.named_modules())
    weight = model.decoder.token_embedding.weight
    stacked = {}
    for module in sorted({m for d in all_deltas for m in d}):
        linear = modules.get(module)
        if not (module.startswith("decoder.blocks.") and isinstance(linear, nn.Linear)):
            raise ValueError(f"adapter module {module!r} is not a linear layer of this model's decoder")
        out_f, in_f = linear.weight.shape
        for name, d in zip(names, all_deltas):
            if module in d:
                A, B = d[module]
                if A.ndim != 2 or B.ndim != 2 or A.shape[1] != in_f or B.shape[0] != out_f or A.shape[0] != B.shape[1]:
                    raise ValueError(f"adapter {name!r}: {module} has A {tuple(A.shape)}, B {tuple(B.shape)}, but the "
                                     f"model's layer is {out_f}x{in_f}: the adapter was made for another base model")
        r = max(d[module][0].shape[0] for d in all_deltas if module in d)
        A = torch.zeros(len(adapters), r, in_f, dtype=weight.dtype, device=weight.device)
        B = torch.zeros(len(adapters), out_f, r, dtype=weight.dtype, device=weight.device)
        for i, d in enumerate(all_deltas):
            if module in d:
                a, b = d[module]
                A[i, : a.shape[0]] = a
                B[i, :, : b.shape[1]] = b
        stacked[module] = (A, B)
    return StackedAdapters(names, stacked)


class MultiLoRALinear(nn.Module):
    """A decoder linear for S = k + 1 streams: W0 x for all rows, plus B_i A_i x for stream i.

    Eq. (2) with real numbers (Whisper base, k = 3 adapters of rank r = 64, D = 512, one
    utterance, one new token). Stack X = [x_1; x_2; x_3] (1536), A = blk_diag(A_1, A_2, A_3)
    (192 x 1536; the paper's concat(A_i), each A_i applied to its own stream only) and
    B = blk_diag(B_1, B_2, B_3) (1536 x 192). As dense matrices A X costs 192 x 1536 = 295k
    multiply-adds and B (A X) another 295k, two thirds of each on zero blocks. With the
    blocks stacked on a batch dimension only the diagonal is computed:
    bmm((3, 1, 512), (3, 512, 64)) -> (3, 1, 64) is 3 x 32k = 98k multiply-adds and
    bmm((3, 1, 64), (3, 64, 512)) -> (3, 1, 512) another 98k: 197k instead of 590k, the same
    as three separate LoRAs, in two kernel calls whatever k is.
    """

    def __init__(self, base: nn.Linear, A: Tensor, B: Tensor):
        super().__init__()
        self.base = base
        self.At = A.transpose(1, 2)  # (k, in, r), a view: bmm takes transposed operands as they are
        self.Bt = B.transpose(1, 2)  # (k, r, out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)  # (S*U, T, out): W0 read once for every stream
        k = self.At.shape[0]
        SU, T, _ = x.shape
        U = SU // (k + 1)
        xs = x[U:].reshape(k, U * T, -1)  # (k, U*T, in): streams 1..k; stream 0 is the base alone
        ax = torch.bmm(xs, self.At)  # (k, U*T, r): A_i x for each stream's rows, no zero blocks
        delta = torch.bmm(ax, self.Bt)  # (k, U*T, out): B_i (A_i x)
        y[U:] += delta.view(k * U, T, -1)  # (k*U, T, out)
        return y


@dataclass
class SharedCrossKV:
    """One layer's cross-attention keys/values for all streams, without S copies.

    k0, v0: the base's (U, H, N, Dh), shared. pk, pv: (k, U, N, r), the adapters' audio A_i^T
    for key/value (None when no adapter touches them); their B_i live in the module.
    """

    k0: Tensor
    v0: Tensor
    pk: Tensor | None
    pv: Tensor | None


class MultiLoRACrossAttention(nn.Module):
    """Cross-attention for S streams over one shared encoder output.

    With K_i = K_0 + P_i B_i^T (P_i = audio A_i^T, N x r), head h's scores and output are
      q K_i^T = q K_0^T + (q B_i^h) P_i^T            (B_i^h: the head's Dh rows of B_i)
      a V_i   = a V_0   + (a P_i) (B_i^h)^T
    so the streams share K_0 and V_0 and each adapter adds work of rank r.
    """

    def __init__(self, mha: MultiHeadAttention, key: tuple[Tensor, Tensor] | None,
                 value: tuple[Tensor, Tensor] | None):
        super().__init__()
        self.mha = mha  # its query/out may themselves be MultiLoRALinear
        self.n_head = mha.n_head
        self.key_A, self.key_B = key if key is not None else (None, None)
        self.value_A, self.value_B = value if value is not None else (None, None)

    def _heads(self, x: Tensor) -> Tensor:
        # Contiguous per head (a one-off copy per window): every step's matmuls then read
        # each head's keys/values as one block instead of 64-float pieces 512 floats apart.
        U, N, D = x.shape
        return x.view(U, N, self.n_head, D // self.n_head).transpose(1, 2).contiguous()  # (U, H, N, Dh)

    def shared_kv(self, audio: Tensor) -> SharedCrossKV:
        """audio (U, N, D) -> the base keys/values once, plus the adapters' low-rank factors."""
        pk = torch.einsum("und,krd->kunr", audio, self.key_A) if self.key_A is not None else None
        pv = torch.einsum("und,krd->kunr", audio, self.value_A) if self.value_A is not None else None
        return SharedCrossKV(self._heads(self.mha.key(audio)), self._heads(self.mha.value(audio)), pk, pv)

    def cross(self, x: Tensor, kv: SharedCrossKV) -> Tensor:
        U, H, N, Dh = kv.k0.shape
        SU, T, D = x.shape
        S = SU // U
        # Streams fold into the query rows of each (utterance, head), so one matmul reads K_0
        # (and one V_0) for all of them. The 1/sqrt(Dh) goes on q, the smallest operand.
        q = self.mha.query(x) * Dh**-0.5
        q = q.view(S, U, T, H, Dh).permute(1, 3, 0, 2, 4)  # (U, H, S, T, Dh)
        scores = q.reshape(U, H, S * T, Dh) @ kv.k0.transpose(-1, -2)  # (U, H, S*T, N)
        k = S - 1
        # B_i^h, head h's rows of adapter i's B (out = H*Dh, r), is block i*H + h of B viewed
        # as (k*H, Dh, r): one bmm over (adapter, head) pairs, no copy of B.
        if kv.pk is not None:
            qk = q[:, :, 1:].permute(2, 1, 0, 3, 4).reshape(k * H, U * T, Dh)  # (k*H, U*T, Dh)
            qB = torch.bmm(qk, self.key_B.view(k * H, Dh, -1)).view(k, H, U, T, -1)  # (k, H, U, T, r)
            scores.view(U, H, S, T, N)[:, :, 1:] += torch.einsum("khutr,kunr->uhktn", qB, kv.pk)
        attn = scores.softmax(dim=-1)
        out = (attn @ kv.v0).view(U, H, S, T, Dh)  # (U, H, S*T, Dh) -> (U, H, S, T, Dh)
        if kv.pv is not None:
            aP = torch.einsum("uhktn,kunr->khutr", attn.view(U, H, S, T, N)[:, :, 1:], kv.pv)  # (k, H, U, T, r)
            r = aP.shape[-1]
            delta = torch.bmm(aP.reshape(k * H, U * T, r), self.value_B.view(k * H, Dh, r).transpose(1, 2))
            out[:, :, 1:] += delta.view(k, H, U, T, Dh).permute(2, 1, 0, 3, 4)  # (U, H, k, T, Dh)
        out = out.permute(2, 0, 3, 1, 4)  # (S, U, T, H, Dh)
        return self.mha.out(out.reshape(SU, T, D))  # (S*U, T, D)


@contextmanager
def swapped(model: nn.Module, replacements: dict[str, nn.Module]):
    """Put modules in place by qualified name for the duration, then put the originals back."""
    saved = []
    try:
        for name, new in replacements.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            saved.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, new)
        yield model
    finally:
        for parent, attr, old in reversed(saved):
            setattr(parent, attr, old)


def multi_lora_modules(model: Whisper, stack: StackedAdapters) -> dict[str, nn.Module]:
    """The replacements that turn the decoder into the S-stream decoder, in install order:
    token-side linears first, then each cross_attn wrapped around its (swapped) MHA."""
    out = {name: MultiLoRALinear(model.get_submodule(name), A, B)
           for name, (A, B) in stack.deltas.items() if not name.endswith(AUDIO_SIDE)}
    for i, block in enumerate(model.decoder.blocks):
        prefix = f"decoder.blocks.{i}.cross_attn"
        out[prefix] = MultiLoRACrossAttention(block.cross_attn, stack.deltas.get(prefix + ".key"),
                                              stack.deltas.get(prefix + ".value"))
    return out


# ---------------------------------------------------------------------------- streams


class EmptyKVCache(KVCache):
    """A KVCache that is not zero-filled: attention only reads positions it has written, and
    for 26 streams the fill alone would cost ~0.3 GB of memory writes per window."""

    def __init__(self, n_layer: int, batch: int, n_ctx: int, n_state: int, dtype, device):
        shape = (batch, n_ctx, n_state)
        self.layers = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                       for _ in range(n_layer)]


class BatchedStreams:
    """All S streams in one decoder forward (the model must have `multi_lora_modules` in).

    k = 0 calls the untouched `model.decoder`, so it is plain decoding, bit for bit. For
    k >= 1 the decoder's few lines are repeated here for one change: only the rows the loop
    reads go through the vocabulary projection (`TextDecoder.project`), the largest cost
    per step, and all streams share one read of its weights.
    """

    def __init__(self, model: Whisper, k: int, audio_features: Tensor):
        self.model, self.k, self.S = model, k, k + 1
        self.U = audio_features.shape[0]
        decoder = model.decoder
        self.cross_kv = self._cross_kv(audio_features)
        if k:
            w = decoder.token_embedding.weight
            self.cache = EmptyKVCache(len(decoder.blocks), self.S * self.U, decoder.positional_embedding.shape[0],
                                      w.shape[1], w.dtype, w.device)
        else:
            self.cache = decoder.new_cache(self.U)

    def _cross_kv(self, audio_features: Tensor) -> list:
        decoder = self.model.decoder
        if self.k:
            return [b.cross_attn.shared_kv(audio_features) for b in decoder.blocks]
        return decoder.cross_kv(audio_features)

    def load(self, audio_features: Tensor) -> None:
        """Another window's audio (same U) into the same tensors, overwritten in place, so
        that what a CUDA graph recorded stays valid (decoders/cuda_graphs.py). The KV cache needs no
        reset: a step writes its position before attention reads up to it."""
        if audio_features.shape[0] != self.U:
            raise ValueError(f"{audio_features.shape[0]} windows, but these streams hold {self.U}")
        for old, new in zip(self.cross_kv, self._cross_kv(audio_features)):
            pairs = zip(old, new) if isinstance(old, tuple) else \
                ((getattr(old, f), getattr(new, f)) for f in ("k0", "v0", "pk", "pv"))
            for a, b in pairs:
                if a is not None:
                    a.copy_(b)

    def prefill(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The start tokens (U, T0) -> next-token logits of every stream (S, U, V), and the
        base's logits at every start position (U, T0, V) (for the no-speech probability).
        Only those rows go through the vocabulary projection, not S * U * T0 of them."""
        if not self.k:
            logits = self.model.decoder(tokens, self.cross_kv, self.cache, 0)  # (U, T0, V)
            return logits[None, :, -1], logits
        U, T0 = tokens.shape
        h = self._hidden(tokens, 0).view(self.S, U, T0, -1)  # (S, U, T0, D)
        last = self.model.decoder.project(h[:, :, -1].reshape(self.S * U, -1)).view(self.S, U, -1)
        return last, self.model.decoder.project(h[0].reshape(U * T0, -1)).view(U, T0, -1)

    def step(self, token: Tensor, offset: int) -> Tensor:
        """One new token per utterance (U, 1) at `offset` -> next-token logits (S, U, V). With
        k >= 1 the token may also be one per stream and utterance (S*U, 1), stream-major, for
        streams that keep their own transcripts (decoders/route.py)."""
        if not self.k:
            return self.model.decoder(token, self.cross_kv, self.cache, offset)[None, :, -1]
        return self.model.decoder.project(self._hidden(token, offset)[:, -1]).view(self.S, self.U, -1)

    def _hidden(self, tokens: Tensor, offset: int) -> Tensor:
        """TextDecoder.forward up to its final layer norm, for all streams: (S*U, T, D)."""
        decoder, T = self.model.decoder, tokens.shape[1]
        rows = tokens if tokens.shape[0] == self.S * self.U else tokens.repeat(self.S, 1)  # (S*U, T)
        x = decoder.token_embedding(rows) + decoder.positional_embedding[offset : offset + T]
        for i, block in enumerate(decoder.blocks):
            x = block(x, self.cross_kv[i], self.cache.layers[i], offset)
        return decoder.ln(x)


# ---------------------------------------------------------------------------- helpers


def encoder_output(model: Whisper, mel: Tensor, audio_features: Tensor | None) -> Tensor:
    """The encoder's output for a mel (M, 3000) or a batch (U, M, 3000), unless given."""
    if audio_features is not None:
        return audio_features
    if mel.ndim == 2:
        mel = mel[None]
    return model.embed_audio(mel.to(model.device, model.decoder.token_embedding.weight.dtype))


def load_stack(model: Whisper, paths) -> StackedAdapters:
    """Adapter files -> one stack, each file loaded once; ValueError for a file given twice
    (lora.load_adapter raises for a file made for another base model)."""
    real = [os.path.realpath(p) for p in paths]
    dupes = sorted({p for p, r in zip(paths, real) if real.count(r) > 1})
    if dupes:
        raise ValueError(f"duplicate adapters: {', '.join(dupes)} given more than once")
    return stack_adapters([lora.load_adapter(p, model) for p in paths], model)
