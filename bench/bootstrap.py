"""How sure is a relative WER change? A paired bootstrap over utterances.

    python bench/bootstrap.py runs/paper/eval/original runs/paper/eval/DAS
    python bench/bootstrap.py runs/paper/eval/original runs/paper/eval/DAS --sets librivox,cards,asterisk

Each argument is a folder of per-test-set results (bench/reproduce.py's eval/<system>/, one
<set>.json each) or a `das.py eval --json` file. Printed per test set, and for all the sets
pooled: the relative change (E_new - E_old) / E_old of the summed word errors, and its 95%
interval from resampling utterances with replacement. Both systems are resampled with the
same indices (paired), so an utterance that is hard for both moves both totals together and
the interval is about the difference, not the difficulty of the test set. The reference
word count is the same for both systems, so it cancels out of the relative change.

An interval that holds 0 means the test set cannot tell the two systems apart; one that
holds a target (say +2%) means it cannot tell whether the target was met.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def utterance_errors(result: dict) -> dict[str, int]:
    """audio path -> word errors (S + D + I) of one test set's result."""
    return {d["audio"]: d["substitutions"] + d["deletions"] + d["insertions"] for d in result["details"]}


def paired(old: list[dict], new: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance errors of two systems' results on the same test sets, in one order.
    Raises ValueError when they did not hear the same utterances."""
    a, b = {}, {}
    for i, (r_old, r_new) in enumerate(zip(old, new, strict=True)):
        e_old, e_new = utterance_errors(r_old), utterance_errors(r_new)
        if e_old.keys() != e_new.keys():
            raise ValueError(f"{r_old.get('test_set') or r_old.get('name')}: the two results scored different "
                             f"utterances ({len(e_old)} and {len(e_new)}); a paired bootstrap needs the same ones")
        a.update({(i, audio): e for audio, e in e_old.items()})  # keyed by set too: no clashes
        b.update({(i, audio): e for audio, e in e_new.items()})
    keys = sorted(a)
    return np.array([a[k] for k in keys], dtype=float), np.array([b[k] for k in keys], dtype=float)


def relative_change(old: np.ndarray, new: np.ndarray, resamples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float] | None:
    """(change, low, high) in percent for errors per utterance old (n,) and new (n,); None when
    the old system made no errors (no relative change exists)."""
    if old.sum() == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, len(old), size=(resamples, len(old)))  # (R, n)
    e_old, e_new = old[idx].sum(1), new[idx].sum(1)  # (R,) each
    ok = e_old > 0  # a resample with no old errors has no relative change; drop it
    changes = 100 * (e_new[ok] - e_old[ok]) / e_old[ok]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(changes, [tail, 100 - tail])
    return 100 * (new.sum() - old.sum()) / old.sum(), float(low), float(high)


def describe(interval: tuple[float, float, float] | None) -> str:
    if interval is None:
        return "-"
    change, low, high = interval
    return f"{change:+.1f}% [{low:+.1f}, {high:+.1f}]"


def load(path: Path, sets: list[str] | None) -> dict[str, dict]:
    """test set -> result, from a reproduce.py eval/<system>/ folder or a das.py eval --json file."""
    if path.is_dir():
        results = {p.stem: json.loads(p.read_text()) for p in sorted(path.glob("*.json"))}
    elif path.is_file():
        raw = json.loads(path.read_text())
        results = {r["name"]: r for r in (raw["results"] if isinstance(raw, dict) else raw)}
    else:
        raise SystemExit(f"error: {path}: no such folder or file")
    if sets:
        missing = [s for s in sets if s not in results]
        if missing:
            raise SystemExit(f"error: {path} has no result for {', '.join(missing)} (it has {', '.join(results)})")
        results = {s: results[s] for s in sets}
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="the baseline's results (folder or das.py eval --json file)")
    p.add_argument("new", type=Path, help="the compared system's results, on the same test sets")
    p.add_argument("--sets", help="comma-separated test sets (default: all both have)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    args = p.parse_args()
    sets = args.sets.split(",") if args.sets else None
    old, new = load(args.old, sets), load(args.new, sets)
    names = [s for s in old if s in new]
    if not names:
        raise SystemExit(f"error: {args.old} and {args.new} share no test set")
    for s in names:
        print(f"{s:>12}: {describe(relative_change(*paired([old[s]], [new[s]]), args.resamples))}")
    if len(names) > 1:
        pooled = paired([old[s] for s in names], [new[s] for s in names])
        print(f"{'pooled':>12}: {describe(relative_change(*pooled, args.resamples))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
