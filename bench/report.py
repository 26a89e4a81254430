"""report.md and plots/*.png from a bench/reproduce.py run folder: the paper's tables and the study's choices.

    python bench/report.py runs/paper

Cells are corpus WER in percent with, in brackets, the relative change against the original
model, (WER - WER_original) / WER_original: negative is better. A model not trained or not
scored yet prints as "-", never as a made-up number.
"""

import json
import sys
from pathlib import Path

import bootstrap
from study_data import DOMAINS, OOD_SETS, read_rows
from tune import IN_DOMAIN


def load_results(run: Path) -> dict[tuple[str, str], dict]:
    """(system, test set) -> score. A τ-sweep score made with other adapters or another strategy
    than DAS's (a sweep still being redone after the tune stage chose again) is left out."""
    rows = [read_rows(path)[0] for path in sorted(run.glob("eval/*/*.json"))]
    out = {(r["system"], r["test_set"]): r for r in rows}
    das = das_config(out)
    return {key: r for key, r in out.items() if not das or not key[0].startswith("DAS tau=")
            or {**r["config"], "tau": das["tau"]} == das}


def das_config(results) -> dict:
    return next((r["config"] for (system, _), r in results.items() if system == "DAS"), {})


def wer(results, system: str, s: str) -> float | None:
    return results[system, s]["wer"] if (system, s) in results else None


def mean(results, system: str, sets) -> float | None:
    """Unweighted mean of per-set WERs (the paper's three domains weigh the same)."""
    wers = [wer(results, system, s) for s in sets]
    return None if None in wers else sum(wers) / len(wers)


def pooled(results, system: str, sets) -> float | None:
    """Corpus WER over several test sets together (word errors summed, then divided)."""
    rows = [results.get((system, s)) for s in sets]
    if not all(rows):
        return None
    errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    return 100 * errors / sum(r["ref_words"] for r in rows)


