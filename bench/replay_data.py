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

`--texts mixed` (reproduce.py --replay-texts mixed) takes half the texts from fortunes and
half from the messages programs show their users ("Authentication is required to set the
system locale.", "Please choose a different password."): the English originals (msgids) of
the gettext catalogs of MESSAGE_CATALOGS, taken in turn. Fortunes are quips; a recognizer
also hears notices, prompts and instructions, and an adapter that never replayed that kind
of speech may read its own requests into it. It writes run/data/replay-mixed.

    python bench/replay_data.py --run runs/session --count 600 [--texts mixed]
"""

import argparse
import hashlib
import re
import struct
from pathlib import Path

from study_data import FORTUNES, TRAIN_VOICES, fortune_texts, log, speak_texts

from datagen.clean import normalise

COUNT = 600  # what reproduce.py --replay-lrs speaks
CATEGORIES = ("people", "work", "miscellaneous", "platitudes", "science", "politics", "wisdom", "art", "food",
              "education", "law", "kids", "love", "pets", "medicine", "humorists")
TEXTS = ("fortunes", "mixed")
# gettext catalogs of programs' messages -> the Debian package that installs them. Any
# locale's catalog holds the English originals; German's is complete for all of these.
MESSAGE_CATALOGS = {
    "git": "git", "gnutls30": "libgnutls30", "gsettings-desktop-schemas": "gsettings-desktop-schemas",
    "appstream": "appstream", "wget": "wget", "systemd": "systemd", "gnupg2": "gnupg-l10n",
    "coreutils": "coreutils", "apt": "apt", "glib20": "libglib2.0-data", "PackageKit": "packagekit",
    "shadow": "login", "Linux-PAM": "libpam-runtime", "dpkg": "dpkg", "adduser": "adduser", "tar": "tar",
    "findutils": "findutils", "diffutils": "diffutils", "bash": "bash", "gettext-tools": "gettext"}
LOCALE = Path("/usr/share/locale/de/LC_MESSAGES")


def replay_texts(count: int, folder: Path = FORTUNES.parent) -> list[str]:
    """`count` texts, one category after another in turn, none repeated and none in the
    validation set's file (`folder`/fortunes)."""
    missing = [c for c in CATEGORIES + (FORTUNES.name,) if not (folder / c).is_file()]
    if missing:
        raise SystemExit(f"{folder}: no {', '.join(missing)} (apt install fortunes-min fortunes)")
    seen = {normalise(t) for t in fortune_texts(folder / FORTUNES.name, 10**6)}
    return _in_turn([fortune_texts(folder / c, 10**6) for c in CATEGORIES], count, seen, folder)


def msgids(path: Path) -> list[str]:
    """The original strings of a GNU .mo catalog. Its header: magic, revision, the number of
    strings N and the offset of a table of N (length, offset) pairs, one per original."""
    data = path.read_bytes()
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(struct.unpack("<I", data[:4])[0])
    if order is None:
        raise SystemExit(f"{path}: not a gettext .mo catalog")
    n, table = struct.unpack(order + "4xII", data[4:16])
    out = []
    for i in range(n):
        length, offset = struct.unpack(order + "II", data[table + 8 * i: table + 8 * i + 8])
        # A plural entry is "singular\0plural": the singular is the sentence.
        out.append(data[offset: offset + length].split(b"\0")[0].decode("utf-8", "replace"))
    return out


def message_texts(count: int, folder: Path = LOCALE) -> list[str]:
    """`count` program messages that read as one spoken sentence (a capital first, a full stop
    or question mark last, 4 to 25 words, letters and punctuation only: no "%s", no options,
    dotted names or placeholders in capitals), the catalogs taken in turn, each in a fixed
    pseudo-random order (a catalog is sorted, which would give every "A..." message first)."""
    missing = [pkg for name, pkg in MESSAGE_CATALOGS.items() if not (folder / f"{name}.mo").is_file()]
    if missing:
        raise SystemExit(f"{folder}: catalogs missing (apt install {' '.join(missing)})")
    pools = []
    for name in MESSAGE_CATALOGS:
        texts = [" ".join(m.split()) for m in msgids(folder / f"{name}.mo")]
        texts = [t for t in texts if re.fullmatch(r"[A-Z][A-Za-z ,.'?!-]*[.?!]", t) and 4 <= len(t.split()) <= 25
                 and not re.search(r"(^|\s)-|\w\.\w|\b[A-Z]{2,}\b", t)]  # options, dotted names, FILE
        pools.append(sorted(texts, key=lambda t: hashlib.sha1(t.encode()).hexdigest()))
    return _in_turn(pools, count, set(), folder)


def _in_turn(pools: list[list[str]], count: int, seen: set, where: Path) -> list[str]:
    """One text from each pool in turn until `count`, skipping what `seen` (normalised) holds."""
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
        raise SystemExit(f"{where}: only {len(out)} usable texts, fewer than --count {count}")
    return out[:count]


def texts_for(kind: str, count: int) -> list[str]:
    """The replay texts of a kind: fortunes alone, or fortunes and messages alternating."""
    if kind == "fortunes":
        return replay_texts(count)
    half = message_texts(count // 2)
    return [t for pair in zip(replay_texts(count - count // 2), half + [None]) for t in pair if t]


def speak(run: Path, count: int, kind: str = "fortunes") -> Path:
    """Speaks the texts into run/data/replay (fortunes) or replay-<kind>; resumes where a run stopped."""
    out = run / "data" / ("replay" if kind == "fortunes" else f"replay-{kind}")
    rows = speak_texts(texts_for(kind, count), out, TRAIN_VOICES)
    log(f"replay: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 60:.1f} min, in {out}")
    return out / "manifest.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the study's run folder")
    parser.add_argument("--count", type=int, default=COUNT, help="how many utterances")
    parser.add_argument("--texts", choices=TEXTS, default="fortunes", help="fortunes alone, or half program messages")
    args = parser.parse_args()
    speak(Path(args.run), args.count, args.texts)


if __name__ == "__main__":
    main()
