"""The study's data (bench/reproduce.py's generate, split and ood stages), and the helpers
every stage shares: logging, logged subprocesses, locks, manifest rows, trained models."""

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
# Each set its own LLM run (a test text that training drew too is dropped by the split); these
# are the seeds of the data behind the adapters that ship.
SEEDS = {"train": 0, "test_raw": 3000, "val_ood": 2000}
# Out-of-domain validation (the tune stage): "everyday", LLM requests about other topics, and
# "fortunes", sentences people wrote. Their voice is one no other set uses, on an engine
# training never uses: adapters learn their training voices, so a set in those voices
# improves with any adapter and hides what it forgets.
OOD_VALS = ("everyday", "fortunes")
EVERYDAY = Path(__file__).resolve().parent / "domains" / "everyday.json"
OOD_VAL_VOICES = "festival:ked_diphone"  # apt install festvox-kdlpc16k
FORTUNES = Path("/usr/share/games/fortunes")  # apt install fortunes-min fortunes
# Replay (train --replay) keeps each adapter near the base on these, spoken by the training
# voices, so that it learns "away from your domain, stay the base" rather than "in voices you
# never heard, stay the base". Not the `fortunes` file (the validation set's), nor `sports`
# and `songs-poems` (two of the study's domains).
REPLAY_CATEGORIES = ("people", "work", "miscellaneous", "platitudes", "science", "politics", "wisdom", "art",
                     "food", "education", "law", "kids", "love", "pets", "medicine", "humorists")
REPLAY_COUNT = 600
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
OOD_SETS = ("librivox", "cards", "asterisk")
# One 1-thread llama.cpp server per core: a server answers one request at a time, so a single
# 2-thread server left a core idle between requests (21 items a minute here, against 30 to 39).
LLM_SERVERS = 2


