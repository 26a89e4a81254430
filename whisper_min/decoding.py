"""Decoding one 30 s window: greedy (or temperature sampling) with Whisper's logit filters.

The steps are small named functions, as in gpt-fast: `prefill` runs the start-of-transcript
tokens through the decoder and fills the KV cache, `decode_one_token` extends it by one.
`LogitFilters` holds the rules Whisper applies to every step's logits:

- suppress blank: the first sampled token may not be a space or end-of-text;
- suppress tokens: symbols no one says, and the control tokens, are never sampled;
- timestamp rules (unless `without_timestamps`): timestamps come in pairs, never go
  backwards, the first token is a timestamp no later than `max_initial_timestamp`, and a
  timestamp is forced when timestamps together are likelier than any text token.
"""

import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import Whisper
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class DecodingOptions:
    # what to do
    language: str | None = "en"  # None is not supported: whisper_min does no language detection
    task: str = "transcribe"  # or "translate" (multilingual models only)
    # how to pick tokens
    temperature: float = 0.0  # 0 is greedy
    sample_len: int | None = None  # max tokens to sample; default n_text_ctx // 2
    # timestamps
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0  # seconds
    # which tokens may never be sampled
    suppress_tokens: str = "-1"  # comma-separated ids; "-1" means the non-speech symbols
    suppress_blank: bool = True

    def __post_init__(self):
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {self.task!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if self.language is None:
            raise ValueError("language=None (detection) is not supported; pass a language code such as 'en'")


@dataclass
class DecodingResult:
    tokens: list[int]  # sampled tokens, without the start sequence and end-of-text
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    stream_tokens: list[int] | None = None  # ADML: how many tokens each stream chose
    compression_ratio: float = field(init=False)

    def __post_init__(self):
        raw = self.text.encode("utf-8")
        self.compression_ratio = len(raw) / len(zlib.compress(raw)) if raw else 0.0


def initial_tokens(tokenizer: Tokenizer, options: DecodingOptions) -> list[int]:
    tokens = list(tokenizer.sot_sequence)
    if options.without_timestamps:
        tokens.append(tokenizer.no_timestamps)
    return tokens


class LogitFilters:
    """Whisper's per-step rules, applied in place to logits (B, V) given tokens (B, T)."""

    def __init__(self, tokenizer: Tokenizer, options: DecodingOptions, sample_begin: int, n_vocab: int):
        self.tokenizer, self.options, self.sample_begin = tokenizer, options, sample_begin
        self.blank = tokenizer.encode(" ") + [tokenizer.eot]
        suppress = [int(t) for t in options.suppress_tokens.split(",") if t.strip()]
        if -1 in suppress:
            suppress = [t for t in suppress if t >= 0] + list(tokenizer.non_speech_tokens)
        suppress += [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                     tokenizer.sot_lm, tokenizer.no_speech]
        self.suppress = sorted({t for t in suppress if 0 <= t < n_vocab})
        self.max_initial_timestamp_index = None
        if options.max_initial_timestamp is not None:
            self.max_initial_timestamp_index = round(options.max_initial_timestamp / 0.02)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        if self.options.suppress_blank and tokens.shape[1] == self.sample_begin:
            logits[:, self.blank] = -float("inf")
        logits[:, self.suppress] = -float("inf")
        if not self.options.without_timestamps:
            self.timestamp_rules(logits, tokens)
        return logits

    def timestamp_rules(self, logits: Tensor, tokens: Tensor) -> None:
        tb, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        logits[:, self.tokenizer.no_timestamps] = -float("inf")
        for k in range(tokens.shape[0]):
            seq = tokens[k, self.sample_begin :].tolist()
            last_was_ts = len(seq) >= 1 and seq[-1] >= tb
            penultimate_was_ts = len(seq) < 2 or seq[-2] >= tb
            if last_was_ts:
                if penultimate_was_ts:  # a closed pair: text must follow
                    logits[k, tb:] = -float("inf")
                else:  # an open pair: close it, or end
                    logits[k, :eot] = -float("inf")
            timestamps = [t for t in seq if t >= tb]
            if timestamps:
                # never go backwards; an open pair may close on the same timestamp
                last = timestamps[-1] if last_was_ts and not penultimate_was_ts else timestamps[-1] + 1
                logits[k, tb:last] = -float("inf")
        if tokens.shape[1] == self.sample_begin:
            logits[:, :tb] = -float("inf")  # start with a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, tb + self.max_initial_timestamp_index + 1 :] = -float("inf")
        # If all timestamps together are likelier than the best text token, take a timestamp.
        logprobs = F.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = logprobs[:, tb:].logsumexp(dim=-1)
        max_text_logprob = logprobs[:, :tb].max(dim=-1).values
        logits[timestamp_logprob > max_text_logprob, :tb] = -float("inf")


def prefill(model: Whisper, tokens: Tensor, cross_kv: list, cache) -> Tensor:
    """Run the start sequence (B, T0) through the decoder, filling the cache: (B, T0, V)."""
    return model.decoder(tokens, cross_kv, cache, offset=0)


def decode_one_token(model: Whisper, token: Tensor, cross_kv: list, cache, offset: int) -> Tensor:
    """One new token per row (B, 1) at position `offset` -> next-token logits (B, V)."""
    return model.decoder(token, cross_kv, cache, offset)[:, -1]


def pick(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def decode(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions = DecodingOptions(),
           audio_features: Tensor | None = None) -> list[DecodingResult]:
    """Decode a batch of 30 s log-mel windows (B, M, 3000); one result per window."""
    if audio_features is None:
        if mel.ndim == 2:
            mel = mel[None]
        audio_features = model.embed_audio(mel.to(model.device, model.decoder.token_embedding.weight.dtype))
    B = audio_features.shape[0]
    start = initial_tokens(tokenizer, options)
    sample_begin = len(start)
    filters = LogitFilters(tokenizer, options, sample_begin, model.dims.n_vocab)

    cross_kv = model.decoder.cross_kv(audio_features)
    cache = model.decoder.new_cache(B)
    tokens = torch.tensor([start] * B, device=audio_features.device)  # (B, T0)
    logits = prefill(model, tokens, cross_kv, cache)  # (B, T0, V)
    # The no-speech probability is read where the model would predict after <|startoftranscript|>.
    no_speech_probs = logits[:, start.index(tokenizer.sot)].softmax(-1)[:, tokenizer.no_speech].tolist()

    def step(token, offset):
        return decode_one_token(model, token, cross_kv, cache, offset)

    tokens, sum_logprobs = sample_tokens(logits[:, -1], tokens, step, filters, options, tokenizer.eot,
                                         model.dims.n_text_ctx)
    return make_results(tokens, sum_logprobs, no_speech_probs, sample_begin, tokenizer, options.temperature)


def sample_tokens(logits: Tensor, tokens: Tensor, step, filters: LogitFilters, options: DecodingOptions, eot: int,
                  n_text_ctx: int) -> tuple[Tensor, Tensor]:
    """The sampling loop (greedy at temperature 0): next-token logits (B, V) after `tokens`
    (B, T0) -> all tokens (B, T) and each row's summed log-probability of what it sampled.
    `step(last (B, 1), offset)` gives the next logits (B, V). A row that ended keeps emitting
    end-of-text, uncounted; the loop stops when every row has ended, at sample_len tokens, or
    at the context's end. Plain decoding and routing's streams (decoders/route.py) share it."""
    sample_len = options.sample_len or n_text_ctx // 2
    sum_logprobs = torch.zeros(tokens.shape[0], device=tokens.device)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    for _ in range(sample_len):
        filters(logits, tokens)
        next_tokens = pick(logits, options.temperature)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        finished = tokens[:, -1] == eot
        sum_logprobs += logprobs[rows, next_tokens] * ~finished
        next_tokens[finished] = eot  # finished rows keep emitting end-of-text
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        if (tokens[:, -1] == eot).all() or tokens.shape[1] >= n_text_ctx:
            break
        logits = step(tokens[:, -1:], tokens.shape[1] - 1)
    return tokens, sum_logprobs


def make_results(tokens: Tensor, sum_logprobs: Tensor, no_speech_probs: list[float], sample_begin: int,
                 tokenizer: Tokenizer, temperature: float) -> list[DecodingResult]:
    """One DecodingResult per row of `tokens` (rows, T): the sampled tokens up to end-of-text,
    and the average log-probability over them and the end-of-text."""
    out = []
    for row, lp, nsp in zip(tokens.tolist(), sum_logprobs.tolist(), no_speech_probs):
        sampled = row[sample_begin:]
        sampled = sampled[: sampled.index(tokenizer.eot)] if tokenizer.eot in sampled else sampled
        out.append(DecodingResult(tokens=sampled, text=tokenizer.decode(sampled).strip(),
                                  avg_logprob=lp / (len(sampled) + 1), no_speech_prob=nsp, temperature=temperature))
    return out
