"""Routing (decoders/route.py): each utterance's transcript is one stream's whole decode.

The one-pass form (every stream fed its own tokens through adml's batched decoder) is checked
against the streams decoded one by one (decoders/reference.py: the base plainly, each adapter
merged in) at three levels: logits within test_adml's fp32 tolerance, token ids, text.
Then the rule that picks a stream. A tiny random Whisper throughout.
"""

import pytest
import torch

import adml
import decoders
from decoders import reference, route, rules
import lora
from test_adml import (LOGIT_ATOL, LOGIT_RTOL, OPTIONS, merged_logits,  # noqa: F401
                       tiny, tiny_adapters, tiny_features, tokenizer)
from test_decoders import adapter_files
from whisper_min.decoding import decode, initial_tokens

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: tests/conftest.py


def each_stream(model, tokenizer, audio, adapters):
    """Every stream's plain greedy decode, base first: [stream][utterance]."""
    out = [decode(model, None, tokenizer, OPTIONS, audio_features=audio)]
    for a in adapters:
        with adml.swapped(model, reference.one_adapter_modules(model, a.deltas, merged=True)):
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


# ---------------------------------------------------------------------------- the one-pass decode


def test_streams_with_their_own_tokens_give_each_merged_models_logits(tiny, tokenizer):
    """Level 1: after a shared prefill, every stream steps on a different token sequence."""
    adapters = tiny_adapters(tiny)
    audio = tiny_features(U=2)
    S, U = len(adapters) + 1, 2
    start = torch.tensor([initial_tokens(tokenizer, OPTIONS)] * U)  # (U, T0)
    own = torch.randint(0, 50000, (S, U, 4), generator=torch.Generator().manual_seed(7))  # (S, U, 4): per stream
    stack = adml.stack_adapters(adapters, tiny)
    with adml.swapped(tiny, adml.multi_lora_modules(tiny, stack)), torch.no_grad():
        streams = adml.BatchedStreams(tiny, stack.k, audio)
        got = [streams.prefill(start)[0]]  # (S, U, V)
        for t in range(own.shape[2]):
            got.append(streams.step(own[:, :, t].reshape(S * U, 1), start.shape[1] + t))
    got = torch.stack(got, dim=2)  # (S, U, 1 + 4, V)
    for s, a in enumerate([None] + adapters):
        tokens = torch.cat([start, own[s]], dim=1)  # (U, T0 + 4)
        want = merged_logits(tiny, a.deltas if a else {}, audio, tokens)[:, start.shape[1] - 1 :]
        torch.testing.assert_close(got[s], want, atol=LOGIT_ATOL, rtol=LOGIT_RTOL, msg=f"stream {s}")


def test_one_pass_gives_every_streams_plain_decode(tiny, tokenizer):
    """Levels 2 and 3: token ids and text of every stream, against both references."""
    adapters = tiny_adapters(tiny)
    audio = tiny_features(U=6, seed=3)
    want = each_stream(tiny, tokenizer, audio, adapters)
    stack = adml.stack_adapters(adapters, tiny)
    for got in (route.decode_streams(tiny, None, tokenizer, OPTIONS, audio, stack),
                reference.decode_streams_plain(tiny, None, tokenizer, OPTIONS, audio, stack)):
        assert [[r.tokens for r in s] for s in got] == [[r.tokens for r in s] for s in want]
        assert [[r.text for r in s] for s in got] == [[r.text for r in s] for s in want]
        for g, w in zip(got, want):
            assert [r.avg_logprob for r in g] == pytest.approx([r.avg_logprob for r in w], abs=1e-4)
    assert len({tuple(s[0].tokens) for s in want}) > 1, "the streams agree: the test would not test them"


# ---------------------------------------------------------------------------- the rule


def test_each_utterance_takes_the_surest_streams_whole_transcript(tiny, tokenizer):
    adapters = tiny_adapters(tiny)
    audio = tiny_features(U=6, seed=3)
    streams = each_stream(tiny, tokenizer, audio, adapters)
    stack = adml.stack_adapters(adapters, tiny)
    for tau in (0.0, 0.05):
        picks = expected(streams, tau)
        got = route.decode_routed(tiny, None, tokenizer, OPTIONS, audio, stack, tau)
        assert [r.tokens for r in got] == [streams[p][u].tokens for u, p in enumerate(picks)]
        assert [r.stream_tokens for r in got] == \
            [[len(r.tokens) if s == p else 0 for s in range(4)] for r, p in zip(got, picks)]
        assert [r.no_speech_prob for r in got] == pytest.approx([r.no_speech_prob for r in streams[0]], abs=1e-5)
    # The random streams exercise every branch: each adapter wins somewhere at tau = 0, and
    # tau = 0.05 gives some of those utterances back to the base.
    assert set(expected(streams, 0.0)) == {0, 1, 2, 3}
    assert expected(streams, 0.05).count(0) > expected(streams, 0.0).count(0)


def test_a_tau_no_adapter_reaches_gives_plain_decoding(tiny, tokenizer):
    adapters = tiny_adapters(tiny)
    audio = tiny_features(U=3)
    got = route.decode_routed(tiny, None, tokenizer, OPTIONS, audio, adml.stack_adapters(adapters, tiny), 1e9)
    plain = decode(tiny, None, tokenizer, OPTIONS, audio_features=audio)
    assert [r.tokens for r in got] == [r.tokens for r in plain]
    assert [r.stream_tokens for r in got] == [[len(r.tokens), 0, 0, 0] for r in plain]


def test_one_adapter_of_a_stack_is_that_adapter(tiny):
    adapters = tiny_adapters(tiny, ranks=(4, 8))  # adapter 0 is zero-padded to rank 8 in the stack
    stack = adml.stack_adapters(adapters, tiny)
    one = reference.one_adapter(stack, 0)
    assert one.names == [stack.names[0]] and one.k == 1
    for name, (A, B) in adapters[0].deltas.items():
        A1, B1 = one.deltas[name]
        torch.testing.assert_close(B1[0] @ A1[0], B @ A)


def test_make_decoder_routes_adapter_files_and_select_refuses_route(tiny, tokenizer, tmp_path):
    paths = adapter_files(tiny, tmp_path)
    audio = tiny_features(U=4, seed=5)
    decode_fn = decoders.make_decoder(tiny, [str(p) for p in paths], tau=0.0, strategy="route")
    got = decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=audio)
    adapters = [lora.load_adapter(p, tiny) for p in paths]
    streams = each_stream(tiny, tokenizer, audio, adapters)
    assert [r.tokens for r in got] == [streams[p][u].tokens for u, p in enumerate(expected(streams, 0.0))]
    with pytest.raises(ValueError, match="whole transcripts"):
        rules.select(torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.long), 0.0, "route")