def log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_logged(cmd: list[str], logfile: Path, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
    """Run a step, its output appended to `logfile` and the command to run/commands.txt (the
    report quotes it). A failure stops the study: rerun to resume. wait=False: the process."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    line = " ".join(shlex.quote(c) for c in cmd)
    with open(logfile.parent.parent / "commands.txt", "a") as f:
        f.write(line + "\n")
    log(f"$ {line}  (log: {logfile})")
    with open(logfile, "a") as out:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if wait and proc.wait() != 0:
        raise SystemExit(f"step failed with exit code {proc.returncode}; see {logfile}. Rerun the command to resume.")
    return proc


def claim(lock: Path) -> bool:
    """Take `lock` (a file holding this process's id) so that two processes sharing a stage
    never do the same work twice; False while a live process holds it. A dead process's lock
    is taken over, so a crash never blocks a rerun."""
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


def trained(run: Path, name: str) -> Path | None:
    """The file of a model the train stage finished, or None."""
    return run / "models" / f"{name}.st" if (run / "models" / f"{name}.done.json").is_file() else None


# ---------------------------------------------------------------- generate


def generate_jobs(run: Path, sets: list[tuple]) -> list[tuple[list[str], Path]]:
    """(das.py generate command, log) for each (out, domain, count, voices, workers) whose
    manifest is short, seeded by its split (SEEDS: out's parent folder)."""
    return [([sys.executable, "das.py", "generate", "--domain", domain, "--count", str(count), "--out", str(out),
              "--tts", voices, "--workers", str(workers), "--seed", str(SEEDS[out.parent.name]),
              "--progress-every", "60"], run / "logs" / f"generate_{out.parent.name}_{out.name}.log")
            for out, domain, count, voices, workers in sets if len(read_rows(out / "manifest.jsonl")) < count]


def stage_generate(args, run: Path) -> None:
    """Each domain's training and test texts and the everyday validation set from the LLM,
    then spoken; the fortunes validation set and the replay set spoken from fortune files."""
    sets = [(run / "data" / split / d, d, count, voices, workers) for d in DOMAINS for split, count, voices, workers in
            (("train", args.train_per_domain, TRAIN_VOICES, 2), ("test_raw", args.test_per_domain, TEST_VOICES, 1))]
    sets.append((run / "data" / "val_ood" / "everyday", str(EVERYDAY), args.ood_val_count, OOD_VAL_VOICES, 1))
    jobs = generate_jobs(run, sets)
    replay = replay_texts(REPLAY_COUNT)  # checks every fortune file first
    speak_texts(fortune_texts(FORTUNES / "fortunes", args.ood_val_count), run / "data" / "val_ood" / "fortunes",
                OOD_VAL_VOICES)
    speak_texts(replay, run / "data" / "replay", TRAIN_VOICES)
    run_llm_jobs(args, run, jobs)


def llm_server_up(env: dict) -> bool:
    """Whether bench/llm_server.sh already has a server answering on env's PORT."""
    return subprocess.run(["bash", "bench/llm_server.sh", "status"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def run_llm_jobs(args, run: Path, jobs: list[tuple[list[str], Path]]) -> None:
    """Every `das.py generate` job at once, each sending each request to the least busy of the
    LLM servers: --llm-url, or LLM_SERVERS local ones (bench/llm_server.sh, 1 thread each,
    stopped when the jobs end; one already up is used and left up)."""
    if not jobs:
        return
    port = int(os.environ.get("PORT", "8012"))
    urls = [args.llm_url] if args.llm_url else [f"http://127.0.0.1:{port + i}/v1" for i in range(LLM_SERVERS)]
    ours = []  # the servers this stage starts
    try:
        for i in range(0 if args.llm_url else LLM_SERVERS):
            env = {**os.environ, "PORT": str(port + i), "N_THREADS": "1"}
            if not llm_server_up(env):
                ours.append(env)
            run_logged(["bash", "bench/llm_server.sh", "start"], run / "logs" / f"llm_server_{port + i}.log", env)
        procs = [(run_logged([*cmd, "--llm-url", ",".join(urls)], out, wait=False), out) for cmd, out in jobs]
        failed = [str(out) for proc, out in procs if proc.wait() != 0]
    finally:  # also after a failure or Ctrl-C, so that no idle server keeps its port and memory
        for env in ours:
            run_logged(["bash", "bench/llm_server.sh", "stop"], run / "logs" / f"llm_server_{env['PORT']}.log", env)
    if failed:
        raise SystemExit(f"generation failed; see {', '.join(failed)}. Rerun to resume.")


def fortune_texts(path: Path, count: int) -> list[str]:
    """The first `count` one-line entries of a fortune file (entries split by "%" lines): 4 to
    25 words, letters and punctuation only (nothing a TTS engine reads two ways), unattributed."""
    texts = []
    for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
        text = " ".join(entry.split())
        if "--" not in text and re.fullmatch(r"[A-Za-z ,.'?!;:-]+", text) and 4 <= len(text.split()) <= 25:
            texts.append(text)
    return texts[:count]


def replay_texts(count: int, folder: Path = FORTUNES) -> list[str]:
    """`count` texts from REPLAY_CATEGORIES, one category after another so that no topic
    dominates, none repeated and none in the validation set's file."""
    missing = [c for c in (*REPLAY_CATEGORIES, "fortunes") if not (folder / c).is_file()]
    if missing:
        raise SystemExit(f"{folder}: no {', '.join(missing)} (apt install fortunes-min fortunes)")
    seen = {normalise(t) for t in fortune_texts(folder / "fortunes", 10**6)}
    pools, out = [fortune_texts(folder / c, 10**6) for c in REPLAY_CATEGORIES], []
    while len(out) < count and any(pools):
        for pool in pools:
            while pool and normalise(pool[0]) in seen:
                pool.pop(0)
            if pool:
                seen.add(normalise(pool[0]))
                out.append(pool.pop(0))
    if len(out) < count:
        raise SystemExit(f"{folder}: only {len(out)} usable texts, fewer than {count}")
    return out[:count]


def speak_texts(texts: list[str], out: Path, voices: str) -> list[dict]:
    """Speak `texts` into out/audio/ and out/manifest.jsonl, dealing the voices in turn as
    datagen does; written every 20 items, so a rerun resumes there."""
    from datagen.tts import parse_voices, synthesize

    rows, dealt = read_rows(out / "manifest.jsonl"), parse_voices(voices)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts[len(rows):], start=len(rows)):
        voice, audio = dealt[i % len(dealt)], out / "audio" / f"{i:04d}.flac"
        rows.append({"audio": f"audio/{audio.name}", "text": text, "duration": round(synthesize(voice, text, audio), 3),
                     "voice": voice.name})
        if (i + 1) % 20 == 0:
            write_rows(out / "manifest.jsonl", rows)
    write_rows(out / "manifest.jsonl", rows)
    log(f"{out}: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 60:.1f} min")
    return rows


def join_clips(parts: list[dict], out: Path, seconds: float = 25.0, gap: float = 0.5) -> list[dict]:
    """Long-form clips from short utterances (rows with absolute audio paths, as
    evaluate.read_manifest gives them), joined in order with `gap` seconds of silence, each at
    most `seconds` (one 30 s window). Every synthetic utterance is one sentence, but real
    prompts run to 25 s, where a stream may end the transcript too soon. Made once."""
    import numpy as np
    import soundfile as sf

    from whisper_min.audio import SAMPLE_RATE, load_audio

    if (out / "manifest.jsonl").is_file():
        return read_rows(out / "manifest.jsonl")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows, clips = [], [[]]  # clips: [(audio, text)] per long clip
    for row in parts:
        audio = load_audio(row["audio"])
        if clips[-1] and (sum(len(a) + gap * SAMPLE_RATE for a, _ in clips[-1]) + len(audio)) / SAMPLE_RATE > seconds:
            clips.append([])
        clips[-1].append((audio, row["text"]))
    silence = np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32)
    for clip in filter(None, clips):
        audio = np.concatenate([x for a, _ in clip for x in (silence, a)][1:])  # (samples,)
        sf.write(out / f"audio/{len(rows):04d}.flac", audio, SAMPLE_RATE)
        rows.append({"audio": f"audio/{len(rows):04d}.flac", "text": " ".join(t for _, t in clip),
                     "duration": round(len(audio) / SAMPLE_RATE, 3), "parts": len(clip)})
    write_rows(out / "manifest.jsonl", rows)
    return rows


# ---------------------------------------------------------------- split and ood


def is_validation(text: str, fraction: float) -> bool:
    """A fixed pseudo-random share of the texts, the same whatever order they were made in."""
    return int(hashlib.sha1(normalise(text).encode()).hexdigest(), 16) % 1000 < 1000 * fraction


def new_texts(rows: list[dict], train_keys: set[str]) -> list[dict]:
    """The test rows whose text is neither a training text nor a repeat of an earlier row's."""
    kept, seen = [], set(train_keys)
    for r in rows:
        if (key := normalise(r["text"])) not in seen:
            seen.add(key)
            kept.append(r)
    return kept


def stage_split(args, run: Path) -> dict:
    """train/<d>/{fit,val}.jsonl, train/val_multi.jsonl and test_raw/<d>/test.jsonl; a test
    text that also occurs in any training set is dropped."""
    sizes, train_keys, data = {}, set(), run / "data"
    for d in DOMAINS:
        rows = read_rows(data / "train" / d / "manifest.jsonl")[: args.train_per_domain]
        train_keys |= {normalise(r["text"]) for r in rows}
        val = [r for r in rows if is_validation(r["text"], args.val_fraction)]
        fit = [r for r in rows if not is_validation(r["text"], args.val_fraction)]
        write_rows(data / "train" / d / "fit.jsonl", fit)
        write_rows(data / "train" / d / "val.jsonl", val)
        sizes[d] = {"fit": len(fit), "val": len(val), "fit_seconds": round(sum(r["duration"] for r in fit), 1),
                    "voices": sorted({r["voice"] for r in rows})}
    # The multi-domain models' validation set (absolute paths: it lives outside the domains' folders).
    train = data / "train"
    write_rows(train / "val_multi.jsonl", [{**r, "audio": str((train / d / r["audio"]).resolve())}
                                           for d in DOMAINS for r in read_rows(train / d / "val.jsonl")])
    for d in DOMAINS:
        rows = read_rows(data / "test_raw" / d / "manifest.jsonl")[: args.test_per_domain]
        kept = new_texts(rows, train_keys)
        write_rows(data / "test_raw" / d / "test.jsonl", kept)
        sizes[d].update(test=len(kept), test_dropped_overlap=len(rows) - len(kept),
                        test_seconds=round(sum(r["duration"] for r in kept), 1),
                        test_voices=sorted({r["voice"] for r in kept}))
    (data / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    log(f"split: {json.dumps(sizes)}")
    return sizes


def stage_ood(args, run: Path) -> None:
    """Manifests of real speech, none of it about music, weather or sports."""
    out = run / "data" / "ood"
    missing = [f"{p} (apt install {pkg})" for p, pkg in (
        (POCKETSPHINX, "pocketsphinx-testdata"), (ASTERISK_SOUNDS, "asterisk-core-sounds-en-wav"),
        (ASTERISK_TEXTS, "asterisk-core-sounds-en")) if not p.exists()]
    if missing:
        raise SystemExit(f"the real-speech test sets need: {'; '.join(missing)}")
    for sub, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        lines = (POCKETSPHINX / sub / listing).read_text().splitlines()
        matches = [m for line in lines if (m := re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line))]
        write_rows(out / f"{sub}.jsonl", [{"audio": str(POCKETSPHINX / sub / f"{Path(m[2].strip()).name}.wav"),
                                           "text": m[1].strip()} for m in matches])
    rows = []
    with gzip.open(ASTERISK_TEXTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            text = re.sub(r"\[[^\]]*\]", "", text).strip()  # "[ascending tones]" is a sound; "at [@]" says "at"
            wav = ASTERISK_SOUNDS / f"{name.strip()}.wav"
            if sep and text and not line.startswith(";") and wav.is_file():
                rows.append({"audio": str(wav), "text": text})
    write_rows(out / "asterisk.jsonl", rows)
    log(f"ood: {', '.join(f'{p.stem} {len(read_rows(p))}' for p in sorted(out.glob('*.jsonl')))} utterances")
