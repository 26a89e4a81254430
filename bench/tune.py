"""bench/reproduce.py's tune stage: how DAS's adapters decode together, chosen on validation
speech, never on a test set. In-domain validation loss cannot see what decoding with an
adapter costs out of its domain, so the stage decodes validation speech with every candidate
and takes one by a rule fixed before any candidate is scored.

Candidates: routing (`route`, decoders/route.py: each utterance's whole transcript from one
stream) and the token-level rules `max-only` and `das` (Eq. (3) read literally,
decoders/rules.py; only the base ends the transcript), each at every τ of TAUS. At τ = 0 both
token-level rules take the surest stream, so they are one candidate. Routing's candidates
share one decode of every stream per window (memo.StreamMemo): together they cost about one.

Validation sets: each domain's split (10% of its synthetic training texts, held out of
training); out of domain, `everyday` (LLM requests about other topics) and `fortunes`
(sentences people wrote), in a voice no other set uses; and long-form clips joined from each
group (up to 25 s), where a stream that ends the transcript early shows.

The rule: keep the candidates whose WER on every out-of-domain set is at most MAX_OOD_RISE
(2%) above the original model's; take the lowest mean WER over the in-domain sets; ties go to
the larger τ (nearer the original model), then in the order of STRATEGIES. If none qualifies,
DAS falls back to the original model's transcripts (`max-only` at τ = 1: no stream's
probability is ever higher than the base's by 1).
"""

import json
from pathlib import Path

from scorer import config, score_all
from study_data import DOMAINS, OOD_VALS, join_clips, log, trained

TAUS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3)
STRATEGIES = ("route", "max-only", "das")  # das.py's default first: it wins a tie
# das.py's defaults, DAS's setting until this stage has run (not imported: das.py loads torch; a test checks them)
DEFAULT = {"strategy": "route", "tau": 0.01}
MAX_OOD_RISE = 0.02
LONG = {"long-domains": DOMAINS, "long-ood": OOD_VALS}  # long-form set -> the sets it is joined from
IN_DOMAIN = (*DOMAINS, "long-domains")


def candidates() -> list[dict]:
    return [{"strategy": s, "tau": t} for s in STRATEGIES for t in TAUS if t > 0 or s != "das"]


def label(c: dict) -> str:
    return f"{c['strategy']} tau={c['tau']:g}"


def das_files(run: Path) -> list[Path] | None:
    """DAS's adapters, one per domain, once all are trained."""
    files = [trained(run, f"lora-{d}") for d in DOMAINS]
    return files if all(files) else None


def chosen(run: Path) -> dict | None:
    """The tune stage's choice {"strategy", "tau", "why"}, or None before it has run."""
    path = run / "tune.json"
    return json.loads(path.read_text())["chosen"] if path.is_file() else None


def choose(rows: list[dict], original: dict) -> dict:
    """The rule of the module docstring. rows: {"strategy", "tau", "wer": {set: WER}}."""
    ind = [s for s in original if s in IN_DOMAIN]
    ood = [s for s in original if s not in IN_DOMAIN]
    ok = [r for r in rows if all(r["wer"][s] <= original[s] * (1 + MAX_OOD_RISE) for s in ood)]
    if not ok:
        return {"strategy": "max-only", "tau": 1.0, "why": f"no candidate kept out-of-domain WER within "
                f"{MAX_OOD_RISE:.0%} of the original model's: the original model's transcripts"}
    best = min(ok, key=lambda r: (sum(r["wer"][s] for s in ind) / len(ind), -r["tau"],
                                  STRATEGIES.index(r["strategy"])))
    return {"strategy": best["strategy"], "tau": best["tau"],
            "why": f"lowest mean in-domain validation WER ({', '.join(ind)}) among the {len(ok)} of {len(rows)} "
                   f"candidates within {MAX_OOD_RISE:.0%} of the original model's WER on {', '.join(ood)}"}


def validation_sets(args, run: Path) -> dict[str, list[dict]] | None:
    """Every validation set's rows, the long-form ones joined on first use; None while any is missing."""
    from evaluation.evaluate import read_manifest

    paths = {d: run / "data" / "train" / d / "val.jsonl" for d in DOMAINS}
    paths |= {s: run / "data" / "val_ood" / s / "manifest.jsonl" for s in OOD_VALS}
    if not all(p.is_file() for p in paths.values()):
        return None
    sets = {name: read_manifest(p)[: args.ood_val_count if name in OOD_VALS else None] for name, p in paths.items()}
    for name, parts in LONG.items():
        out = run / "data" / "val_long" / name
        join_clips([r for s in parts for r in sets[s]], out)
        sets[name] = read_manifest(out / "manifest.jsonl")
    return sets


def stage_tune(args, run: Path) -> None:
    files, sets = das_files(run), validation_sets(args, run)
    if files is None or sets is None:
        return log("tune: waits for DAS's adapters (stage train) and the validation sets (stages generate, split)")
    systems = [("original", config("base", []), [])]
    systems += [(label(c), config("adml", files, c["tau"], c["strategy"]), files) for c in candidates()]
    scores = score_all(args, run, "tune", [(*system, s) for system in systems for s in sets], sets)
    if len(scores) < len(systems) * len(sets):
        return log("tune: some scores are still being made (by another process?); no choice written yet")
    wer = {name: {s: scores[name, s]["wer"] for s in sets} for name, _, _ in systems}
    rows = [{**c, "wer": wer[label(c)]} for c in candidates()]
    choice = choose(rows, wer["original"])
    (run / "tune.json").write_text(json.dumps({"chosen": choice, "original": wer["original"], "candidates": rows,
                                               "sizes": {s: len(r) for s, r in sets.items()}}, indent=1) + "\n")
    log(f"tune: chose {choice}")
