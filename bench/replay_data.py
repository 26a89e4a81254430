"""The out-of-domain speech that `train --replay` keeps adapters close to the base model on
(replay.py): sentences people wrote, from the full fortune collection (apt install fortunes),
spoken by the training voices.

Which texts: every one-line entry (`study_data.fortune_texts`' rules) of the categories
below, taken in turn so that no one topic dominates. Left out: the `fortunes` file (the
tune stage's "fortunes" validation set comes from it), `sports` and `songs-poems` (two of
the study's domains), and the collections of jokes in dialogue, code and foreign words.
Why the training voices: the replay term should teach "away from your domain, stay the
base", not "in these unheard voices, stay the base"; the validation sets keep voices of
their own (study_data.OOD_VAL_VOICES), so they still measure what the adapters forget.

    python bench/replay_data.py --run runs/session --count 600
"""

import argparse
from pathlib import Path

from study_data import FORTUNES, TRAIN_VOICES, fortune_texts, log, speak_texts

from datagen.clean import normalise

COUNT = 600  # what reproduce.py --replay-lrs speaks
CATEGORIES = ("people", "work", "miscellaneous", "platitudes", "science", "politics", "wisdom", "art", "food",
              "education", "law", "kids", "love", "pets", "medicine", "humorists")


def replay_texts(count: int, folder: Path = FORTUNES.parent) -> list[str]:
    """`count` texts, one category after another in turn, none repeated and none in the
    validation set's file (`folder`/fortunes)."""
    missing = [c for c in CATEGORIES + (FORTUNES.name,) if not (folder / c).is_file()]
    if missing:
        raise SystemExit(f"{folder}: no {', '.join(missing)} (apt install fortunes-min fortunes)")
    seen = {normalise(t) for t in fortune_texts(folder / FORTUNES.name, 10**6)}
    pools = [fortune_texts(folder / c, 10**6) for c in CATEGORIES]
    out = []
    while len(out) < count and any(pools):
        for pool in pools:
            while pool:
                text = pool.pop(0)
                if normalise(text) not in seen:
                    seen.add(normalise(text))
                    out.append(text)
                    break
    if len(out) < count:
        raise SystemExit(f"{folder}: only {len(out)} usable texts, fewer than --count {count}")
    return out[:count]


def speak(run: Path, count: int) -> Path:
    """Speaks the texts into run/data/replay; resumes where a run stopped."""
    out = run / "data" / "replay"
    rows = speak_texts(replay_texts(count), out, TRAIN_VOICES)
    log(f"replay: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 60:.1f} min, in {out}")
    return out / "manifest.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the study's run folder")
    parser.add_argument("--count", type=int, default=COUNT, help="how many utterances")
    args = parser.parse_args()
    speak(Path(args.run), args.count)


if __name__ == "__main__":
    main()
