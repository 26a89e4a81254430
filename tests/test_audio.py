"""Audio loading, band-limited resampling, and the log-mel spectrogram."""

import numpy as np
import pytest
import soundfile as sf
import torch

from whisper_min.audio import AudioError, load_audio, log_mel_spectrogram, mel_filters, resample


def sine(freq, sr, seconds=1.0):
    return np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr).astype(np.float32)


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100, 48000])
def test_resample_keeps_an_in_band_tone(orig_sr):
    y = resample(sine(1000, orig_sr), orig_sr, 16000)
    assert len(y) == 16000
    expected = sine(1000, 16000)
    # away from the edges (where the filter sees zero padding) the tone is exact to 1e-3
    assert np.abs(y[400:-400] - expected[400:-400]).max() < 1e-3


def test_resample_removes_what_would_alias():
    # 12 kHz is above the new Nyquist (8 kHz): linear interpolation would fold it to 4 kHz
    y = resample(sine(12000, 44100), 44100, 16000)
    assert np.abs(y[400:-400]).max() < 1e-3


def test_mel_filters_match_whisper_assets():
    whisper_audio = pytest.importorskip("whisper.audio", reason="run `bash tests/setup.sh`")
    import os
    assets = np.load(os.path.join(os.path.dirname(whisper_audio.__file__), "assets", "mel_filters.npz"))
    for n in (80, 128):
        assert torch.allclose(mel_filters(n), torch.from_numpy(assets[f"mel_{n}"]), atol=1e-7)


def test_log_mel_matches_reference_on_real_audio(real_clips, tts_clips):
    import whisper

    for path, _ in real_clips[:3] + tts_clips:
        audio = load_audio(path)
        for n_mels in (80, 128):
            ours = log_mel_spectrogram(audio, n_mels)
            ref = whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels)
            assert (ours - ref).abs().max() < 1e-4, path


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"),
                                         ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_load_any_format_stereo_any_rate(tmp_path, fmt, subtype):
    sr = 44100
    tone = 0.5 * sine(440, sr)
    stereo = np.stack([tone, tone], axis=1)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, stereo, sr, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == 16000
    tol = 0.05 if subtype in ("PCM_U8", "VORBIS") else 1e-3
    assert np.abs(audio[400:-400] - 0.5 * sine(440, 16000)[400:-400]).max() < tol


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 100)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2] * 1000, dtype=np.float32), 16000, subtype="FLOAT")
    for path, problem in [(tmp_path / "missing.wav", "no such file"), (empty, "empty"),
                          (junk, "not a readable audio file"), (nan, "NaN")]:
        with pytest.raises(AudioError) as e:
            load_audio(path)
        assert str(path) in str(e.value) and problem in str(e.value)
