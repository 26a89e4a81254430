"""whisper_min: a small, self-contained Whisper in PyTorch (see README.md for the file map)."""

import json
from pathlib import Path

import torch

from .audio import load_audio, log_mel_spectrogram, pad_or_trim
from .decoding import DecodingOptions, DecodingResult, decode
from .embedded import resolve_model
from .load import load_model as load_model_dir
from .model import ModelDimensions, Whisper
from .tokenizer import Tokenizer
from .tokenizer import get_tokenizer as _get_tokenizer
from .transcribe import transcribe


def load_model(name: str | Path = "base", device: str | torch.device = "cpu", dtype=torch.float32) -> Whisper:
    """'base', 'tiny.en' or a model directory -> a Whisper in eval mode."""
    model = load_model_dir(resolve_model(name), device=device, dtype=dtype)
    model.name = str(name)
    return model


def get_tokenizer(name: str | Path = "base", language: str | None = "en", task: str = "transcribe") -> Tokenizer:
    model_dir = resolve_model(name)
    n_vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    return _get_tokenizer(model_dir / "tokenizer.json", n_vocab, language, task)


__all__ = ["load_model", "get_tokenizer", "transcribe", "decode", "DecodingOptions", "DecodingResult",
           "load_audio", "log_mel_spectrogram", "pad_or_trim", "Whisper", "ModelDimensions", "Tokenizer",
           "resolve_model"]
