"""Routing, the default rule (`--strategy route`): one stream's whole transcript per
utterance, instead of one stream per token as in the paper's Eq. (3).

Every stream decodes the window on its own, and the utterance keeps the transcript of the
adapter whose average log-probability per token beats the base's by at least τ (the surest
such adapter), else the base's.

Why it is the default: token by token, the base keeps the words it is sure of and wrong
about ("lake or the spartan team" for "lakers sports team"), and a transcript that changes
streams inside a word can be spelled by neither stream ("serenaen will him"). On validation
speech, whole transcripts made fewer errors than token-level selection both in domain and
out of it (RESULTS.md, "τ for routing").

`decode_streams` decodes the k + 1 transcripts in one pass: adml's batched decoder
(`BatchedStreams`, the B(AX) trick) with every stream fed its own last token, so each step is
one decoder forward, as in token-level ADML. decoders/reference.py has the reference it is
tested against: k + 1 plain greedy decodes that share only the encoder output.
"""

import dataclasses

import torch
from torch import Tensor

from adml import BatchedStreams, StackedAdapters, encoder_output, multi_lora_modules, swapped
from whisper_min.decoding import (DecodingOptions, DecodingResult, LogitFilters, initial_tokens, make_results,
                                  sample_tokens)
from whisper_min.model import Whisper
from whisper_min.tokenizer import Tokenizer


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


def decode_routed(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                  audio_features: Tensor | None, stack: StackedAdapters, tau: float) -> list[DecodingResult]:
    """`--strategy route`: one transcript per utterance, from one stream (`route`)."""
    return route(decode_streams(model, mel, tokenizer, options, audio_features, stack), tau)


@torch.inference_mode()
def decode_streams(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                   audio_features: Tensor | None, stack: StackedAdapters) -> list[list[DecodingResult]]:
    """Every stream's greedy transcript, [stream][utterance], base first, in one batched pass."""
    features = encoder_output(model, mel, audio_features)
    with swapped(model, multi_lora_modules(model, stack)):
        return run_streams(BatchedStreams(model, stack.k, features), features, tokenizer, options,
                           model.dims.n_vocab, model.dims.n_text_ctx)


def run_streams(streams, features: Tensor, tokenizer: Tokenizer, options: DecodingOptions, n_vocab: int,
                n_text_ctx: int) -> list[list[DecodingResult]]:
    """`decode_streams`' loop on any `streams` with `prefill(tokens)` and a `step` that takes
    one token per stream (S*U, 1) (adml.BatchedStreams, or cuda_graphs.GraphedSteps):
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
