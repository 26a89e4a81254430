"""whisper_min against the reference implementation (openai-whisper), on the same
converted weights, on real speech (pocketsphinx-testdata) and TTS speech (espeak-ng).

Tolerance: decoder logits agree to 2e-3 absolute (fp32; logits range about +-30, and the two
implementations differ only in where q/k are scaled before attention and in the order
of float additions). Greedy token ids and text must be identical.
"""

import dataclasses

import pytest
import torch

from whisper_min import DecodingOptions, decode, load_audio, log_mel_spectrogram, pad_or_trim

LOGITS_ATOL = 2e-3


def reference_model(model):
    whisper = pytest.importorskip("whisper", reason="run `bash tests/setup.sh` to install openai-whisper")
    ref = whisper.model.Whisper(whisper.model.ModelDimensions(**dataclasses.asdict(model.dims)))
    ref.load_state_dict(model.state_dict())
    return ref.eval()


@pytest.fixture(scope="module", params=["base", "tiny.en"])
def pair(request, base_model, tiny_model, base_tokenizer, tiny_tokenizer):
    model, tokenizer = (base_model, base_tokenizer) if request.param == "base" else (tiny_model, tiny_tokenizer)
    return model, reference_model(model), tokenizer


def windows(clips):
    for path, _ in clips:
        yield path, log_mel_spectrogram(pad_or_trim(torch.from_numpy(load_audio(path))))


@pytest.mark.slow
def test_greedy_tokens_and_text_identical(pair, real_clips, tts_clips):
    import whisper

    model, ref, tokenizer = pair
    for path, mel in windows(real_clips + tts_clips):
        ours = decode(model, mel, tokenizer, DecodingOptions(language="en", without_timestamps=True))[0]
        theirs = whisper.decode(ref, mel, whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False))
        assert ours.tokens == theirs.tokens, path
        assert ours.text == theirs.text, path


@pytest.mark.slow
def test_timestamped_tokens_identical(pair, real_clips):
    import whisper

    model, ref, tokenizer = pair
    for path, mel in list(windows(real_clips))[::3]:
        ours = decode(model, mel, tokenizer, DecodingOptions(language="en"))[0]
        theirs = whisper.decode(ref, mel, whisper.DecodingOptions(language="en", fp16=False))
        assert ours.tokens == theirs.tokens, path


def test_decoder_logits_allclose(pair, real_clips, tts_clips):
    import whisper

    model, ref, tokenizer = pair
    for path, mel in list(windows(real_clips[:2] + tts_clips[:1])):
        with torch.no_grad():
            af, ref_af = model.embed_audio(mel[None]), ref.embed_audio(mel[None])
            assert (af - ref_af).abs().max() < 1e-3, path
            # teacher-force the reference's own transcript, so every position is compared
            result = whisper.decode(ref, mel, whisper.DecodingOptions(language="en", without_timestamps=True,
                                                                       fp16=False))
            start = list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
            tokens = torch.tensor([start + result.tokens])
            ours, theirs = model.logits(tokens, af), ref.logits(tokens, ref_af)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() < LOGITS_ATOL, path
