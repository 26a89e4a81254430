"""bench/reproduce.py's data: the synthetic training, test and validation sets, and the
manifests of real speech; plus the helpers every stage shares (logging, logged subprocesses,
manifest rows). reproduce.py's docstring says what each stage makes.
"""

import gzip
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datagen.clean import normalise  # noqa: E402

DOMAINS = ("music", "weather", "sports")
TRAIN_VOICES = "espeak-ng:en-us,flite:slt,flite:rms,flite:awb,piper:joe"
TEST_VOICES = "festival:kal_diphone,flite:kal16"  # festival is never a training engine
# Out-of-domain validation for the tune stage: "everyday", LLM texts about other topics (the
# assistant style of the training texts), and "fortunes", sentences people wrote
# (fortunes-min), nothing like a request to an assistant. Their voice is a speaker no other
# set uses, on an engine training never uses: adapters learn their training voices, so a set
# spoken by those engines (espeak-ng, say) improves with any adapter and hides forgetting.
OOD_VAL = "everyday"
OOD_VAL_DOMAIN = Path(__file__).resolve().parent / "domains" / "everyday.json"
OOD_VAL_VOICES = "festival:ked_diphone"  # apt install festvox-kdlpc16k
FORTUNES = Path("/usr/share/games/fortunes/fortunes")
OOD_VALS = (OOD_VAL, "fortunes")
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
OOD_SETS = ("librivox", "cards", "asterisk")
# One llama.cpp server per core, 1 thread each: each serves one request at a time, so one
# 2-thread server left the CPU idle between requests (about 21 items a minute here, against
# 30 to 39 from two 1-thread servers; RESULTS.md, eighth pass).
LLM_SERVERS = 2


