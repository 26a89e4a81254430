"""bench/memo.py: the study's memos change nothing but the cost. The encoder memo gives
bit-identical decodes and runs the encoder once per window; routing from the stream memo at
any τ equals a fresh routed decode, with each window decoded once. Tiny random Whispers."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import adml
import whisper_min
from decoders.route import decode_routed
from whisper_min.decoding import DecodingOptions, decode
from whisper_min.model import ModelDimensions, Whisper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from memo import EncoderMemo, StreamMemo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: tests/conftest.py

OPTIONS = DecodingOptions(sample_len=12)


def tiny_decoder_model() -> Whisper:
    """A decoder for 12 audio frames of width 64: routing's streams, fed made-up encoder output."""
    torch.manual_seed(0)
    model = Whisper(ModelDimensions(n_mels=80, n_audio_ctx=12, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
                                    n_vocab=51865, n_text_ctx=48, n_text_state=64, n_text_head=4,
                                    n_text_layer=2)).eval()
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.1)
    return model


def random_adapters(model, ranks=(4, 8, 16)) -> list:
    """Adapters with random deltas on every attention projection, large enough (|B A| about
    the input's norm) that the streams really disagree on this random model."""
    g, adapters = torch.Generator().manual_seed(10), []
    for i, rank in enumerate(ranks):
        deltas = {}
        for b, _ in enumerate(model.decoder.blocks):
            for t in (f"{side}.{proj}" for side in ("attn", "cross_attn") for proj in ("query", "key", "value", "out")):
                lin = model.get_submodule(f"decoder.blocks.{b}.{t}")
                A = torch.randn(rank, lin.in_features, generator=g) / math.sqrt(lin.in_features)
                B = torch.randn(lin.out_features, rank, generator=g) / math.sqrt(rank)
                deltas[f"decoder.blocks.{b}.{t}"] = (A, B)
        adapters.append(SimpleNamespace(name=f"random{i}", deltas=deltas))
    return adapters


def test_stream_memo_routes_one_decode_at_every_tau():
    """A τ sweep decodes each window once: the memo's routes equal a fresh decode's at every τ."""
    model, tokenizer = tiny_decoder_model(), whisper_min.get_tokenizer("base")
    audio = torch.randn(6, 12, 64, generator=torch.Generator().manual_seed(3))  # encoder output (U, frames, D)
    stack = adml.stack_adapters(random_adapters(model), model)
    memo = StreamMemo(stack)
    mel = torch.randn(6, 80, 20, generator=torch.Generator().manual_seed(1))  # only the memo's key
    for tau in (0.0, 0.05, 1e9, 0.0):
        got = memo.decoder(tau)(model, mel, tokenizer, OPTIONS, audio_features=audio)
        want = decode_routed(model, None, tokenizer, OPTIONS, audio, stack, tau)
        assert [(r.tokens, r.text, r.stream_tokens) for r in got] == [(r.tokens, r.text, r.stream_tokens) for r in want]
    assert memo.decodes == 1
    assert all(r.stream_tokens is None for s in next(iter(memo.results.values())) for r in s)  # routing copies
    memo.decoder(0.0)(model, mel + 1, tokenizer, OPTIONS, audio_features=audio)  # another window decodes
    assert memo.decodes == 2


def test_encoder_memo_is_bit_identical_and_runs_the_encoder_once(tmp_path):
    torch.manual_seed(0)
    model = Whisper(ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                                    n_vocab=51864, n_text_ctx=64, n_text_state=32, n_text_head=2,
                                    n_text_layer=2)).eval()
    tokenizer = whisper_min.get_tokenizer("tiny.en")
    mel = torch.randn(2, 80, 3000)
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=8)
    with torch.inference_mode():
        plain = decode(model, mel, tokenizer, options)
        model.embed_audio = memo = EncoderMemo(model, tmp_path)
        first, second = decode(model, mel, tokenizer, options), decode(model, mel, tokenizer, options)
        other = EncoderMemo(model, tmp_path)  # a new process finds the files
        third = other(mel)
    assert [r.tokens for r in plain] == [r.tokens for r in first] == [r.tokens for r in second]
    assert (memo.misses, memo.hits) == (2, 2) and other.hits == 2
    torch.testing.assert_close(third, memo.embed(mel), rtol=0, atol=0)
