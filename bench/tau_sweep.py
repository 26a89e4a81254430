"""DAS's τ sweep for any adapters on any test manifests, outside a study run: WER per set and
pooled, each τ against the base model, in one table.

    python bench/tau_sweep.py --loras adapters/music.st,adapters/weather.st,adapters/sports.st \\
        --data real/librivox.jsonl real/cards.jsonl real/asterisk.jsonl --out runs/sweep

The systems share one encoder memo on disk (bench/scorer.py), so each τ after the first
costs only its decoding. The scores land in OUT/scores/<system>/<set>.json, as reproduce.py's
eval stage writes them (`bench/bootstrap.py OUT/scores/original OUT/scores/tau=0.01` gives
intervals): rerun to resume, or start a second copy (OMP_NUM_THREADS=1 each) to share the
work. The ADML options other than τ and `--strategy` are das.py's defaults (the shipped
setting). `--label` names the adapters (systems "LABEL tau=0.01"), so that several sets of
adapters share one OUT, its encoder memo and the original's scores. `--plain NAME=FILE` adds
one adapter decoded alone (merged into the base, as das.py does with one file), such as
LoRA-ft-Multi, to compare with DAS on the same sets; `--loras` may then be left out.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import das  # noqa: E402
from evaluate import read_manifest  # noqa: E402
from report import pooled  # noqa: E402
from scorer import Scorer  # noqa: E402
from study_data import read_rows  # noqa: E402


def systems(loras: list[str], taus: list[float], label: str = "", plain: dict[str, str] | None = None,
            strategy: str = das.DEFAULT_STRATEGY) -> list[tuple[str, dict, list[str]]]:
    """(name, Scorer config, adapter files): the base first, then each plain adapter (name:
    file; reproduce.py's config for its single models), then DAS at each τ."""
    out = [("original", Scorer.config("base", [], 1.0), [])]
    out += [(name, Scorer.config("lora", [file], 0.0), [file]) for name, file in (plain or {}).items()]
    for tau in taus if loras else []:
        config = Scorer.config("adml", loras, tau, strategy, das.DEFAULT_END, das.DEFAULT_SWITCH)
        out.append((f"{label} tau={tau:g}".strip(), config, loras))
    return out


def table(results: dict, names: list[str], sets: list[str]) -> str:
    """Markdown: WER per set and pooled, with the pooled change against the original."""
    base = pooled(results, "original", sets)
    lines = ["| system | " + " | ".join(sets) + " | pooled | change |", "|---" * (len(sets) + 3) + "|"]
    for name in names:
        wers = [f"{results[(name, s)]['wer']:.2f}" if (name, s) in results else "-" for s in sets]
        p = pooled(results, name, sets)
        both = p is not None and base
        cells = [*wers, f"{p:.2f}" if p is not None else "-", f"{100 * (p / base - 1):+.1f}%" if both else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def name_and_file(text: str) -> tuple[str, str]:
    """--plain's NAME=FILE as (name, file)."""
    name, _, file = text.partition("=")
    if not name.strip() or not file.strip():
        raise argparse.ArgumentTypeError(f"NAME=FILE, not {text!r}")
    return name.strip(), file.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loras", default="", help="comma-separated adapter files (.st) for DAS")
    p.add_argument("--plain", action="append", default=[], type=name_and_file, metavar="NAME=FILE",
                   help="also score this adapter alone, merged (e.g. lora-multi=runs/x/lora-multi.st); repeatable")
    p.add_argument("--data", nargs="+", required=True, type=Path, help="test manifests (.jsonl), one per set")
    p.add_argument("--taus", default="0,0.01,0.025,0.05,0.1,1", help="comma-separated τ values")
    p.add_argument("--out", required=True, type=Path, help="folder for scores/ and the encoder memo")
    p.add_argument("--label", default="", help="a name for these adapters, before each DAS system's τ")
    p.add_argument("--strategy", default=das.DEFAULT_STRATEGY, choices=das.STRATEGIES,
                   help="DAS's selection rule (das.py's default; give --label a name that says it otherwise)")
    p.add_argument("--model", default="base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    loras = [f.strip() for f in args.loras.split(",") if f.strip()]
    plain = dict(args.plain)
    if not loras and not plain:
        p.error("nothing to score against the original: give --loras, --plain or both")
    missing = [str(f) for f in [*loras, *plain.values(), *args.data] if not Path(f).is_file()]
    if missing:
        p.error(f"no such file: {', '.join(missing)}")
    taus = [das.tau_argument(t) for t in args.taus.split(",")]
    sets = [d.stem if d.stem != "manifest" else d.parent.name for d in args.data]
    scorer = Scorer(args, args.out)
    results = {}
    todo = systems(loras, taus, args.label, plain, args.strategy)
    for name, config, files in todo:
        for data, set_name in zip(args.data, sets):
            out = args.out / "scores" / name / f"{set_name}.json"
            scorer.score(name, config, files, read_manifest(data), set_name, out)
            if Scorer.is_done(out, config):
                results[(name, set_name)] = read_rows(out)[0]
    print(table(results, [name for name, _, _ in todo], sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
