"""Long-form transcription: slide a 30 s window over the audio, seeking by timestamps.

Each window is decoded with timestamps; the consecutive timestamp pairs cut it into
segments. The next window starts at the last complete segment's end, so speech cut off at
a window's edge is decoded again whole in the next window. A window that is probably
silence (high no-speech probability and low confidence) is skipped, which is what keeps
Whisper from hallucinating text on silence. When a window's text looks degenerate
(repetitive, or unlikely), it is decoded again at a higher temperature.
"""

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from .decoding import DecodingOptions, DecodingResult, decode
from .model import Whisper
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class TranscribeOptions:
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fallback ladder
    compression_ratio_threshold: float | None = 2.4  # above: repetitive text, retry hotter
    logprob_threshold: float | None = -1.0  # below: unlikely text, retry hotter
    no_speech_threshold: float | None = 0.6  # above (and unlikely text): skip as silence
    silence_peak: float = 1e-4  # a window whose loudest sample is below this is silence


def decode_with_fallback(model, mel, tokenizer, options: DecodingOptions, topts: TranscribeOptions,
                         decode_fn: Callable) -> DecodingResult:
    for i, t in enumerate(topts.temperatures):
        torch.manual_seed(i)  # sampled retries are reproducible
        result = decode_fn(model, mel, tokenizer, replace(options, temperature=t))[0]
        too_repetitive = (topts.compression_ratio_threshold is not None
                          and result.compression_ratio > topts.compression_ratio_threshold)
        too_unlikely = topts.logprob_threshold is not None and result.avg_logprob < topts.logprob_threshold
        silent = topts.no_speech_threshold is not None and result.no_speech_prob > topts.no_speech_threshold
        if silent or not (too_repetitive or too_unlikely):
            break
    return result


def transcribe(model: Whisper, audio: np.ndarray, tokenizer: Tokenizer,
               options: DecodingOptions = DecodingOptions(), topts: TranscribeOptions = TranscribeOptions(),
               decode_fn: Callable = decode) -> dict:
    """16 kHz mono audio of any length -> {"text", "segments": [{"start", "end", "text", ...}]}.

    `decode_fn` decodes one window; ADML passes its multi-adapter decoder here.
    """
    audio = torch.as_tensor(audio, dtype=torch.float32)
    mel = log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)  # 30 s of zeros after the end
    n_content = mel.shape[-1] - N_FRAMES
    frames_per_token = N_FRAMES // model.dims.n_audio_ctx  # a timestamp step (20 ms) is 2 frames
    tb = tokenizer.timestamp_begin
    segments, stream_tokens = [], None
    seek = 0
    while seek < n_content:
        size = min(N_FRAMES, n_content - seek)
        offset = seek / FRAMES_PER_SECOND
        window = audio[seek * HOP_LENGTH : (seek + size) * HOP_LENGTH]
        if window.numel() == 0 or window.abs().max() < topts.silence_peak:
            seek += size  # digital silence: nothing to say, and nothing to hallucinate
            continue
        segment_mel = pad_or_trim(mel[:, seek : seek + size], N_FRAMES)
        result = decode_with_fallback(model, segment_mel, tokenizer, options, topts, decode_fn)
        if result.stream_tokens is not None:
            stream_tokens = [a + b for a, b in zip(stream_tokens or [0] * len(result.stream_tokens),
                                                   result.stream_tokens)]
        if topts.no_speech_threshold is not None and result.no_speech_prob > topts.no_speech_threshold:
            if topts.logprob_threshold is None or result.avg_logprob < topts.logprob_threshold:
                seek += size
                continue
        tokens = result.tokens
        if options.without_timestamps:
            segments.append(_segment(tokenizer, offset, offset + size / FRAMES_PER_SECOND, tokens))
            seek += size
            continue
        is_ts = [t >= tb for t in tokens]
        # Consecutive timestamps (<|end|><|start|>) are segment boundaries.
        cuts = [i for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]
        single_ending = is_ts[-2:] == [False, True]
        if cuts:
            if single_ending:
                cuts.append(len(tokens))
            last = 0
            for cut in cuts:
                piece = tokens[last:cut]
                segments.append(_segment(tokenizer, offset + (piece[0] - tb) * 0.02, offset + (piece[-1] - tb) * 0.02,
                                         piece))
                last = cut
            if single_ending:  # the window ended mid-silence: the whole window is done
                seek += size
            else:  # resume at the last complete segment's end (never stand still)
                seek += (tokens[last - 1] - tb) * frames_per_token or size
        else:
            duration = size / FRAMES_PER_SECOND
            stamps = [t for t in tokens if t >= tb]
            if stamps and stamps[-1] != tb:
                duration = (stamps[-1] - tb) * 0.02
            segments.append(_segment(tokenizer, offset, offset + duration, tokens))
            seek += size
    # Punctuation alone (". . . .") is what the model says over faint noise: not speech.
    segments = [s for s in segments if any(c.isalnum() for c in s["text"])]
    return {"text": " ".join(s["text"] for s in segments), "segments": segments,
            "duration": len(audio) / SAMPLE_RATE, "stream_tokens": stream_tokens}


def _segment(tokenizer: Tokenizer, start: float, end: float, tokens: list[int]) -> dict:
    text = tokenizer.decode(tokens).strip()
    return {"start": round(start, 2), "end": round(end, 2), "text": text,
            "tokens": [t for t in tokens if t < tokenizer.eot]}