def log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_logged(cmd: list[str], logfile: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a step as a subprocess, its output appended to `logfile` (in run/logs/); the
    command is kept in run/commands.txt, which the report quotes."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    line = " ".join(shlex.quote(c) for c in cmd)
    with open(logfile.parent.parent / "commands.txt", "a") as f:
        f.write(line + "\n")
    log(f"$ {line}  (log: {logfile})")
    with open(logfile, "a") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def run_logged(cmd: list[str], logfile: Path, env: dict | None = None) -> None:
    """`start_logged` and wait. A failure stops the study (rerun to resume)."""
    code = start_logged(cmd, logfile, env).wait()
    if code != 0:
        raise SystemExit(f"step failed with exit code {code}; see {logfile}. Rerun the same command to resume.")


def claim(lock: Path) -> bool:
    """Take `lock` (a file holding this process's id) so that two processes sharing a stage
    never do the same work twice; False while a live process holds it. A lock left by a
    process that died is taken over, so a crash never blocks a rerun."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
            return claim(lock)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


# ---------------------------------------------------------------- data


def llm_server_up(env: dict) -> bool:
    """Whether bench/llm_server.sh already has a server answering on env's PORT."""
    return subprocess.run(["bash", "bench/llm_server.sh", "status"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def stage_generate(args, run: Path) -> None:
    port = int(os.environ.get("PORT", "8012"))
    jobs = []  # (command without --llm-url, log file)
    for d in DOMAINS:
        for split, count, voices, seed, workers in (("train", args.train_per_domain, TRAIN_VOICES, 0, 2),
                                                    ("test_raw", args.test_per_domain, TEST_VOICES, 1000, 1)):
            out = run / "data" / split / d
            have = len(read_rows(out / "manifest.jsonl"))
            if have >= count:
                continue
            cmd = [sys.executable, "das.py", "generate", "--domain", d, "--count", str(count), "--out", str(out),
                   "--tts", voices, "--workers", str(workers), "--seed", str(seed), "--progress-every", "60"]
            jobs.append((cmd, run / "logs" / f"generate_{split}_{d}.log"))
    out = run / "data" / "val_ood" / OOD_VAL  # the tune stage's out-of-domain validation set
    have = len(read_rows(out / "manifest.jsonl"))
    if have < args.ood_val_count:
        cmd = [sys.executable, "das.py", "generate", "--domain", str(OOD_VAL_DOMAIN), "--count",
               str(args.ood_val_count), "--out", str(out), "--tts", OOD_VAL_VOICES,
               "--workers", "1", "--seed", "2000", "--progress-every", "60"]
        jobs.append((cmd, run / "logs" / f"generate_val_ood_{OOD_VAL}.log"))
    speak_fortunes(args, run)
    urls = [args.llm_url] if args.llm_url else \
        [f"http://127.0.0.1:{port + i}/v1" for i in range(min(LLM_SERVERS, len(jobs)))]
    ours = []  # the LLM servers this stage starts, stopped when it ends (a user's own stay up)
    try:
        if jobs and args.llm_url is None:
            for i in range(len(urls)):
                env = {**os.environ, "PORT": str(port + i), "N_THREADS": "1"}
                if not llm_server_up(env):
                    ours.append(env)
                run_logged(["bash", "bench/llm_server.sh", "start"], run / "logs" / f"llm_server_{port + i}.log", env)
        # All runs at once, each sending every request to the least busy server: the servers
        # stay busy while some runs speak their texts, and until the last run is done.
        procs = [(start_logged([*cmd, "--llm-url", ",".join(urls)], logfile), logfile) for cmd, logfile in jobs]
        failed = [str(lf) for p, lf in procs if p.wait() != 0]
    finally:  # also after a failure or Ctrl-C, so that no idle server keeps its port and memory
        for env in ours:
            run_logged(["bash", "bench/llm_server.sh", "stop"], run / "logs" / f"llm_server_{env['PORT']}.log", env)
    if failed:
        raise SystemExit(f"generation failed; see {', '.join(failed)}. Rerun to resume.")


def fortune_texts(path: Path, count: int) -> list[str]:
    """Short plain sentences from a fortune file (entries split by "%" lines): one line's
    worth (4 to 25 words), letters and punctuation only (nothing a TTS engine reads two
    ways), no attributed quotes. The first `count` in the file's order."""
    texts = []
    for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
        text = " ".join(entry.split())
        if "--" not in text and re.fullmatch(r"[A-Za-z ,.'?!;:-]+", text) and 4 <= len(text.split()) <= 25:
            texts.append(text)
    return texts[:count]


def speak_texts(texts: list[str], out: Path, voices: str, extra: dict | None = None, every: int = 20) -> list[dict]:
    """Speak `texts` into out/audio/ and out/manifest.jsonl, dealing the voices in turn (as
    datagen does). The manifest is written every `every` items, so a rerun resumes there.
    `extra`: fields for every row. Returns the manifest's rows."""
    from datagen.tts import parse_voices, synthesize

    manifest = out / "manifest.jsonl"
    rows = read_rows(manifest)
    dealt = parse_voices(voices)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts[len(rows):], start=len(rows)):
        voice = dealt[i % len(dealt)]
        audio = out / "audio" / f"{i:04d}.flac"
        rows.append({"audio": f"audio/{audio.name}", "text": text, "duration": round(synthesize(voice, text, audio), 3),
                     **(extra or {}), "voice": voice.name})
        if (i + 1) % every == 0:
            write_rows(manifest, rows)
    write_rows(manifest, rows)
    return rows


def speak_fortunes(args, run: Path) -> None:
    """The "fortunes" validation set: TTS only, no LLM; resumes like the rest."""
    if not FORTUNES.is_file():
        raise SystemExit(f"the out-of-domain validation set needs {FORTUNES} (apt install fortunes-min)")
    out = run / "data" / "val_ood" / "fortunes"
    rows = speak_texts(fortune_texts(FORTUNES, args.ood_val_count), out, OOD_VAL_VOICES, every=1)
    log(f"fortunes: {len(rows)} utterances in {out}")


def join_clips(parts: list[dict], out: Path, seconds: float = 25.0, gap: float = 0.5) -> list[dict]:
    """Long-form clips from short utterances: manifest rows (audio paths absolute, as
    evaluate.read_manifest gives them) joined in order, `gap` seconds of silence between
    them, each clip at most `seconds` (one 30 s Whisper window). Every synthetic utterance
    is one sentence, but real prompts run to 25 s, where the question is whether a stream
    ends the transcript too soon. Made once: a manifest already in `out` is read back."""
    import numpy as np
    import soundfile as sf

    from whisper_min.audio import SAMPLE_RATE, load_audio

    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        return read_rows(manifest)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows, clip, texts = [], [], []
    silence = np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32)

    def flush():
        audio = np.concatenate(clip[:-1])  # (samples,): the last piece is a trailing gap
        name = f"audio/{len(rows):04d}.flac"
        sf.write(out / name, audio, SAMPLE_RATE)
        rows.append({"audio": name, "text": " ".join(texts), "duration": round(len(audio) / SAMPLE_RATE, 3),
                     "parts": len(texts)})

    for row in parts:
        audio = load_audio(row["audio"])
        if clip and (sum(map(len, clip)) + len(audio)) / SAMPLE_RATE > seconds:
            flush()
            clip, texts = [], []
        clip += [audio, silence]
        texts.append(row["text"])
    if clip:
        flush()
    write_rows(manifest, rows)
    return rows


def is_validation(text: str, fraction: float) -> bool:
    """A fixed pseudo-random tenth of the texts, the same whatever order they were made in."""
    return int(hashlib.sha1(normalise(text).encode()).hexdigest(), 16) % 1000 < 1000 * fraction


def stage_split(args, run: Path) -> dict:
    """train/<d>/{fit,val}.jsonl and test_raw/<d>/test.jsonl, beside the audio they point to."""
    sizes, train_keys = {}, set()
    for d in DOMAINS:
        rows = read_rows(run / "data" / "train" / d / "manifest.jsonl")[: args.train_per_domain]
        train_keys |= {normalise(r["text"]) for r in rows}
        val = [r for r in rows if is_validation(r["text"], args.val_fraction)]
        fit = [r for r in rows if not is_validation(r["text"], args.val_fraction)]
        write_rows(run / "data" / "train" / d / "fit.jsonl", fit)
        write_rows(run / "data" / "train" / d / "val.jsonl", val)
        sizes[d] = {"fit": len(fit), "val": len(val), "fit_seconds": round(sum(r["duration"] for r in fit), 1),
                    "voices": sorted({r["voice"] for r in rows})}
    # One validation set over all domains for the multi-domain models (absolute paths: it
    # lives outside any one domain's folder).
    write_rows(run / "data" / "train" / "val_multi.jsonl",
               [{**r, "audio": str((run / "data" / "train" / d / r["audio"]).resolve())}
                for d in DOMAINS for r in read_rows(run / "data" / "train" / d / "val.jsonl")])
    for d in DOMAINS:
        rows = read_rows(run / "data" / "test_raw" / d / "manifest.jsonl")[: args.test_per_domain]
        kept, seen = [], set()
        for r in rows:
            key = normalise(r["text"])
            if key not in train_keys and key not in seen:
                seen.add(key)
                kept.append(r)
        write_rows(run / "data" / "test_raw" / d / "test.jsonl", kept)
        sizes[d].update(test=len(kept), test_dropped_overlap=len(rows) - len(kept),
                        test_seconds=round(sum(r["duration"] for r in kept), 1),
                        test_voices=sorted({r["voice"] for r in kept}))
    (run / "data" / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    log(f"split: {json.dumps(sizes)}")
    return sizes


def stage_ood(args, run: Path) -> None:
    """Real speech, none of it about music, weather or sports."""
    out = run / "data" / "ood"
    missing = [f"{p} (apt install {pkg})" for p, pkg in (
        (POCKETSPHINX, "pocketsphinx-testdata"), (ASTERISK_SOUNDS, "asterisk-core-sounds-en-wav"),
        (ASTERISK_TEXTS, "asterisk-core-sounds-en")) if not p.exists()]
    if missing:
        raise SystemExit(f"the real-speech test sets need: {'; '.join(missing)}")
    for sub, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        rows = []
        for line in (POCKETSPHINX / sub / listing).read_text().splitlines():
            m = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line)
            if m:
                name = Path(m.group(2).strip()).name
                rows.append({"audio": str(POCKETSPHINX / sub / f"{name}.wav"), "text": m.group(1).strip()})
        write_rows(out / f"{sub}.jsonl", rows)
    rows = []
    with gzip.open(ASTERISK_TEXTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            # "[ascending tones]" is a sound, not speech; "at [@]" says "at".
            text = re.sub(r"\[[^\]]*\]", "", text).strip()
            wav = ASTERISK_SOUNDS / f"{name.strip()}.wav"
            if sep and text and not line.startswith(";") and wav.is_file():
                rows.append({"audio": str(wav), "text": text})
    write_rows(out / "asterisk.jsonl", rows)
    log(f"ood: {', '.join(f'{p.stem} {len(read_rows(p))}' for p in sorted(out.glob('*.jsonl')))} utterances")
