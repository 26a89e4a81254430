"""Integration: the real tiny.en weights, 8 real utterances, trained through `train.main`.

Their reference transcripts are lower case without punctuation, which tiny.en never writes
(it says "Ten of clubs."), so exact greedy transcripts after training show that the adapter
learned them. Decoding goes through the saved file: the original base plus the PiSSA delta.
"""
import argparse
import json
import re
from pathlib import Path

import pytest
import soundfile as sf
import torch

import lora
from training import train
from whisper_min import DecodingOptions, decode, get_tokenizer, load_model
from whisper_min.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: tests/conftest.py

DATA = Path("/usr/share/pocketsphinx/test/data")


def utterances() -> list[dict]:
    rows = []
    for folder, listing, n in (("librivox", "transcription", 5), ("cards", "cards.transcription", 3)):
        for line in (DATA / folder / listing).read_text().splitlines()[:n]:
            text, name = re.match(r"<s> (.*) </s> \((.*)\)", line).groups()
            audio = DATA / folder / f"{name}.wav"
            rows.append({"audio": str(audio), "text": " ".join(text.split()), "duration": sf.info(audio).duration})
    return rows


def transcribe(model, tokenizer, rows) -> list[str]:
    mel = torch.stack([pad_or_trim(log_mel_spectrogram(load_audio(r["audio"]), padding=N_SAMPLES), N_FRAMES)
                       for r in rows])
    return [r.text for r in decode(model, mel, tokenizer, DecodingOptions(without_timestamps=True))]



@pytest.mark.slow  # about a minute on one CPU thread: 10 steps of 8 through tiny.en, 16 greedy decodes
def test_overfitting_8_utterances_makes_their_greedy_transcripts_exact(tmp_path, capsys):
    rows = utterances()
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [r["text"] for r in rows]
    model, tokenizer = load_model("tiny.en"), get_tokenizer("tiny.en")
    before = transcribe(model, tokenizer, rows)
    assert sum(b == t for b, t in zip(before, texts)) <= 1, before  # the task is not already solved

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "books.st"),
                              "--model", "tiny.en", "--batch-size", "8", "--epochs", "10", "--lr", "1e-3",
                              "--cache-dir", str(tmp_path / "cache"), "--progress-every", "0"])
    assert train.main(args) == 0
    losses = [float(m) for m in re.findall(r" loss ([0-9.]+) ", capsys.readouterr().err)]
    assert losses[0] > 0.3 and losses[-1] < 0.02, losses

    lora.apply_adapter(model, lora.load_adapter(tmp_path / "books.st", model))
    assert transcribe(model, tokenizer, rows) == texts
