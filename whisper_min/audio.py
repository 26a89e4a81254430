"""Audio in: read a file, resample it to 16 kHz mono, and turn it into Whisper's log-mel.

Whisper hears 30 s windows (N_SAMPLES) of 16 kHz audio as a log-mel spectrogram with a
25 ms Hann window (N_FFT = 400) every 10 ms (HOP_LENGTH = 160): 3000 frames per window.
"""

import math
import os
from functools import lru_cache

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


class AudioError(ValueError):
    """An audio file that cannot be transcribed; the message names the file and why."""


def resample(audio: np.ndarray, orig_sr: int, new_sr: int, zeros: int = 16, rolloff: float = 0.945) -> np.ndarray:
    """Band-limited resampling with a Hann-windowed sinc, evaluated polyphase.

    With L/M = new_sr/orig_sr in lowest terms, output sample n sits at input time n*M/L.
    Its value is a sum over input samples of sinc(cutoff * (t - k)) under a window of
    `zeros` zero crossings each side. The fractional offset of n*M/L repeats every L
    outputs, so there are only L distinct filters (the phases); each is a strided conv1d.
    The cutoff sits below the lower Nyquist frequency (times `rolloff`) so that
    downsampling does not alias.
    """
    if orig_sr == new_sr:
        return audio.astype(np.float32)
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g  # L, M
    cutoff = min(1.0, up / down) * rolloff  # in cycles per input sample * 2
    width = math.ceil(zeros / cutoff)  # filter half-width in input samples
    # Input offsets k - floor(t) covered by each filter, and each phase's fractional start.
    k = torch.arange(-width, width + down, dtype=torch.float64)  # (K,)
    phase = -torch.arange(up, dtype=torch.float64)[:, None] * down / up  # (L, 1)
    t = (k[None, :] + phase) * cutoff  # (L, K) distance in units of the sinc's zero crossings
    window = torch.where(t.abs() <= zeros, torch.cos(t * math.pi / (2 * zeros)) ** 2, 0.0)
    kernels = (torch.special.sinc(t) * window * cutoff).to(torch.float32)  # (L, K)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None]  # (1, 1, N)
    x = F.pad(x, (width, width + down))
    y = F.conv1d(x, kernels[:, None, :], stride=down)  # (1, L, frames): phase p makes outputs p, p+L, ...
    y = y[0].T.reshape(-1)  # interleave phases: (frames * L,)
    n_out = math.ceil(len(audio) * up / down)
    return y[:n_out].numpy()


def load_audio(path: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Any file soundfile reads -> float32 mono at `sr`. Errors name the file and problem."""
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        msg = str(e).split(":")[-1].strip() or "unreadable"
        raise AudioError(f"{path}: not a readable audio file ({msg})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: the audio contains NaN or infinite samples")
    audio = data.mean(axis=1)  # downmix: channels carry the same speech
    return resample(audio, file_sr, sr)


def pad_or_trim(array: torch.Tensor, length: int = N_SAMPLES, axis: int = -1) -> torch.Tensor:
    if array.shape[axis] > length:
        return array.narrow(axis, 0, length)
    if array.shape[axis] < length:
        pad = [0, 0] * array.ndim
        pad[(array.ndim - 1 - axis % array.ndim) * 2 + 1] = length - array.shape[axis]
        return F.pad(array, pad)
    return array


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mels = f / (200.0 / 3)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), m * (200.0 / 3))


@lru_cache(maxsize=None)
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """Triangular mel filterbank (n_mels, n_fft // 2 + 1) with Slaney area normalisation,
    the one librosa builds and Whisper was trained with."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))  # band edges
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # equal area per filter
    return torch.from_numpy(weights.astype(np.float32))


def log_mel_spectrogram(audio, n_mels: int = 80, padding: int = 0, device=None) -> torch.Tensor:
    """audio (samples,) at 16 kHz -> log-mel (n_mels, frames), Whisper's scaling: log10,
    floored 8 (80 dB) below the maximum, then mapped to about [-1, 1]."""
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if device is not None:
        audio = audio.to(device)
    if padding > 0:
        audio = F.pad(audio, (0, padding))
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # drop the last frame, as Whisper does: (n_freqs, frames)
    mel = mel_filters(n_mels).to(audio.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