def cell(value: float | None, reference: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if not reference else f"{value:.2f} ({100 * (value - reference) / reference:+.1f}%)"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def wer_table(results, systems: list[tuple[str, str]], sets, total, total_name: str) -> str:
    """Rows of (label, system); a column per set, then `total` (mean or pooled) over them."""
    return table(["model", *sets, total_name], [
        [label] + [cell(wer(results, s, x), wer(results, "original", x)) for x in sets]
        + [cell(total(results, s, sets), total(results, "original", sets))] for label, s in systems])


def das_label(results) -> str:
    config = das_config(results)
    return f"DAS ({config['strategy']}, τ = {config['tau']:g})" if config else "DAS"


def table4(results) -> str:
    systems = [("Original", "original"), *((f"FT ({d})", f"ft-{d}") for d in DOMAINS),
               *((f"LoRA-ft ({d})", f"lora-{d}") for d in DOMAINS), ("FT-Multi", "ft-multi"),
               ("LoRA-ft-Multi", "lora-multi"), (das_label(results), "DAS")]
    return wer_table(results, systems, DOMAINS, mean, "mean")


def table2(results) -> str:
    systems = [("original", "original"), ("ft enc-dec", f"ft-enc-dec-{DOMAINS[0]}"),
               ("ft dec (last 3 layers)", f"ft-last3-{DOMAINS[0]}"), ("ft full dec", f"ft-{DOMAINS[0]}"),
               ("LoRA-ft (q, v)", f"lora-{DOMAINS[0]}")]
    return wer_table(results, systems, DOMAINS, mean, "mean")


def table5(results) -> str:
    systems = [("Original", "original"), ("LoRA-ft-Multi", "lora-multi"), ("FT-Multi", "ft-multi"),
               (das_label(results), "DAS")]
    return wer_table(results, systems, OOD_SETS, pooled, "all real speech (pooled)")


def intervals_table(results) -> str:
    """95% paired-bootstrap intervals of relative changes (bench/bootstrap.py): whether the
    test sets can tell the systems apart, and a target met from one missed."""
    rows = []
    for label, old, new in (("DAS against the original", "original", "DAS"),
                            ("LoRA-ft-Multi against the original", "original", "lora-multi"),
                            ("DAS against LoRA-ft-Multi", "lora-multi", "DAS")):
        cells = []
        for sets in [[d] for d in DOMAINS] + [OOD_SETS]:
            pair = [results.get((old, s)) for s in sets], [results.get((new, s)) for s in sets]
            scored = all(r and "details" in r for r in pair[0] + pair[1])
            cells.append(bootstrap.describe(bootstrap.relative_change(*bootstrap.paired(*pair))) if scored else "-")
        rows.append([label, *cells])
    return table(["change", *DOMAINS, "all real speech (pooled)"], rows)


def tau_table(results) -> str:
    """DAS at every τ scored, with the strategy DAS decodes with."""
    taus = sorted({r["config"]["tau"] for (system, _), r in results.items() if system.startswith("DAS")})
    rows = []
    for t in taus:
        s = "DAS" if t == das_config(results).get("tau") else f"DAS tau={t:g}"
        rows.append([f"{t:g}"] + [cell(wer(results, s, d), wer(results, "original", d)) for d in DOMAINS]
                    + [cell(mean(results, s, DOMAINS), mean(results, "original", DOMAINS)),
                       cell(pooled(results, s, OOD_SETS), pooled(results, "original", OOD_SETS))])
    return table(["τ", *DOMAINS, "in-domain mean", "real speech (pooled)"], rows)


def tune_section(run: Path) -> str:
    """The tune stage's candidates on the validation sets, and what it chose (bench/tune.py)."""
    if not (run / "tune.json").is_file():
        return "Not tuned on this run (stage tune): DAS decodes with das.py's defaults."
    t = json.loads((run / "tune.json").read_text())
    sets, original, chosen = list(t["original"]), t["original"], t["chosen"]
    ind = [s for s in sets if s in IN_DOMAIN]

    def in_mean(wers):
        return sum(wers[s] for s in ind) / len(ind)

    rows = [["original", "-"] + [f"{original[s]:.2f}" for s in sets] + [f"{in_mean(original):.2f}"]]
    rows += [[c["strategy"], f"{c['tau']:g}"] + [cell(c["wer"][s], original[s]) for s in sets]
             + [cell(in_mean(c["wer"]), in_mean(original))] for c in t["candidates"]]
    sizes = ", ".join(f"{s} {n}" for s, n in t["sizes"].items())
    return (f"Validation WER (utterances or long clips: {sizes}).\n\n"
            + table(["strategy", "τ", *sets, "in-domain mean"], rows)
            + f"\n\nChosen: {chosen['strategy']}, τ = {chosen['tau']:g}: {chosen['why']}.")


def table6(run: Path) -> str:
    if not (run / "eval" / "table6.json").is_file():
        return "(not measured yet: stage table6)"
    t6 = json.loads((run / "eval" / "table6.json").read_text())
    rows = [["original", f"{t6['original']:.4f}", "-", "-", "-"]]
    rows += [[f"{r['k']}-domain", f"{r['rtf']:.4f}", f"{100 * r['dP']:+.1f}%",
              "-" if r.get("dS") is None else f"{100 * r['dS']:+.1f}%",
              "-" if r.get("speedup") is None else f"{r['speedup']:.1f}x"] for r in t6["rows"]]
    return f"{t6['setup']}\n\n" + table(["adapters", "RTF", "%ΔP", "%ΔS", "speed-up"], rows)


def data_section(run: Path) -> str:
    if not (run / "data" / "sizes.json").is_file():
        return "(no data split yet)"
    sizes = json.loads((run / "data" / "sizes.json").read_text())
    rows = [[d, str(s["fit"]), str(s["val"]), f"{s['fit_seconds'] / 60:.1f}", str(s["test"]),
             str(s["test_dropped_overlap"]), f"{s['test_seconds'] / 60:.1f}"] for d, s in sizes.items()]
    voices = ", ".join(sorted({v for s in sizes.values() for v in s["voices"]}))
    test_voices = ", ".join(sorted({v for s in sizes.values() for v in s["test_voices"]}))
    others = [(p.parent.name, read_rows(p)) for p in sorted(run.glob("data/*/manifest.jsonl"))
              + sorted(run.glob("data/val_ood/*/manifest.jsonl"))]  # the replay set, the out-of-domain validation
    return (table(["domain", "train utts", "val utts", "train min", "test utts", "test dropped (text in train)",
                   "test min"], rows) + f"\n\nTraining voices: {voices}. Test voices: {test_voices}.\n"
            + "".join(f"\n- {name}: {len(r)} utterances, {sum(x['duration'] for x in r) / 60:.1f} min, voices "
                      f"{', '.join(sorted({x['voice'] for x in r}))}." for name, r in others))


def models_section(run: Path) -> str:
    done = [json.loads(p.read_text()) for p in sorted(run.glob("models/*.done.json"))]
    return table(["run", "method", "data", "lr", "replay", "best val loss", "best step / steps", "minutes"], [
        [d["name"], d["method"], "+".join(d["data"]), f"{d['lr']:g}", "yes" if d.get("replay") else "no",
         f"{d['val_loss']:.4f}", f"{d['best_step']}/{d['total_steps']}", f"{d['seconds'] / 60:.1f}"] for d in done])


def plots(run: Path, results) -> str:
    """plots/*.png: in-domain WER by method, the τ sweep, and RTF against the number of adapters."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "Plots skipped: matplotlib is not installed (pip install -e '.[plots]')."
    out = run / "plots"
    out.mkdir(exist_ok=True)

    def save(fig, ax, name, title, xlabel, ylabel):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    systems = [("Original", "original"), ("FT", "ft-{d}"), ("LoRA-ft", "lora-{d}"), ("FT-Multi", "ft-multi"),
               ("LoRA-ft-Multi", "lora-multi"), ("DAS", "DAS")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(systems)
    for i, (label, pattern) in enumerate(systems):
        ax.bar([x + i * width for x in range(len(DOMAINS))],
               [wer(results, pattern.format(d=d), d) or 0 for d in DOMAINS], width, label=label)
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(DOMAINS))], DOMAINS)
    save(fig, ax, "wer_by_method.png", "In-domain WER (FT, LoRA-ft: that domain's model)", "", "WER %")
    taus = sorted({r["config"]["tau"] for (system, _), r in results.items() if system.startswith("DAS")})
    names = ["DAS" if t == das_config(results).get("tau") else f"DAS tau={t:g}" for t in taus]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(taus)), [mean(results, s, DOMAINS) for s in names], "o-", label="in-domain mean")
    ax.plot(range(len(taus)), [pooled(results, s, OOD_SETS) for s in names], "s-", label="real speech (pooled)")
    ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
    save(fig, ax, "tau_sweep.png", "DAS against its margin τ", "τ", "WER %")
    if (run / "eval" / "table6.json").is_file():
        t6 = json.loads((run / "eval" / "table6.json").read_text())
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([0] + [r["k"] for r in t6["rows"]], [t6["original"]] + [r["rtf"] for r in t6["rows"]], "o-",
                label="one batched pass, B(AX)")
        seq = [(r["k"], r["rtf_sequential"]) for r in t6["rows"] if r.get("rtf_sequential")]
        if seq:
            ax.plot([0] + [k for k, _ in seq], [t6["original"]] + [v for _, v in seq], "s--", label="sequential")
        save(fig, ax, "rtf_vs_adapters.png", "Decoding cost against the number of adapters", "adapters", "RTF")
    return f"Plots: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}."


def write(run: Path) -> Path:
    results = load_results(run)
    commands = (run / "commands.txt").read_text() if (run / "commands.txt").is_file() else ""
    parts = [
        f"# Study results ({run})",
        "Cells: WER % (relative change against the original model; negative is better).",
        "## Data\n\n" + data_section(run),
        "## Training runs\n\n" + models_section(run),
        "## Tuning DAS on validation speech\n\n" + tune_section(run),
        "## Table IV: in-domain test sets\n\nLoRA-ft (domain) is DAS's adapter for that domain, decoded alone.\n\n"
        + table4(results),
        f"## Table II: which part to fine-tune ({DOMAINS[0]} data)\n\n" + table2(results),
        "## Table V: real speech, out of domain\n\n" + table5(results),
        "## How sure: 95% intervals of the changes\n\nRelative change of the summed word errors and its 95% "
        "interval from a paired bootstrap over utterances (`bench/bootstrap.py`). An interval that holds 0, "
        "or a target, means the test set cannot tell.\n\n" + intervals_table(results),
        "## τ sweep (DAS)\n\nOn the test sets, to report, not to choose: the tune stage chose τ on validation "
        "speech.\n\n" + tau_table(results),
        "## Table VI: real-time factor\n\n" + table6(run),
        plots(run, results),
        "## Commands run\n\n```\n" + commands + "```",
    ]
    path = run / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/paper")
    if not run.is_dir():
        sys.exit(f"{run}: no such run folder")
    write(run)
