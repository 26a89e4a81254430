"""Long-form transcription and the `das.py transcribe` command line, bad inputs included."""

import json
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf

import das
from whisper_min import load_audio, transcribe

LONG_SENTENCES = [
    "Play the latest album by Taylor Swift on the living room speaker.",
    "Will it rain in Seattle tomorrow afternoon or should I leave my umbrella at home?",
    "Who won the basketball championship last season and who was the most valuable player?",
    "Set an alarm for seven thirty and tell me the weather forecast for the weekend.",
    "Which guitarist played the famous solo on Hotel California by the Eagles?",
    "How many goals did Lionel Messi score for Barcelona in his best season?",
]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


@pytest.fixture(scope="module")
def long_file(tmp_path_factory, real_clips):
    """> 60 s: LibriVox utterances and espeak-ng sentences with 1 s pauses between them."""
    folder = tmp_path_factory.mktemp("long")
    pieces, texts = [], []
    for i, text in enumerate(LONG_SENTENCES):
        wav = folder / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text], check=True)
        pieces.append(load_audio(wav))
        texts.append(text)
    for path, text in real_clips[:5]:
        pieces.append(load_audio(path))
        texts.append(text)
    gap = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([x for p in pieces for x in (p, gap)])
    assert len(audio) / 16000 > 60
    path = folder / "long.flac"
    sf.write(path, audio, 16000)
    return path, texts


@pytest.mark.slow
def test_long_form_has_every_utterance(long_file, base_model, base_tokenizer):
    path, texts = long_file
    result = transcribe(base_model, load_audio(path), base_tokenizer)
    hyp = set(words(result["text"]))
    for text in texts:
        ref = words(text)
        found = sum(w in hyp for w in ref) / len(ref)
        assert found >= 0.7, f"{text!r} missing from {result['text']!r}"
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts) and result["segments"][-1]["end"] > 55


def run_cli(capsys, *argv):
    try:
        code = das.main(["transcribe", *argv])
    except SystemExit as e:  # argparse rejects bad arguments with exit status 2
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_inputs_each_get_one_line_and_the_rest_still_run(tmp_path, capsys, real_clips):
    good = str(real_clips[0][0])
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really" + bytes(500))
    one = tmp_path / "one.wav"
    sf.write(one, np.array([0.3], dtype=np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    bad = [str(tmp_path / "missing.wav"), str(empty), str(corrupt), str(one), str(nan)]
    code, out, err = run_cli(capsys, "--model", "tiny.en", "--format", "jsonl", *bad, good)
    assert code == 1
    lines = err.strip().splitlines()
    for path in bad:
        assert sum(path in line for line in lines) == 1, (path, err)
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["audio"] for r in rows] == [good]
    assert "dashwood" in rows[0]["text"].lower() and rows[0]["rtf"] > 0 and rows[0]["duration"] == 7.1


@pytest.mark.parametrize("model", ["base", "tiny.en"])
def test_silence_gives_no_text(tmp_path, capsys, model):
    quiet = tmp_path / "silence.wav"
    sf.write(quiet, np.zeros(16000 * 5, dtype=np.float32), 16000)
    hiss = tmp_path / "hiss.wav"  # near-silence: very faint noise is not digital zero
    sf.write(hiss, (np.random.default_rng(0).standard_normal(16000 * 5) * 1e-3).astype(np.float32), 16000)
    code, out, err = run_cli(capsys, "--model", model, "--format", "jsonl", str(quiet), str(hiss))
    assert code == 0
    assert [json.loads(line)["text"] for line in out.strip().splitlines()] == ["", ""]
    assert "no speech" in err


def test_srt_and_vtt(capsys, real_clips):
    path = str(real_clips[1][0])
    code, out, _ = run_cli(capsys, "--model", "tiny.en", "--format", "srt", path)
    assert code == 0 and re.match(r"1\n00:00:00,\d{3} --> 00:00:0\d,\d{3}\n.*young man", out)
    code, out, _ = run_cli(capsys, "--model", "tiny.en", "--format", "vtt", path)
    assert code == 0 and out.startswith("WEBVTT\n\n00:00:00.") and "young man" in out


def test_bad_tau_is_a_clear_error(capsys, real_clips):
    for tau in ("-0.1", "abc", "nan"):
        code, _, err = run_cli(capsys, "--model", "tiny.en", "--tau", tau, str(real_clips[0][0]))
        assert code == 2 and "--tau" in err


def test_bad_end_is_a_clear_error(capsys, real_clips):
    code, _, err = run_cli(capsys, "--model", "tiny.en", "--end", "adapter", str(real_clips[0][0]))
    assert code == 2 and "--end" in err and "'any', 'base'" in err
