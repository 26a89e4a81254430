"""An experiment on the training text: do adapters trained on requests alone learn a
request-style language model that hurts other speech (RESULTS.md, real speech)?

datagen keeps only requests (`datagen.clean.check`'s not_a_request rule). The texts that rule
dropped while generating the training data are in-domain statements ("The score of the
Arsenal game was 1-0."). This script takes them back from each domain's rejects.jsonl,
checks them again with every other rule (duplicates against that domain's training,
validation and test texts included), speaks them with the training voices, and writes
runs/<run>/data/statements/<domain>/manifest.jsonl. bench/reproduce.py --statements-lrs
then trains a second set of adapters on the training split plus these (its train stage
calls `speak` itself), and the tune stage weighs them against the first on validation
speech. No LLM call: it costs TTS time only.

    python bench/statements.py --run runs/session
"""

import argparse
from pathlib import Path

from study_data import DOMAINS, TRAIN_VOICES, log, read_rows, speak_texts

from datagen.clean import check, normalise


def statements(run: Path, domain: str) -> list[str]:
    """The domain's rejected statements that pass every other rule, in their order."""
    folder = run / "data" / "train" / domain
    seen = {normalise(r["text"]) for r in read_rows(folder / "manifest.jsonl")}
    seen |= {normalise(r["text"]) for r in read_rows(run / "data" / "test_raw" / domain / "test.jsonl")}
    out = []
    for row in read_rows(folder / "rejects.jsonl"):
        if row["reason"].startswith("not_a_request") and check(row["text"], seen, requests_only=False) is None:
            seen.add(normalise(row["text"]))
            out.append(row["text"])
    return out


def speak(run: Path, domain: str) -> Path:
    """Speaks the statements into the domain's folder; resumes where a run stopped."""
    out = run / "data" / "statements" / domain
    rows = speak_texts(statements(run, domain), out, TRAIN_VOICES, {"domain": domain})
    log(f"statements: {domain}: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 60:.1f} min, in {out}")
    return out / "manifest.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="the study's run folder (bench/reproduce.py --run)")
    args = p.parse_args()
    for domain in DOMAINS:
        speak(args.run, domain)


if __name__ == "__main__":
    main()
