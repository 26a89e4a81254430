"""Shared fixtures: the embedded models, real speech from pocketsphinx-testdata, and TTS
clips made on the fly with espeak-ng (installed by tests/setup.sh)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import whisper_min

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")

# Sentences in the style of the paper's Table I, spoken by espeak-ng for TTS tests.
TTS_SENTENCES = [
    "What musical movement did the Beatles define in the sixties?",
    "What's the current temperature outside right now?",
    "Which team did Tom Brady lead to victory in the Super Bowl?",
]


def _read_transcripts(folder: Path, transcript_file: str) -> dict[str, str]:
    """pocketsphinx transcripts look like '<s> ten of clubs </s> (001)'."""
    out = {}
    for line in (folder / transcript_file).read_text().splitlines():
        text, _, utt = line.rpartition("(")
        out[utt.rstrip(")").strip()] = text.replace("<s>", "").replace("</s>", "").strip()
    return out


@pytest.fixture(scope="session")
def real_clips() -> list[tuple[Path, str]]:
    """(wav, reference transcript) for the 5 LibriVox and 5 'cards' utterances."""
    if not POCKETSPHINX.is_dir():
        pytest.fail(f"{POCKETSPHINX} is missing: run `bash tests/setup.sh` (installs pocketsphinx-testdata)")
    clips = []
    for sub, tfile in (("librivox", "transcription"), ("cards", "cards.transcription")):
        refs = _read_transcripts(POCKETSPHINX / sub, tfile)
        for wav in sorted((POCKETSPHINX / sub).glob("*.wav")):
            clips.append((wav, refs[wav.stem]))
    return clips


@pytest.fixture(scope="session")
def tts_clips(tmp_path_factory) -> list[tuple[Path, str]]:
    """espeak-ng speech at its native 22.05 kHz, so loading also exercises resampling."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `bash tests/setup.sh`")
    folder = tmp_path_factory.mktemp("tts")
    clips = []
    for i, text in enumerate(TTS_SENTENCES):
        wav = folder / f"tts{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
        clips.append((wav, text))
    return clips


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests, which ask for it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`: on a loaded two-core machine two
    OpenMP threads fighting over small ops and SVDs run far slower, not faster."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def base_model():
    torch.set_num_threads(2)
    return whisper_min.load_model("base")


@pytest.fixture(scope="session")
def tiny_model():
    return whisper_min.load_model("tiny.en")


@pytest.fixture(scope="session")
def base_tokenizer():
    return whisper_min.get_tokenizer("base")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return whisper_min.get_tokenizer("tiny.en")
