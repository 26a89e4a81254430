"""`das.py eval`: word error rate and real-time factor of a model (with or without adapters)
on one or more test manifests.

    python das.py eval --data test/music/manifest.jsonl test/weather/manifest.jsonl \
        [--loras adapters/music.st,adapters/weather.st] [--json results.json]

WER is corpus-level: the word edits (substitutions + deletions + insertions) summed over a
test set, divided by its reference words, after `normalize` (evaluation/normalize.py) on both sides.
RTF is transcription time over audio time (audio loading excluded, as in `das.py transcribe`).
"""

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.normalize import normalize


@dataclass
class WordErrors:
    """One utterance's alignment counts; corpus WER sums these before dividing."""
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: "WordErrors") -> "WordErrors":
        return WordErrors(self.substitutions + other.substitutions, self.deletions + other.deletions,
                          self.insertions + other.insertions, self.ref_words + other.ref_words)


def word_errors(ref: list[str], hyp: list[str]) -> WordErrors:
    """Levenshtein alignment of word lists; among equal-cost alignments, the backtrace
    prefers substitutions, so "a b" -> "a c" is 1 substitution rather than 1 del + 1 ins."""
    n, m = len(ref), len(hyp)
    # d[i][j]: edits to turn ref[:i] into hyp[:j]
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    out, i, j = WordErrors(ref_words=n), n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            out.substitutions += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            out.deletions += 1
            i -= 1
        else:
            out.insertions += 1
            j -= 1
    return out


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER of raw texts (normalised here). An empty reference adds its hypothesis'
    words as insertions; a corpus with no reference words at all has no WER (ValueError)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = sum((word_errors(normalize(r).split(), normalize(h).split()) for r, h in zip(refs, hyps)),
                WordErrors())
    if total.ref_words == 0:
        raise ValueError("WER is undefined: the references hold no words after normalisation")
    return total.errors / total.ref_words


def read_manifest(path: Path) -> list[dict]:
    """Manifest lines {"audio", "text", ...} with audio made absolute (it is relative to the
    manifest's folder). A malformed line is reported and left out, not fatal."""
    rows = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio, text = row["audio"], row["text"]
            if not isinstance(audio, str) or not isinstance(text, str):
                raise TypeError("audio and text must be strings")
        except (ValueError, KeyError, TypeError) as e:
            print(f"das eval: {path}:{k}: bad manifest line ({e.__class__.__name__}: {e}); skipped", file=sys.stderr)
            continue
        rows.append({"audio": str(path.parent / audio), "text": text})
    return rows


def evaluate_set(rows: list[dict], transcribe_fn, name: str) -> dict:
    """Transcribe and score one test set. `transcribe_fn(path) -> (text, audio_seconds, seconds)`
    raises whisper_min's AudioError for a file it cannot use; that file is reported and skipped."""
    from whisper_min.audio import AudioError

    total, audio_s, compute_s, skipped, details = WordErrors(), 0.0, 0.0, 0, []
    last_report = time.monotonic()
    for k, row in enumerate(rows, 1):
        try:
            text, seconds, elapsed = transcribe_fn(row["audio"])
        except AudioError as e:
            print(f"das eval: {e}; skipped", file=sys.stderr)
            skipped += 1
            continue
        ref, hyp = normalize(row["text"]), normalize(text)
        errs = word_errors(ref.split(), hyp.split())
        total, audio_s, compute_s = total + errs, audio_s + seconds, compute_s + elapsed
        details.append({"audio": row["audio"], "reference": row["text"], "hypothesis": text,
                        "ref_norm": ref, "hyp_norm": hyp, **asdict(errs)})
        if time.monotonic() - last_report > 10 or k == len(rows):
            so_far = f"{100 * total.errors / total.ref_words:.2f}%" if total.ref_words else "n/a"
            print(f"das eval: {name}: {k}/{len(rows)} utterances, WER so far {so_far}", file=sys.stderr)
            last_report = time.monotonic()
    return {"name": name, "utterances": len(details), "skipped": skipped, "audio_seconds": round(audio_s, 3),
            "wer": round(100 * total.errors / total.ref_words, 3) if total.ref_words else None,
            "rtf": round(compute_s / audio_s, 5) if audio_s else None, **asdict(total), "details": details}


def format_table(results: list[dict]) -> str:
    def cell(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    head = f"{'test set':<24} {'utts':>6} {'skipped':>7} {'audio s':>9} {'WER %':>7} {'RTF':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['name']:<24} {r['utterances']:>6} {r['skipped']:>7} {r['audio_seconds']:>9.1f} "
                     f"{cell(r['wer'], '.2f'):>7} {cell(r['rtf'], '.4f'):>7}")
    return "\n".join(lines)


def transcriber(model, tokenizer, options, decode_fn, load_audio=None):
    """`transcribe_fn(path) -> (text, audio seconds, seconds)` for `evaluate_set`: the whole
    `whisper_min.transcribe` path, timed without the audio loading. `load_audio` (default
    `whisper_min.load_audio`) lets a caller that scores many systems keep the audio in memory."""
    import torch

    import whisper_min
    from whisper_min.audio import SAMPLE_RATE, AudioError

    load_audio = load_audio or whisper_min.load_audio

    def transcribe_fn(path: str):
        audio = load_audio(path)
        if len(audio) < SAMPLE_RATE // 10:
            raise AudioError(f"{path}: only {len(audio) / SAMPLE_RATE:.3f} s of audio; need at least 0.1 s")
        start = time.perf_counter()
        with torch.inference_mode():
            text = whisper_min.transcribe(model, audio, tokenizer, options, decode_fn=decode_fn)["text"]
        return text, len(audio) / SAMPLE_RATE, time.perf_counter() - start

    return transcribe_fn


def evaluate(data: list[Path], names: list[str], transcribe_fn, limit: int | None = None) -> list[dict]:
    """Score every test manifest in `data` (labelled by `names`) with `transcribe_fn`
    (`transcriber`), at most `limit` utterances each."""
    return [evaluate_set(read_manifest(path)[:limit], transcribe_fn, name) for path, name in zip(data, names)]


def write_results(results: list[dict], config: dict, json_path: Path | None) -> None:
    """The table on stdout; then the results with per-utterance details into `json_path`
    (written to a temporary name and renamed, never half a file), or a one-line summary."""
    print(format_table(results), flush=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps({**config, "results": results}, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(json_path)
    else:
        summary = [{k: v for k, v in r.items() if k != "details"} for r in results]
        print(json.dumps({**config, "results": summary}, ensure_ascii=False))
