"""`generate` against the real local LLM (SmolLM2-135M via llama-cpp-python) and
real TTS engines (espeak-ng and flite). Marker `llm`: needs bench/llm_server.sh,
which installs llama-cpp-python on first use (~10 minutes to build on 2 cores).

If the server cannot start, the tests fail with its log: a skipped integration
test would hide a broken demo.
"""
import argparse
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from datagen import generate
from datagen.clean import normalise
from datagen.verbalise import verbalise

pytestmark = pytest.mark.llm

ROOT = Path(__file__).resolve().parents[1]
COUNT = 30
VOICES = "espeak-ng:en-us,flite:slt"


def free_port() -> str:
    """A loopback port nobody listens on now: a study's server may hold the default 8012."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm")
    port = os.environ.get("DAS_TEST_LLM_PORT") or free_port()
    env = {**os.environ, "PORT": port, "PIDFILE": str(tmp / "server.pid"), "LOG": str(tmp / "server.log")}
    script = ["bash", str(ROOT / "bench" / "llm_server.sh")]
    try:
        started = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        pytest.fail("bench/llm_server.sh start took over 30 minutes (install or start-up hung)")
    if started.returncode != 0:
        pytest.fail(f"could not start the local LLM server (bench/llm_server.sh start, exit "
                    f"{started.returncode}):\n{started.stderr[-3000:]}")
    yield f"http://127.0.0.1:{port}/v1"
    subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def music(llm_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("music")
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    args = parser.parse_args(["--domain", "music", "--count", str(COUNT), "--out", str(out),
                              "--llm-url", llm_url, "--tts", VOICES, "--workers", "2",
                              "--max-idle-jobs", "40", "--progress-every", "15"])
    assert generate.main(args) == 0, "generate did not reach the requested count"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return out, rows


def test_music_manifest_and_audio(music):
    out, rows = music
    assert len(rows) == COUNT
    assert len({normalise(r["text"]) for r in rows}) == COUNT
    assert {r["voice"] for r in rows} == set(VOICES.split(","))  # both engines were used
    for r in rows:
        assert r["domain"] == "music" and r["instruction"] and r["text"]
        info = sf.info(out / r["audio"])
        assert info.samplerate == 16000 and info.channels == 1
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
        # Speech runs at 2-4 words a second; far outside that means cut or padded audio.
        words = len(verbalise(r["text"]).split())
        assert 0.15 * words < r["duration"] < 1.0 * words + 1.5, (r["text"], r["duration"])
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(Path(r["audio"]).name for r in rows)


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance in words, reference length) after verbalising both sides."""
    def words(s):
        return re.sub(r"[^a-z' ]", " ", verbalise(s).lower()).split()
    r, h = words(ref), words(hyp)
    row = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(h) + 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
    return row[-1], len(r)


MAX_WER = 0.35  # espeak-ng/flite are robotic; Whisper base still gets most words


def test_music_audio_is_intelligible(music):
    # Imported here: whisper_min is the project's own Whisper and may be absent
    # while the data generator is developed; only this test needs it.
    from whisper_min import get_tokenizer, load_audio, load_model, transcribe

    out, rows = music
    name = os.environ.get("DAS_WHISPER_MODEL", "base")
    model, tokenizer = load_model(name), get_tokenizer(name)
    errors = total = 0
    per_voice = {}
    for r in rows:
        result = transcribe(model, load_audio(str(out / r["audio"])), tokenizer)
        hyp = result["text"] if isinstance(result, dict) else str(result)
        e, n = word_errors(r["text"], hyp)
        errors, total = errors + e, total + n
        ve, vn = per_voice.get(r["voice"], (0, 0))
        per_voice[r["voice"]] = (ve + e, vn + n)
    wer = errors / total
    print(f"WER {wer:.3f} over {len(rows)} utterances; per voice: "
          + ", ".join(f"{v} {e / n:.3f}" for v, (e, n) in per_voice.items()))
    assert wer < MAX_WER
