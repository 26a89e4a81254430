"""Routing: one stream per utterance instead of one per token (`--strategy route`; not the
paper's rule, an alternative to it).

ADML (adml.py) builds one transcript token by token, each token from whichever stream is
surest at that step. Routing lets every stream decode the whole window on its own and keeps
one stream's transcript: the adapter whose average log-probability per token beats the
base's by at least τ (the surest such adapter), else the base's.

Why try it: at 300 utterances a domain (RESULTS.md, twelfth pass) the sports adapter alone
scored 6.24% WER on the sports test set, and DAS with all three adapters 7.92%. Token by
token, the base keeps the words it is sure of and wrong about ("lake or the spartan team"
for "lakers sports team"), and a transcript that changes streams inside a word can end up
spelled by neither ("serenaen will him"). A whole transcript from one stream has neither
problem; the question is whether the surest stream is the right one, in domain and out.

`decode_streams` decodes the k + 1 transcripts in one pass: adml's batched decoder
(`BatchedStreams`, the B(AX) trick) with every stream fed its own last token, so each step is
one decoder forward, as in ADML. `decode_streams_plain` is the reference it is tested
against: k + 1 plain greedy decodes (the base, then each adapter merged in) that share only
the encoder output.

τ only picks among transcripts already decoded, so `StreamMemo` keeps every stream's results
per window and routes the same decode at any τ: a τ sweep (bench/tau_sweep.py, the tune
stage's routing step) decodes each utterance once, not once per τ.
"""

import dataclasses
import hashlib

import torch
from torch import Tensor

from adml import BatchedStreams, StackedAdapters, _audio_features, decode_merged, multi_lora_modules, swapped
from whisper_min.decoding import (DecodingOptions, DecodingResult, LogitFilters, initial_tokens, make_results,
                                  sample_tokens)
from whisper_min.decoding import decode as plain_decode
from whisper_min.model import Whisper
from whisper_min.tokenizer import Tokenizer


def one_adapter(stack: StackedAdapters, i: int) -> StackedAdapters:
    """Adapter i of a stack as a stack of one (its zero-padded rank changes nothing)."""
    return StackedAdapters([stack.names[i]], {m: (A[i : i + 1], B[i : i + 1]) for m, (A, B) in stack.deltas.items()})


def route(streams: list[list[DecodingResult]], tau: float) -> list[DecodingResult]:
    """Every stream's results, base first ([stream][utterance]) -> one per utterance: adapter
    i's when its avg_logprob is at least the base's + tau and no other adapter's is higher
    (the first adapter wins a tie), else the base's. `stream_tokens` counts the chosen
    stream's tokens (base first); `no_speech_prob` stays the base's, as in ADML."""
    out = []
    for u, base in enumerate(streams[0]):
        best, chosen = base, 0
        for i, stream in enumerate(streams[1:], start=1):
            r = stream[u]
            if r.avg_logprob >= base.avg_logprob + tau and (chosen == 0 or r.avg_logprob > best.avg_logprob):
                best, chosen = r, i
        # A copy: the streams' own results stay as decoded, to be routed again at another τ.
        out.append(dataclasses.replace(best, no_speech_prob=base.no_speech_prob,
                                       stream_tokens=[len(best.tokens) if s == chosen else 0
                                                      for s in range(len(streams))]))
    return out


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
            key = hashlib.sha256(mel.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
            key += f"{tuple(mel.shape)}{options!r}"
            if key not in self.results:
                self.results[key] = decode_streams(model, mel, tokenizer, options, audio_features, self.stack)
                self.decodes += 1
            return route(self.results[key], tau)

        return decode_fn


def decode_routed(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                  audio_features: Tensor | None, stack: StackedAdapters, tau: float) -> list[DecodingResult]:
    """`--strategy route`: one transcript per utterance, from one stream (`route`)."""
    return route(decode_streams(model, mel, tokenizer, options, audio_features, stack), tau)


@torch.inference_mode()
def decode_streams(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                   audio_features: Tensor | None, stack: StackedAdapters) -> list[list[DecodingResult]]:
    """Every stream's greedy transcript, [stream][utterance], base first, in one batched pass."""
    features = _audio_features(model, mel, audio_features)
    with swapped(model, multi_lora_modules(model, stack)):
        return run_streams(BatchedStreams(model, stack.k, features), features, tokenizer, options,
                           model.dims.n_vocab, model.dims.n_text_ctx)


def run_streams(streams, features: Tensor, tokenizer: Tokenizer, options: DecodingOptions, n_vocab: int,
                n_text_ctx: int) -> list[list[DecodingResult]]:
    """`decode_streams`' loop on any `streams` with adml.run's `prefill(tokens)` and a `step`
    that takes one token per stream (S*U, 1) (BatchedStreams, or cuda_graphs.GraphedSteps):
    the k + 1 streams decode side by side, each from its own tokens, until every stream of
    every utterance has ended (rows that ended emit end-of-text, uncounted, as in plain decoding)."""
    U = features.shape[0]
    start = initial_tokens(tokenizer, options)
    sample_begin = len(start)
    filters = LogitFilters(tokenizer, options, sample_begin, n_vocab)
    tokens = torch.tensor([start] * U, device=features.device)  # (U, T0): the same start for every stream
    logits, base_logits = streams.prefill(tokens)  # (S, U, V), (U, T0, V)
    S = logits.shape[0]
    no_speech = base_logits[:, start.index(tokenizer.sot)].softmax(-1)[:, tokenizer.no_speech].tolist()

    def step(token, offset):
        return streams.step(token, offset).reshape(S * U, -1)  # (S, U, V) -> (S*U, V)

    # Plain decoding's loop on S*U rows, stream-major: from here each stream has its own transcript.
    tokens, sum_logprobs = sample_tokens(logits.reshape(S * U, -1), tokens.repeat(S, 1), step, filters, options,
                                         tokenizer.eot, n_text_ctx)
    out = make_results(tokens, sum_logprobs, no_speech * S, sample_begin, tokenizer, options.temperature)
    return [out[s * U : (s + 1) * U] for s in range(S)]  # rows are stream-major: row s * U + u


@torch.inference_mode()
def decode_streams_plain(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                         audio_features: Tensor | None, stack: StackedAdapters) -> list[list[DecodingResult]]:
    """The reference for `decode_streams`: k + 1 plain greedy decodes (the base, then each
    adapter merged in) sharing the encoder output. About k + 1 times the base's decoding cost."""
    features = _audio_features(model, mel, audio_features)
    results = [plain_decode(model, mel, tokenizer, options, features)]
    return results + [decode_merged(model, mel, tokenizer, options, features, one_adapter(stack, i))
                      for i in range(stack.k)]
