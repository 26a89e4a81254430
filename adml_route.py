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

This is the plain form: k + 1 greedy decodes (the base, then each adapter merged in), which
share the encoder output but not the decoder passes, so it costs about k + 1 times the
decoding of the base. A one-pass form would give every stream its own tokens in adml's
batched decoder; it is not built yet.
"""

import torch
from torch import Tensor

from adml import StackedAdapters, _audio_features, decode_merged
from whisper_min.decoding import DecodingOptions, DecodingResult
from whisper_min.decoding import decode as plain_decode
from whisper_min.model import Whisper
from whisper_min.tokenizer import Tokenizer


def one_adapter(stack: StackedAdapters, i: int) -> StackedAdapters:
    """Adapter i of a stack as a stack of one (its zero-padded rank changes nothing)."""
    return StackedAdapters([stack.names[i]], {m: (A[i : i + 1], B[i : i + 1]) for m, (A, B) in stack.deltas.items()})


@torch.inference_mode()
def decode_routed(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions,
                  audio_features: Tensor | None, stack: StackedAdapters, tau: float) -> list[DecodingResult]:
    """Each utterance's transcript from one stream: adapter i's when its avg_logprob is at
    least the base's + tau and no other adapter's is higher (the first adapter wins a tie),
    else the base's. `stream_tokens` counts the chosen stream's tokens (base first)."""
    features = _audio_features(model, mel, audio_features)  # the encoder once, for all k + 1 decodes
    best = plain_decode(model, mel, tokenizer, options, features)
    chosen, bar = [0] * len(best), [r.avg_logprob + tau for r in best]  # an adapter must reach the bar
    for i in range(stack.k):
        for u, r in enumerate(decode_merged(model, mel, tokenizer, options, features, one_adapter(stack, i))):
            if r.avg_logprob >= bar[u] and (chosen[u] == 0 or r.avg_logprob > best[u].avg_logprob):
                best[u], chosen[u] = r, i + 1
    for r, c in zip(best, chosen):
        r.stream_tokens = [len(r.tokens) if s == c else 0 for s in range(stack.k + 1)]
    return best
