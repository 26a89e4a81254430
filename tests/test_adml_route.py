"""Routing (adml_route.py): each utterance's transcript is one stream's whole decode. Checked
against the streams decoded one by one here (the base plainly, each adapter merged in by
adml_reference), on a tiny random Whisper."""

import copy

import pytest
import torch

import adml
import adml_reference
import adml_route
import lora
from test_adml import OPTIONS, one_thread, tiny, tiny_adapters, tiny_features, tokenizer  # noqa: F401 (fixtures)
from whisper_min.decoding import decode


def each_stream(model, tokenizer, audio, adapters):
    """Every stream's plain greedy decode, base first: [[result per utterance] per stream]."""
    out = [decode(model, None, tokenizer, OPTIONS, audio_features=audio)]
    for a in adapters:
        with adml.swapped(model, adml_reference.one_adapter_modules(model, a.deltas, merged=True)):
            out.append(decode(model, None, tokenizer, OPTIONS, audio_features=audio))
    return out


def expected(streams, tau):
    """The stream each utterance should take: the surest adapter if it beats the base by tau."""
    picks = []
    for u in range(len(streams[0])):
        lps = [s[u].avg_logprob for s in streams]
        best = max(range(1, len(lps)), key=lambda i: (lps[i], -i))  # the first adapter wins a tie
        picks.append(best if lps[best] >= lps[0] + tau else 0)
    return picks


def test_each_utterance_takes_the_surest_streams_whole_transcript(tiny, tokenizer):
    adapters = tiny_adapters(tiny)
    audio = tiny_features(U=6, seed=3)
    streams = each_stream(tiny, tokenizer, audio, adapters)
    stack = adml.stack_adapters(adapters, tiny)
    for tau in (0.0, 0.05):
        picks = expected(streams, tau)
        got = adml_route.decode_routed(tiny, None, tokenizer, OPTIONS, audio, stack, tau)
        assert [r.tokens for r in got] == [streams[p][u].tokens for u, p in enumerate(picks)]
        assert [r.stream_tokens.index(max(r.stream_tokens)) if any(r.stream_tokens) else 0 for r in got] == picks
        assert all(sum(r.stream_tokens) == len(r.tokens) for r in got)
    # The random streams exercise every branch: each adapter wins somewhere at tau = 0, and
    # tau = 0.05 gives some of those utterances back to the base.
    assert set(expected(streams, 0.0)) == {0, 1, 2, 3}
    assert expected(streams, 0.05).count(0) > expected(streams, 0.0).count(0)


def test_a_tau_no_adapter_reaches_gives_plain_decoding(tiny, tokenizer):
    adapters = tiny_adapters(tiny)
    audio = tiny_features(U=3)
    got = adml_route.decode_routed(tiny, None, tokenizer, OPTIONS, audio, adml.stack_adapters(adapters, tiny), 1e9)
    plain = decode(tiny, None, tokenizer, OPTIONS, audio_features=audio)
    assert [r.tokens for r in got] == [r.tokens for r in plain]
    assert [r.stream_tokens for r in got] == [[len(r.tokens), 0, 0, 0] for r in plain]


def test_one_adapter_of_a_stack_is_that_adapter(tiny):
    adapters = tiny_adapters(tiny, ranks=(4, 8))  # adapter 0 is zero-padded to rank 8 in the stack
    stack = adml.stack_adapters(adapters, tiny)
    one = adml_route.one_adapter(stack, 0)
    assert one.names == [stack.names[0]] and one.k == 1
    for name, (A, B) in adapters[0].deltas.items():
        A1, B1 = one.deltas[name]
        torch.testing.assert_close(B1[0] @ A1[0], B @ A)


def test_make_decoder_routes_adapter_files_and_select_refuses_route(tiny, tokenizer, tmp_path):
    paths = []
    for i, domain in enumerate(["music", "sports"]):
        trained = copy.deepcopy(tiny)
        lora.add_lora(trained, r=4, generator=torch.Generator().manual_seed(i))
        for layer in lora.lora_layers(trained).values():  # stand-in for training: move off the init
            layer.lora_B.data.normal_(std=0.5, generator=torch.Generator().manual_seed(i))
        paths.append(lora.save_adapter(trained, tmp_path / f"{domain}.st", domain=domain, base_model="tiny-random"))
    audio = tiny_features(U=4, seed=5)
    decode_fn = adml.make_decoder(tiny, [str(p) for p in paths], tau=0.0, strategy="route")
    got = decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=audio)
    adapters = [lora.load_adapter(p, tiny) for p in paths]
    streams = each_stream(tiny, tokenizer, audio, adapters)
    assert [r.tokens for r in got] == [streams[p][u].tokens for u, p in enumerate(expected(streams, 0.0))]
    with pytest.raises(ValueError, match="whole transcripts"):
        adml.select(torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.long), 0.0, "route")
