"""Whisper's encoder-decoder transformer, in plain PyTorch.

Module names follow openai/whisper (`query/key/value/out`, `attn_ln`, `cross_attn`,
`mlp_ln`, `ln_post`) so a state dict maps onto it 1:1. Two things differ on purpose:

- The self-attention KV cache is explicit: `KVCache` holds preallocated tensors and the
  decoder writes position `offset` into them (as gpt-fast does). Nothing hides in hooks.
- Cross-attention keys/values depend only on the audio, so `TextDecoder.cross_kv` computes
  them once per utterance and every decoding step reuses them.

Letters used in shape comments: B batch, T time (tokens or audio frames), D model width,
H heads, Dh = D / H, V vocabulary, M mel bins.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelDimensions:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """The encoder's fixed positional embedding (Whisper paper, section 2.2)."""
    log_timescale_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class LayerNorm(nn.LayerNorm):
    # Normalise in fp32 even when the weights are fp16, as Whisper was trained.
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)  # a key bias cancels in softmax
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def split_heads(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, T, Dh)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """q (B, T, D); k, v either (B, S, D) or already split into heads (B, H, S, Dh)."""
        q = self.split_heads(q)
        if k.ndim == 3:
            k, v = self.split_heads(k), self.split_heads(v)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
        B, H, T, Dh = x.shape
        return self.out(x.transpose(1, 2).reshape(B, T, H * Dh))  # (B, T, D)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0,
                causal: bool = False) -> Tensor:
        """Self-attention. With a cache, the new keys/values land at [offset, offset + T)
        and the queries attend to everything up to there; without one, attention over x
        alone (causal in the decoder, full in the encoder)."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        if cache is None:
            T = x.shape[1]
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if causal else None
            return self.attend(q, k, v, mask)
        k_cache, v_cache = cache  # (B, n_text_ctx, D) each
        T = x.shape[1]
        k_cache[:, offset : offset + T] = k
        v_cache[:, offset : offset + T] = v
        k, v = k_cache[:, : offset + T], v_cache[:, : offset + T]
        mask = None
        if T > 1:  # several new tokens: token t may see cached ones and new ones up to t
            mask = torch.ones(T, offset + T, dtype=torch.bool, device=x.device).tril(diagonal=offset)
        return self.attend(q, k, v, mask)

    def cross(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """Cross-attention on keys/values computed once by `TextDecoder.cross_kv`."""
        return self.attend(self.query(x), kv[0], kv[1])


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = LayerNorm(n_state)

    def forward(self, x, cross_kv=None, cache=None, offset: int = 0) -> Tensor:
        # Decoder blocks (the ones with cross-attention) are causal; encoder blocks are not.
        x = x + self.attn(self.attn_ln(x), cache, offset, causal=self.cross_attn is not None)
        if self.cross_attn is not None:
            x = x + self.cross_attn.cross(self.cross_attn_ln(x), cross_kv)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)])
        self.ln_post = LayerNorm(n_state)

    def forward(self, mel: Tensor) -> Tensor:
        """mel (B, M, 2 * n_audio_ctx) -> audio features (B, n_audio_ctx, D)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))  # stride 2 halves the frames: (B, D, n_audio_ctx)
        x = x.permute(0, 2, 1)  # (B, n_audio_ctx, D)
        if x.shape[1:] != self.positional_embedding.shape:
            raise ValueError(f"audio features {tuple(x.shape[1:])} != {tuple(self.positional_embedding.shape)}: "
                             "pad or trim the mel to 30 s (3000 frames)")
        x = (x + self.positional_embedding).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class KVCache:
    """Preallocated self-attention keys/values for every decoder layer.

    `layers[i]` is a (keys, values) pair of shape (B, n_text_ctx, D); the decoder writes
    position `offset` into them. Keeping it a plain object (not module state) makes
    it obvious what survives between decoding steps.
    """

    def __init__(self, n_layer: int, batch: int, n_ctx: int, n_state: int, dtype, device):
        shape = (batch, n_ctx, n_state)
        self.layers = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                       for _ in range(n_layer)]

    def reorder(self, index: Tensor) -> None:
        """Keep only the batch rows in `index` (finished utterances drop out)."""
        self.layers = [(k[index], v[index]) for k, v in self.layers]


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)])
        self.ln = LayerNorm(n_state)

    def cross_kv(self, audio_features: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention (keys, values) for each layer, each (B, H, n_audio_ctx, Dh).
        Split into heads and made contiguous once here, since every decoding step reads
        them (strided keys cost attention about 1.5x on CPU)."""
        return [(b.cross_attn.split_heads(b.cross_attn.key(audio_features)).contiguous(),
                 b.cross_attn.split_heads(b.cross_attn.value(audio_features)).contiguous()) for b in self.blocks]

    def new_cache(self, batch: int, dtype=None, device=None) -> KVCache:
        w = self.token_embedding.weight
        return KVCache(len(self.blocks), batch, self.positional_embedding.shape[0], w.shape[1],
                       dtype or w.dtype, device or w.device)

    def forward(self, tokens: Tensor, cross_kv: list, cache: KVCache | None = None, offset: int = 0) -> Tensor:
        """tokens (B, T) at positions [offset, offset + T) -> logits (B, T, V)."""
        T = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[offset : offset + T]
        for i, block in enumerate(self.blocks):
            x = block(x, cross_kv[i], cache.layers[i] if cache is not None else None, offset)
        return self.project(self.ln(x))

    def project(self, x: Tensor) -> Tensor:
        """Hidden states (..., D) -> logits (..., V); the output projection is the token
        embedding E (V, D), transposed (weights are tied).

        Why not simply x @ E.T: a decoding step has one row per stream, and for one row MKL
        takes a GEMV path that reads the 100 MB of E about 3x slower than its GEMM path does
        (base, measured: 9.7 ms -> 3.0 ms per step with 2 threads). E @ x.T over at least two
        rows is a GEMM; from ~16 rows on x @ E.T is one too, and as fast."""
        w = self.token_embedding.weight
        h = x.reshape(-1, x.shape[-1]).to(w.dtype)  # (rows, D)
        rows = h.shape[0]
        if rows >= 16:
            logits = h @ w.T
        else:
            h = torch.cat([h, h]) if rows == 1 else h  # a second row makes it a GEMM
            logits = (w @ h.T).T[:rows]  # (rows, V)
        return logits.float().reshape(*x.shape[:-1], -1)


class Whisper(nn.Module):
    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                    dims.n_audio_head, dims.n_audio_layer)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state,
                                   dims.n_text_head, dims.n_text_layer)

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.dims.n_vocab - 51765 - int(self.is_multilingual)

    @property
    def device(self) -> torch.device:
        return self.decoder.token_embedding.weight.device

    def embed_audio(self, mel: Tensor) -> Tensor:
        return self.encoder(mel)

    def logits(self, tokens: Tensor, audio_features: Tensor) -> Tensor:
        """Teacher-forced logits for whole token sequences, no cache (training, tests)."""
        return self.decoder(tokens, self.decoder.cross_kv(audio_features))

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        return self.logits(tokens, self.embed_audio(mel))
