"""decoders/cuda_graphs.GraphedDecoder keeps its buffers from window to window. On the CPU it
runs eagerly through the same objects, so these tests check what the graphs rely on: windows
decoded one after another through reused, overwritten tensors give exactly what a fresh
decode gives each window. The graphs themselves need a GPU: `bench/table6.py --cuda-graphs`
compares their token ids with eager decoding there (RESULTS.md, Table VI)."""

import pytest
import torch

import adml
from decoders import route, rules
from decoders.cuda_graphs import GraphedDecoder
from test_adml import OPTIONS, tiny, tiny_adapters, tiny_features, tokenizer  # noqa: F401 (fixtures)
from whisper_min.decoding import DecodingOptions, decode


def same(got, want):
    assert [(r.tokens, r.text, r.avg_logprob, r.no_speech_prob, r.stream_tokens) for r in got] == \
        [(r.tokens, r.text, r.avg_logprob, r.no_speech_prob, r.stream_tokens) for r in want]


def fresh(tiny, tokenizer, options, audio, adapters, rule):
    """What a fresh decode gives: rules.decode, or route's one pass for routing."""
    if rule.get("strategy") == "route":
        stack = adml.stack_adapters(adapters, tiny)
        return route.decode_routed(tiny, None, tokenizer, options, audio, stack, rule["tau"])
    return rules.decode(tiny, None, tokenizer, options, audio_features=audio, adapters=adapters, **rule)


@pytest.mark.parametrize("rule", [{}, {"strategy": "max-only", "tau": 0.01, "end": "base"},
                                  {"strategy": "route", "tau": 0.0}])
def test_windows_through_reused_buffers_equal_fresh_decodes(tiny, tokenizer, rule):
    adapters = tiny_adapters(tiny)
    decode_fn = GraphedDecoder(tiny, adapters, **rule)
    assert not decode_fn.graphs  # a CPU model: eager
    for seed, options in ((1, OPTIONS), (2, DecodingOptions(sample_len=20)), (3, OPTIONS)):
        audio = tiny_features(U=2, seed=seed)
        got = decode_fn(tiny, None, tokenizer, options, audio_features=audio)
        same(got, fresh(tiny, tokenizer, options, audio, adapters, rule))
        assert any(sum(r.stream_tokens[1:]) for r in got) or rule.get("strategy") == "max-only"  # adapters took part
    first = decode_fn.steps
    decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=tiny_features(U=2, seed=4))
    assert decode_fn.steps is first  # the same buffers all along
    audio = tiny_features(U=1, seed=5)  # another batch size: new buffers, same answers
    same(decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=audio),
         fresh(tiny, tokenizer, OPTIONS, audio, adapters, rule))
    assert decode_fn.steps is not first


def test_no_adapters_is_plain_decoding(tiny, tokenizer):
    decode_fn = GraphedDecoder(tiny)
    for seed in (1, 2):
        audio = tiny_features(U=2, seed=seed)
        want = decode(tiny, None, tokenizer, OPTIONS, audio_features=audio)
        got = decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=audio)
        assert [(r.tokens, r.text, r.avg_logprob) for r in got] == [(r.tokens, r.text, r.avg_logprob) for r in want]


def test_load_overwrites_in_place_and_checks_the_batch(tiny):
    adapters = adml.stack_adapters(tiny_adapters(tiny), tiny)
    with adml.swapped(tiny, adml.multi_lora_modules(tiny, adapters)), torch.inference_mode():
        streams = adml.BatchedStreams(tiny, adapters.k, tiny_features(U=2, seed=1))
        k0 = streams.cross_kv[0].k0
        streams.load(tiny_features(U=2, seed=2))
        fresh = adml.BatchedStreams(tiny, adapters.k, tiny_features(U=2, seed=2))
        assert streams.cross_kv[0].k0 is k0 and torch.equal(k0, fresh.cross_kv[0].k0)
        assert torch.equal(streams.cross_kv[-1].pv, fresh.cross_kv[-1].pv)
        with pytest.raises(ValueError, match="1 windows, but these streams hold 2"):
            streams.load(tiny_features(U=1, seed=3))
