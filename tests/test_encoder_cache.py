"""training/encoder_cache.py: the cached training features are what transcribe feeds the encoder."""
import numpy as np
import soundfile as sf
import torch

import whisper_min
from training.encoder_cache import load_mel
from whisper_min.model import ModelDimensions, Whisper

DIMS = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                       n_vocab=51864, n_text_ctx=64, n_text_state=32, n_text_head=2, n_text_layer=2)


def test_load_mel_is_transcribes_first_window(tmp_path):
    audio = (np.random.RandomState(0).randn(16000 * 3) * 0.1).astype("float32")
    sf.write(tmp_path / "a.wav", audio, 16000)
    seen = []

    def spy(model, mel, tokenizer, options=None, audio_features=None):
        seen.append(mel)
        raise StopIteration  # one window is all this test needs

    model = Whisper(DIMS)
    tok = whisper_min.get_tokenizer("tiny.en")
    try:
        whisper_min.transcribe(model, whisper_min.load_audio(str(tmp_path / "a.wav")), tok, decode_fn=spy)
    except StopIteration:
        pass
    assert torch.equal(seen[0], load_mel(tmp_path / "a.wav", 80))
    # The padding frames are zeros, as transcribe's pad_or_trim makes them, not the log-mel of silence.
    assert (seen[0][:, 301:] == 0).all()
