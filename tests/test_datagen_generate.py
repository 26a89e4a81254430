"""`generate` end to end against fake LLM and TTS servers on loopback.

What must hold after any run, however rough: the manifest has exactly the
requested count, no text twice, every listed audio file whole and of the
stated duration, no unlisted or temporary file left in audio/.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from datagen import generate
from datagen.clean import normalise
from test_datagen_fakes import _WHO, FakeLLM, FakeTTS

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ["ok", "slow", "ok", "500", "ok", "429", "garbage", "ok", "drop", "refuse", "ok", "ok"]


def argv(llm, tts, out, count, *extra):
    return ["--domain", "music", "--count", str(count), "--out", str(out), "--llm-url", llm.url,
            "--tts", "http:test", "--tts-url", tts.url, "--llm-timeout", "0.5", "--backoff", "0.01",
            "--texts-per-instruction", "6", "--progress-every", "0.2", "--format", "wav", *extra]


def parse(args):
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    return parser.parse_args(args)


def check_output(out: Path, count: int):
    lines = (out / "manifest.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == count
    assert len({normalise(r["text"]) for r in rows}) == count, "duplicate texts"
    assert len({r["audio"] for r in rows}) == count, "duplicate audio paths"
    for r in rows:
        assert set(r) == {"audio", "text", "duration", "domain", "voice", "instruction"}
        info = sf.info(out / r["audio"])
        assert info.samplerate == 16000 and info.channels == 1
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(Path(r["audio"]).name for r in rows)
    return rows


def test_generate_reaches_count_through_llm_and_tts_faults(tmp_path, capsys):
    llm, tts = FakeLLM(lambda i: FAULTS[i % len(FAULTS)], slow_seconds=1.0), FakeTTS(fail_word="violin")
    try:
        code = generate.main(parse(argv(llm, tts, tmp_path, 30, "--workers", "3")))
    finally:
        llm.close(), tts.close()
    assert code == 0
    rows = check_output(tmp_path, 30)
    assert all(r["domain"] == "music" and r["voice"] == "http:test" for r in rows)
    assert not any("violin" in r["text"] for r in rows)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["reason"].split(":")[0] for r in rejects}
    assert {"preamble", "duplicate", "tts_failed"} <= reasons
    err = capsys.readouterr().err
    assert "30/30 items" in err and "items/min" in err


def test_unreachable_llm_ends_with_clear_error(tmp_path, capsys):
    tts = FakeTTS()
    try:
        args = argv(FakeLLM(), tts, tmp_path, 5, "--retries", "1")
        args[args.index("--llm-url") + 1] = "http://127.0.0.1:9/v1"
        assert generate.main(parse(args)) == 1
    finally:
        tts.close()
    assert "LLM server unreachable" in capsys.readouterr().err


def test_unknown_domain_and_engine_are_clear_errors(tmp_path, capsys):
    assert generate.main(parse(["--domain", "cooking", "--out", str(tmp_path)])) == 2
    assert "shipped domains" in capsys.readouterr().err
    assert generate.main(parse(["--domain", "music", "--out", str(tmp_path), "--tts", "nope:x"])) == 1
    assert "unknown TTS engine" in capsys.readouterr().err
    assert generate.main(parse(["--domain", "music", "--out", str(tmp_path / "x"), "--llm-url", " , "])) == 2
    assert "--llm-url: no LLM server URL given" in capsys.readouterr().err and not (tmp_path / "x").exists()


def generate_from_spec(tmp_path: Path, spec: Path, llm: FakeLLM, count: int = 4) -> list[dict]:
    """`generate --domain SPEC` against `llm` and a fake TTS; the checked manifest rows."""
    tts = FakeTTS()
    try:
        args = argv(llm, tts, tmp_path / "out", count)
        args[args.index("--domain") + 1] = str(spec)
        assert generate.main(parse(args)) == 0
    finally:
        llm.close(), tts.close()
    return check_output(tmp_path / "out", count)


def test_custom_domain_spec_path(tmp_path):
    spec = tmp_path / "cooking.json"
    spec.write_text(json.dumps({"name": "cooking", "usecase": ["question generation"], "skills": ["baking"],
                                "persona": ["chef"], "instruction": ["generate chatbot questions about cooking"]}))
    assert {r["domain"] for r in generate_from_spec(tmp_path, spec, FakeLLM())} == {"cooking"}


def test_resume_after_kill_9(tmp_path):
    llm, tts = FakeLLM(lambda i: FAULTS[i % len(FAULTS)], slow_seconds=1.0), FakeTTS(delay=0.05)
    cmd = [sys.executable, "-m", "datagen.generate", *argv(llm, tts, tmp_path, 40, "--workers", "2")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    manifest = tmp_path / "manifest.jsonl"
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if manifest.exists() and len(manifest.read_bytes().splitlines()) >= 12:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "run ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        killed_at = len(manifest.read_bytes().splitlines())
        assert 12 <= killed_at < 40
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        llm.close(), tts.close()
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    check_output(tmp_path, 40)
    assert not any(p.suffix == ".tmp" for p in tmp_path.rglob("*"))


def test_store_repairs_what_a_kill_leaves(tmp_path):
    from datagen.store import Store
    audio = tmp_path / "audio"
    audio.mkdir()
    good = {"audio": "audio/a.wav", "text": "Who is Adele?", "duration": 1.0, "domain": "music",
            "voice": "v", "instruction": "i"}
    sf.write(audio / "a.wav", [0.1] * 16000, 16000)
    (audio / "b.wav").write_bytes(b"whole file whose manifest line never got written")
    (audio / "c.wav.tmp").write_bytes(b"half a fi")
    (tmp_path / "manifest.jsonl").write_text(json.dumps(good) + "\n" + '{"audio": "audio/b.wav", "te')
    store = Store(tmp_path, 5, "music", "wav")
    store.close()
    assert [p.name for p in audio.iterdir()] == ["a.wav"]
    assert (tmp_path / "manifest.jsonl").read_text() == json.dumps(good) + "\n"
    assert store.reserve("who is ADELE") == "duplicate" and store.reserve("Who is Queen?") is None


class PromptLLM(FakeLLM):
    """Answers phase 2 with what a phone system says: statements, not requests."""

    def answer(self, body) -> str:
        prompt = body["messages"][-1]["content"]
        m = re.search(r"Generate (\d+) ", prompt)
        if prompt.startswith(("Domain:", "Base instruction")) or not m:
            return super().answer(body)
        self.prompts.append(body["messages"])
        with self.counter_lock:
            ks = [next(self.counter) for _ in range(int(m[1]))]
        return "\n".join(f"Please hold, caller number {k} of the {_WHO[k % len(_WHO)]} queue." for k in ks)


def test_a_domain_style_asks_for_its_texts_and_keeps_statements(tmp_path):
    spec = tmp_path / "phone.json"
    style = "recorded prompts that a phone system plays to a caller"
    spec.write_text(json.dumps({"name": "phone", "style": style, "usecase": ["prompt writing"], "skills": ["queues"],
                                "persona": ["call centre"], "instruction": ["write what a phone system says"]}))
    assert generate.load_spec(str(spec)).style == style and generate.load_spec("music").style is None
    llm = PromptLLM()
    llm.prompts = []
    rows = generate_from_spec(tmp_path, spec, llm)
    assert all(r["text"].startswith("Please hold") for r in rows)  # statements kept: the spec's style
    system, user = llm.prompts[0]
    asked = user["content"].split("\n", 1)[1]  # after phase 1b's instruction (the fake's, about Adele)
    assert style in asked and "voice assistant" not in system["content"] + asked
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "style": " "}))
    try:
        generate.load_spec(str(spec))
        raise AssertionError("an empty style loaded")
    except ValueError as e:
        assert "'style' must be a non-empty string" in str(e)


def test_without_a_style_the_prompts_are_the_voice_assistant_ones():
    """The shipped domains have no style: their prompts are word for word what they always were."""
    from datagen import prompts

    seed = {"usecase": "trivia", "skills": "jazz", "persona": "radio DJ", "instruction": "ask about jazz"}
    system = {"role": "system", "content": "You are a helpful assistant that writes realistic data for a voice assistant."}
    assert prompts.instruction_messages("music", seed, "Miles Davis", "Ask.") == [system, {"role": "user", "content": (
        "Base instruction: ask about jazz. Rewrite it as one specific instruction that asks for questions about "
        "music, mentioning Miles Davis, written for a radio DJ. Answer with the instruction only. Example: Ask.")}]
    assert prompts.texts_messages("music", "Ask.", "Miles Davis", 3, "Who?") == [system, {"role": "user", "content": (
        "Ask.\nGenerate 3 chatbot questions or requests related to music about Miles Davis, as a user would say "
        "them to a voice assistant. One per line, in English, no answers. Example: Who?")}]
