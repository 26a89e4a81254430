"""`das.py generate`: a domain name in, a training manifest of synthetic speech out.

One job = paper III-A end to end for one sampled seed:
    seed fields --LLM--> metadata keywords --LLM--> tailored instruction   (phase 1)
    instruction --LLM--> in-domain user texts --clean--> TTS --> manifest   (phase 2)
Jobs run on `--workers` threads (the work is waiting on HTTP and subprocesses)
until the manifest holds `--count` items. Rerunning the same command after a
crash continues from the manifest; see `datagen.store` for why that is safe.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from datagen import prompts
from datagen.clean import check, normalise, split_answer, strip_decoration
from datagen.llm import ChatClient
from datagen.net import HTTPFatal, HTTPGaveUp, RetryPolicy
from datagen.store import Store
from datagen.tts import TTSError, parse_voices, synthesize

DOMAINS_DIR = Path(__file__).parent / "domains"
SEED_FIELDS = ("usecase", "skills", "persona", "instruction")
MAX_AUDIO_SECONDS = 30.0  # Whisper sees 30 s windows; longer audio cannot be trained on


@dataclass(frozen=True)
class DomainSpec:
    name: str
    description: str
    seeds: dict     # field -> list of values, for each of SEED_FIELDS
    examples: dict  # optional format examples: keywords, instruction (str), texts (list)
    style: str | None = None  # what the texts are, if not requests to a voice assistant (datagen/prompts.py)


def load_spec(domain: str) -> DomainSpec:
    """A shipped domain name ('music') or a path to a JSON spec of the same shape."""
    path = Path(domain) if domain.endswith(".json") or os.sep in domain else DOMAINS_DIR / f"{domain}.json"
    if not path.exists():
        shipped = sorted(p.stem for p in DOMAINS_DIR.glob("*.json"))
        raise ValueError(f"domain spec {path} not found; shipped domains: {shipped}, or pass a path to a .json spec")
    try:
        raw = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"domain spec {path} is not valid JSON: {err}") from None
    for field in SEED_FIELDS:
        values = raw.get(field)
        if not (isinstance(values, list) and values and all(isinstance(v, str) and v.strip() for v in values)):
            raise ValueError(f"domain spec {path}: '{field}' must be a non-empty list of strings")
    name = raw.get("name") or path.stem
    examples = raw.get("examples") or {}
    if not isinstance(examples, dict) or not isinstance(examples.get("texts", []), list):
        raise ValueError(f"domain spec {path}: 'examples' must be an object with keywords, instruction, texts (a list)")
    style = raw.get("style")
    if style is not None and not (isinstance(style, str) and style.strip()):
        raise ValueError(f"domain spec {path}: 'style' must be a non-empty string, e.g. \"prompts that a phone "
                         "system plays to a caller\" (leave it out for requests to a voice assistant)")
    return DomainSpec(name, raw.get("description") or name, {f: raw[f] for f in SEED_FIELDS}, examples,
                      style.strip() if style else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", required=True, help="shipped domain (music, weather, sports) or path to a JSON domain spec")
    parser.add_argument("--count", type=int, default=100, help="number of utterances the manifest must hold at the end")
    parser.add_argument("--out", default=None, help="output folder (default: data/<domain>); rerun the same command to resume")
    parser.add_argument("--llm-url", default="http://127.0.0.1:8080/v1", help="OpenAI-compatible server base URL, e.g. http://127.0.0.1:8000/v1; several servers of one model comma-separated (each request to the least busy)")
    parser.add_argument("--llm-model", default="default", help="model name sent in each chat-completions request")
    parser.add_argument("--llm-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (unset: no key sent)")
    parser.add_argument("--llm-timeout", type=float, default=120.0, help="seconds one LLM request may take before it is retried")
    parser.add_argument("--retries", type=int, default=5, help="retries per HTTP request on connection errors, 429 and 5xx")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds; doubles per retry, jittered, capped at 30 s")
    parser.add_argument("--temperature", type=float, default=0.9, help="LLM sampling temperature (high: more diverse texts)")
    parser.add_argument("--texts-per-instruction", type=int, default=8, help="texts asked for per tailored instruction (phase 2)")
    parser.add_argument("--tts", default="espeak-ng:en-us", help="comma-separated engine:voice list, e.g. espeak-ng:en-us,flite:slt,festival:kal_diphone,piper:joe,http:alloy")
    parser.add_argument("--tts-url", default=None, help="base URL of an OpenAI-compatible /v1/audio/speech server, for http:<voice>")
    parser.add_argument("--tts-model", default="tts-1", help="model name sent to the HTTP TTS server")
    parser.add_argument("--tts-key-env", default="OPENAI_API_KEY", help="environment variable holding the HTTP TTS API key")
    parser.add_argument("--format", choices=("flac", "wav"), default="flac", help="audio file format (16 kHz mono, 16-bit)")
    parser.add_argument("--workers", type=int, default=2, help="jobs run at once (threads); raise it for a server that batches")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling the seed fields and the LLM")
    parser.add_argument("--max-idle-jobs", type=int, default=30, help="stop with an error after this many jobs in a row add no item")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")


def _first_line(answer: str | None, max_words: int) -> str | None:
    """The first usable line of a phase-1 answer, or None when there is none."""
    for line in (answer or "").splitlines():
        line = strip_decoration(line)
        if line and not line.endswith(":") and len(line.split()) <= max_words:
            return line
    return None


def _keywords(answer: str | None) -> str | None:
    """'Adele, Abbey Road, Miles Davis' from the first line of a phase-1a answer, or None."""
    line = strip_decoration((answer or "").strip().splitlines()[0] if (answer or "").strip() else "")
    items = [w.strip(" .\"'") for w in line.split(",")]
    items = [w for w in items if w and len(w.split()) <= 4 and w.replace(" ", "").replace("'", "").isalpha()]
    return ", ".join(items[:5]) if len(items) >= 2 else None


class Generator:
    def __init__(self, spec: DomainSpec, store: Store, llm: ChatClient, voices: list, args):
        self.spec, self.store, self.llm, self.voices, self.args = spec, store, llm, voices, args
        self.stop = threading.Event()
        self.tts_failures = 0
        # A small model often echoes the prompt's example: that is not a new text.
        self._example_keys = {normalise(t) for t in spec.examples.get("texts", [])}

    def job(self, job_id: int) -> int:
        """Run one seed through both phases; return how many items it added."""
        rng = random.Random(f"{self.args.seed}/{self.store.run_index}/{job_id}")
        seed = {field: rng.choice(self.spec.seeds[field]) for field in SEED_FIELDS}
        llm_seed = rng.randrange(2**31)
        domain, examples, style = self.spec.name, self.spec.examples, self.spec.style
        # Phase 1: encode the seed into metadata, decode the metadata into an instruction.
        answer = self.llm.chat(prompts.metadata_messages(domain, seed, examples.get("keywords"), style),
                               0.7, 48, llm_seed)
        metadata = _keywords(answer) or seed["skills"]
        answer = self.llm.chat(prompts.instruction_messages(domain, seed, metadata, examples.get("instruction"), style),
                               0.7, 80, llm_seed + 1)
        instruction = _first_line(answer, 40)
        if instruction is None or len(instruction.split()) < 4:
            self.llm.count("instruction_fallback")  # counted so a weak LLM shows in the summary
            instruction = prompts.fallback_instruction(domain, seed)
        # Phase 2: instruction -> texts -> clean -> speak.
        n = self.args.texts_per_instruction
        example = rng.choice(examples["texts"]) if examples.get("texts") else None
        answer = self.llm.chat(prompts.texts_messages(domain, instruction, metadata, n, example, style),
                               self.args.temperature, 40 * n, llm_seed + 2)
        added = 0
        for text in split_answer(answer or ""):
            if self.stop.is_set() or self.store.full:
                break
            # Requests must read as requests; a styled domain's statements are its texts.
            reason = check(text, self.store.seen, requests_only=style is None) or (
                "copied_example" if normalise(text) in self._example_keys else self.store.reserve(text))
            if reason == "full":
                break
            if reason:
                self.store.reject(text, reason, instruction)
                continue
            added += self._speak(text, instruction)
        return added

    def _speak(self, text: str, instruction: str) -> int:
        # The voice follows from the text, so a resumed run picks the same one.
        voice = self.voices[int(hashlib.sha1(normalise(text).encode()).hexdigest(), 16) % len(self.voices)]
        path = self.store.audio_path(text)
        try:
            duration = synthesize(voice, text, path)
        except (TTSError, HTTPGaveUp, HTTPFatal, OSError, RuntimeError) as err:
            self.store.release(text)
            self.store.reject(text, f"tts_failed: {err}", instruction)
            self.tts_failures += 1
            return 0
        if duration > MAX_AUDIO_SECONDS:
            path.unlink()
            self.store.release(text)
            self.store.reject(text, f"audio_too_long: {duration:.1f} s", instruction)
            return 0
        self.store.commit(text, duration, voice.name, instruction)
        return 1


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _progress(gen: Generator, start: float, start_items: int) -> str:
    store, stats = gen.store, gen.llm.stats
    done, elapsed = len(store.items), max(time.time() - start, 1e-6)
    rate = (done - start_items) / elapsed
    eta = _eta((store.count - done) / rate) if rate > 0 else "?"
    return (f"[{store.domain}] {done}/{store.count} items | {sum(store.reject_reasons.values())} rejected"
            f" | llm {stats['requests']} calls, {stats['retries']} retries, {stats['malformed']} malformed,"
            f" {stats['refused']} refused | {rate * 60:.1f} items/min | ETA {eta}")


def run(gen: Generator) -> None:
    """Submit jobs until the store is full; raise RuntimeError when the run cannot get there."""
    args, store = gen.args, gen.store
    start, start_items, last_print = time.time(), len(store.items), 0.0
    next_job, idle_jobs, failures = 0, 0, 0
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        pending = set()
        try:
            while not store.full:
                while len(pending) < args.workers:
                    pending.add(pool.submit(gen.job, next_job))
                    next_job += 1
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    try:
                        added = future.result()
                        failures = 0
                    except HTTPGaveUp as err:  # the server stayed down through all retries
                        failures += 1
                        print(f"warning: {err}", file=sys.stderr)
                        if failures >= 3:
                            raise RuntimeError(f"LLM server unreachable, 3 jobs in a row failed: {err}") from None
                        added = 0
                    except HTTPFatal as err:
                        raise RuntimeError(f"LLM request refused: {err}") from None
                    idle_jobs = 0 if added else idle_jobs + 1
                if idle_jobs >= args.max_idle_jobs and not store.full:
                    raise RuntimeError(
                        f"{idle_jobs} jobs in a row added no item; see {store.rejects_path} for why texts were dropped")
                if time.time() - last_print >= args.progress_every:
                    print(_progress(gen, start, start_items), file=sys.stderr, flush=True)
                    last_print = time.time()
        finally:
            gen.stop.set()  # running jobs stop at their next text; queued ones never start
            for future in pending:
                future.cancel()
    print(_progress(gen, start, start_items), file=sys.stderr, flush=True)


def main(args) -> int:
    try:
        spec = load_spec(args.domain)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.count < 1 or args.workers < 1 or args.texts_per_instruction < 1:
        print("error: --count, --workers and --texts-per-instruction must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.out or Path("data") / spec.name)
    policy = RetryPolicy(timeout=args.llm_timeout, retries=args.retries, backoff=args.backoff)
    try:
        llm = ChatClient(args.llm_url, args.llm_model, args.llm_key_env, policy)
    except ValueError as err:
        print(f"error: --llm-url: {err}", file=sys.stderr)
        return 2
    try:
        voices = parse_voices(args.tts, args.tts_url, args.tts_model,
                              os.environ.get(args.tts_key_env, ""), policy)
        store = Store(out, args.count, spec.name, args.format)
    except (TTSError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if store.resumed:
        print(f"resuming {store.manifest}: {store.resumed} items already there", file=sys.stderr)
    gen = Generator(spec, store, llm, voices, args)
    code = 0
    try:
        run(gen)
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to continue ({len(store.items)} items kept)", file=sys.stderr)
        code = 130
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 1
    finally:
        store.close()
    reasons = ", ".join(f"{k} {v}" for k, v in store.reject_reasons.most_common()) or "none"
    print(f"{store.manifest}: {len(store.items)} items; rejects by reason: {reasons}; "
          f"llm: {dict(llm.stats)}", file=sys.stderr)
    return code


if __name__ == "__main__":  # lets the tests and users run it before das.py wires it in
    cli = argparse.ArgumentParser(prog="python -m datagen.generate", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
