"""The output folder of one `generate` run, and what makes the run resumable.

    OUT/manifest.jsonl   one line per finished item; the line is the commit point
    OUT/rejects.jsonl    one line per dropped text, with its reason
    OUT/audio/<key>.flac one file per manifest line, key = hash of the normalised text
    OUT/state.json       how many runs have used the folder (varies the seeds per run)

An item is done once its manifest line is written; its audio was renamed into
place before that. A kill -9 can therefore leave: a `.tmp` audio file, a
finished audio file with no manifest line, or a torn last manifest line. On
open, all three are removed, so the folder only ever holds whole, listed items
and a rerun continues from the manifest. Duplicates are impossible because a
text is reserved (under a lock, by its normalised form) before it is spoken,
and the count is capped at reservation time, so `count` is reached exactly.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections import Counter
from pathlib import Path

from datagen.clean import normalise


def _repair_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file, cutting it back to its last whole, valid line."""
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn by a kill mid-write
            try:
                rows.append(json.loads(raw))
            except ValueError:
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return rows


def text_key(text: str) -> str:
    return hashlib.sha1(normalise(text).encode()).hexdigest()[:16]


class Store:
    def __init__(self, out: Path, count: int, domain: str, audio_format: str = "flac"):
        self.out, self.count, self.domain, self.ext = Path(out), count, domain, audio_format
        self.audio_dir = self.out / "audio"
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        # Two runs writing one folder would duplicate items: refuse the second.
        self._lock_file = open(self.out / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{self.out} is in use by another generate run") from None
        self.manifest = self.out / "manifest.jsonl"
        self.rejects_path = self.out / "rejects.jsonl"
        self.items = _repair_jsonl(self.manifest)
        other = {row.get("domain") for row in self.items} - {domain}
        if other:
            raise RuntimeError(f"{self.manifest} holds domain {sorted(other)}, not '{domain}': use another --out")
        self.reject_reasons = Counter(row.get("reason", "").split(":")[0] for row in _repair_jsonl(self.rejects_path))
        self.seen = {normalise(row["text"]) for row in self.items}
        self._reserved: set[str] = set()
        self._lock = threading.Lock()
        self.resumed = len(self.items)
        self._remove_strays()
        self.run_index = self._bump_run_counter()

    def _remove_strays(self) -> None:
        listed = {(self.out / row["audio"]).name for row in self.items}
        for path in self.audio_dir.iterdir():
            if path.name not in listed:  # a .tmp, or audio whose manifest line never got written
                path.unlink()

    def _bump_run_counter(self) -> int:
        state_path = self.out / "state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        state["runs"] = state.get("runs", 0) + 1
        tmp = state_path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)
        return state["runs"]

    # -- the three things a worker does, each under the lock ---------------------

    @property
    def full(self) -> bool:
        return len(self.items) >= self.count

    def reserve(self, text: str) -> str | None:
        """Claim `text` for speaking. None on success, else 'duplicate' or 'full'."""
        key = normalise(text)
        with self._lock:
            if key in self.seen or key in self._reserved:
                return "duplicate"
            if len(self.items) + len(self._reserved) >= self.count:
                return "full"
            self._reserved.add(key)
            return None

    def release(self, text: str) -> None:
        with self._lock:
            self._reserved.discard(normalise(text))

    def audio_path(self, text: str) -> Path:
        return self.audio_dir / f"{text_key(text)}.{self.ext}"

    def commit(self, text: str, duration: float, voice: str, instruction: str) -> None:
        row = {"audio": str(self.audio_path(text).relative_to(self.out)), "text": text,
               "duration": round(duration, 3), "domain": self.domain, "voice": voice,
               "instruction": instruction}
        key = normalise(text)
        with self._lock:
            self._append(self.manifest, row)
            self.items.append(row)
            self.seen.add(key)
            self._reserved.discard(key)

    def reject(self, text: str, reason: str, instruction: str) -> None:
        row = {"text": text, "reason": reason, "domain": self.domain, "instruction": instruction}
        with self._lock:
            self._append(self.rejects_path, row)
            self.reject_reasons[reason.split(":")[0]] += 1

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        # One write of one whole line, then fsync: a kill leaves at most a torn last line.
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self._lock_file.close()
