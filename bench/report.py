"""Tables and plots from a bench/reproduce.py run folder: report.md and plots/*.png.

    python bench/report.py runs/paper

Cells are corpus WER in percent with, in brackets, the relative change against the original
model: (WER - WER_original) / WER_original, so a negative change is an improvement. A missing
cell (a model not trained or not scored yet) prints as "-". Plots need matplotlib
(`pip install -e '.[plots]'`); without it report.md is still written and says so.
"""

import json
import re
import sys
from pathlib import Path

import bootstrap

DOMAINS = ("music", "weather", "sports")
OOD = ("librivox", "cards", "asterisk")
TAUS = (0.0, 0.01, 0.025, 0.05, 0.1, 1.0)


def load_results(run: Path) -> dict[tuple[str, str], dict]:
    """(system, test set) -> that evaluation's counts."""
    out = {}
    for path in sorted((run / "eval").glob("*/*.json")):
        r = json.loads(path.read_text())
        out[(r["system"], r["test_set"])] = r
    # A τ-sweep score made with other adapters, reading or end rule than DAS's (a sweep still
    # being redone after the tune stage changed its choice) is left out, not mixed in.
    das = scored_das_config(out)
    if das:
        out = {key: r for key, r in out.items() if not key[0].startswith("DAS tau=")
               or sweep_key(r.get("config") or {}) == sweep_key(das)}
    return out


def sweep_key(config: dict) -> tuple:
    """What DAS and its τ sweep share: the adapters, the reading of Eq. (3), the end and switch rules."""
    return config.get("files"), config.get("strategy"), config.get("end", "any"), config.get("switch", "token")


def pooled(results: dict, system: str, sets) -> float | None:
    """Corpus WER over several test sets together (edits summed, then divided)."""
    rows = [results.get((system, s)) for s in sets]
    if not all(rows):
        return None
    errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    return 100 * errors / sum(r["ref_words"] for r in rows)


def mean(results: dict, system: str, sets) -> float | None:
    """Unweighted mean of per-set WERs (the paper's three domains weigh the same)."""
    rows = [results.get((system, s)) for s in sets]
    return sum(r["wer"] for r in rows) / len(rows) if all(rows) else None


def cell(value: float | None, reference: float | None) -> str:
    if value is None:
        return "-"
    if reference is None or reference == 0:
        return f"{value:.2f}"
    return f"{value:.2f} ({100 * (value - reference) / reference:+.1f}%)"


def wer(results, system, s):
    r = results.get((system, s))
    return r["wer"] if r else None


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def domain_table(results, systems: list[tuple[str, str]]) -> str:
    """Rows of systems, columns the three in-domain sets and their mean."""
    rows = []
    for label, system in systems:
        rows.append([label] + [cell(wer(results, system, d), wer(results, "original", d)) for d in DOMAINS]
                    + [cell(mean(results, system, DOMAINS), mean(results, "original", DOMAINS))])
    return table(["model", *DOMAINS, "mean"], rows)


def das_label(results) -> str:
    """"DAS (τ = 0.025)", with the reading of Eq. (3) when the tune stage chose `max-only`,
    the end rule when it chose `base` and the switch rule when it chose `word`."""
    config = das_config(results)
    reading = "" if config["strategy"] == "das" else f", {config['strategy']}"
    end = "" if config.get("end", "any") == "any" else f", {config['end']} ends"
    switch = "" if config.get("switch", "token") == "token" else f", switches by {config['switch']}"
    files = config.get("files", [])
    replay = [m[1] for f in files if (m := re.search(r"-(replay(?:-mixed)?(?:-w[^-]+)?)-lr", f))]
    data = (", adapters on statements too" if any("-stmt-" in f for f in files)
            else ", adapters " + trained_on(replay[0]).removeprefix("requests ") if replay else "")
    return f"DAS (τ = {config['tau']:g}{reading}{end}{switch}{data})"


def table4(results) -> str:
    systems = [("Original", "original")]
    systems += [(f"FT ({d})", f"ft-{d}") for d in DOMAINS] + [(f"LoRA-ft ({d})", f"lora-{d}") for d in DOMAINS]
    systems += [("FT-Multi", "ft-multi"), ("LoRA-ft-Multi", "lora-multi"), (das_label(results), "DAS")]
    return domain_table(results, systems)


def table2(results) -> str:
    return domain_table(results, [("original", "original"), ("ft enc-dec", f"ft-enc-dec-{DOMAINS[0]}"),
                                  ("ft dec (last 3 layers)", f"ft-last3-{DOMAINS[0]}"),
                                  ("ft full dec (6 layers)", f"ft-{DOMAINS[0]}"),
                                  ("LoRA-ft (q, v)", f"lora-{DOMAINS[0]}")])


def table5(results) -> str:
    rows = []
    for label, system in (("Original", "original"), ("LoRA-ft-Multi", "lora-multi"), ("FT-Multi", "ft-multi"),
                          (das_label(results), "DAS")):
        rows.append([label] + [cell(wer(results, system, s), wer(results, "original", s)) for s in OOD]
                    + [cell(pooled(results, system, OOD), pooled(results, "original", OOD))])
    return table(["model", *OOD, "all real speech (pooled)"], rows)


def intervals_table(results) -> str:
    """95% paired-bootstrap intervals of relative changes (bench/bootstrap.py): whether the
    test sets can tell the systems apart, and a target met from one missed."""
    rows = []
    for label, old, new in (("DAS against the original", "original", "DAS"),
                            ("LoRA-ft-Multi against the original", "original", "lora-multi"),
                            ("DAS against LoRA-ft-Multi", "lora-multi", "DAS")):
        cells = []
        for sets in [(d,) for d in DOMAINS] + [OOD]:
            pair = [results.get((old, s)) for s in sets], [results.get((new, s)) for s in sets]
            scored = all(r and "details" in r for r in pair[0] + pair[1])
            cells.append(bootstrap.describe(bootstrap.relative_change(*bootstrap.paired(*pair))) if scored else "-")
        rows.append([label] + cells)
    return table(["change", *DOMAINS, "all real speech (pooled)"], rows)


def scored_das_config(results) -> dict | None:
    """The config DAS's scores record (None for scores made before configs were recorded)."""
    return next((r["config"] for (system, _), r in results.items() if system == "DAS" and r.get("config")), None)


def das_config(results) -> dict:
    """DAS's τ, strategy and end rule as scored (the tune stage's choice; the defaults before it)."""
    return scored_das_config(results) or {"tau": 0.025, "strategy": "das"}


def tau_name(results, t: float) -> str:
    """The system scored at τ = t: "DAS" itself at its own τ, else "DAS tau=t"."""
    return "DAS" if t == das_config(results)["tau"] else f"DAS tau={t:g}"


def sweep_taus(results) -> list[float]:
    return sorted(set(TAUS) | {das_config(results)["tau"]})


def tau_table(results) -> str:
    rows = []
    for t in sweep_taus(results):
        s = tau_name(results, t)
        rows.append([f"{t:g}"] + [cell(wer(results, s, d), wer(results, "original", d)) for d in DOMAINS]
                    + [cell(mean(results, s, DOMAINS), mean(results, "original", DOMAINS)),
                       cell(pooled(results, s, OOD), pooled(results, "original", OOD))])
    return table(["τ", *DOMAINS, "in-domain mean", "real speech (pooled)"], rows)


def tune_section(run: Path) -> str:
    """The tune stage's candidates on the validation sets, and what it chose (bench/tune.py)."""
    path = run / "tune.json"
    if not path.is_file():
        return "(not run yet: stage tune)"
    t = json.loads(path.read_text())
    first, chosen = t.get("first", t["chosen"]), t["chosen"]
    if "from" in t:  # reproduce.py --tune-from
        return (f"Not tuned on this run: DAS takes the settings of {t['from']} (adapters trained on "
                f"{trained_on(chosen.get('data', 'requests'))} at lr {chosen['lr']:g}, {chosen['strategy']}, "
                f"τ = {chosen['tau']:g}, {chosen.get('end', 'any')} may end the transcript, "
                f"switch at {chosen.get('switch', 'token')}).")
    sizes = ", ".join(f"{s} {n}" for s, n in t["sizes"].items())
    out = (f"Validation WER (utterances or clips: {sizes}).\n\nStep 1, on the short sets:\n\n"
           + tune_table(t["candidates"], t["original"], ["lr", "strategy", "tau"], ["LoRA lr", "reading", "τ"])
           + f"\n\nStep 1 chose: lr {first['lr']}, {first['strategy']}, τ = {first['tau']:g}: {first['why']}.")
    second = t.get("second", chosen)
    if "end_candidates" in t:
        out += (f"\n\nStep 2, at lr {first['lr']} and {first['strategy']}, on the short and long-form sets:\n\n"
                + tune_table(t["end_candidates"], t["original_all"], ["tau", "end"], ["τ", "who ends"])
                + f"\n\n{'Step 2 chose' if 'second' in t else 'Chosen'}: lr {second['lr']}, {second['strategy']}, "
                  f"τ = {second['tau']:g}, {second.get('end', 'any')} may end the transcript: {second['why']}.")
    before_route = t.get("before_route", chosen)  # steps 3 and 4 chose among token-level rules
    if "switch_candidates" in t:
        third = t.get("third", before_route)
        done = "third" in t or "route_candidates" in t
        out += (f"\n\nStep 3, at lr {second['lr']}, {second['strategy']} and end {second['end']}, on every set:\n\n"
                + tune_table(t["switch_candidates"], t["original_all"], ["tau", "switch"], ["τ", "switch"])
                + f"\n\n{'Step 3 chose' if done else 'Chosen'}: lr {third['lr']}, {third['strategy']}, "
                  f"τ = {third['tau']:g}, {third['end']} may end the transcript, streams switch "
                  f"{'at any token' if third['switch'] == 'token' else 'only between words'}: {third['why']}.")
    if "data_candidates" in t:
        kinds = list(dict.fromkeys(trained_on(c["data"]) for c in t["data_candidates"]))
        out += ("\n\nStep 4, at step 3's choice, adapters trained on "
                + (", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]) + ":\n\n"
                + tune_table(t["data_candidates"], t["original_all"], ["data", "lr", "tau"], ["training", "lr", "τ"])
                + f"\n\n{'Step 4 chose' if 'route_candidates' in t else 'Chosen'}: the adapters trained on "
                  f"{trained_on(before_route['data'])} at lr {before_route['lr']:g}, τ = {before_route['tau']:g}: "
                  f"{before_route['why']}.")
    if "route_candidates" in t:
        out += ("\n\nStep 5, routing (each utterance's whole transcript from one stream, adml_route.py) with "
                "those adapters at each τ, beside that choice, on every set:\n\n"
                + tune_table(t["route_candidates"], t["original_all"], ["strategy", "tau"], ["rule", "τ"])
                + f"\n\nChosen: {chosen['strategy']}, τ = {chosen['tau']:g}: {chosen['why']}.")
    return out


def trained_on(data: str) -> str:
    """A tune step 4 candidate's training text (tune.DATA, or reproduce.replay_data_kind's
    "replay[-mixed][-w<weight>]"), in words."""
    words = {"requests": "requests alone", "statements": "requests and statements"}
    if data in words:
        return words[data]
    mixed, weight = re.fullmatch(r"replay(-mixed)?(?:-w(.+))?", data).groups()
    return ("requests with replay" + (" of fortunes and messages" if mixed else "")
            + (f" at weight {weight}" if weight else ""))


def tune_table(candidates: list[dict], original: dict, keys: list[str], header: list[str]) -> str:
    """One step's candidates: their settings, WER per validation set and in-domain mean."""
    sets = list(original)
    ind = [s for s in sets if s in DOMAINS or s == "long-domains"]  # tune.IN_DOMAIN

    def in_mean(wers):
        return sum(wers[s] for s in ind) / len(ind)

    rows = [["original"] + ["-"] * (len(keys) - 1) + [f"{original[s]:.2f}" for s in sets]
            + [f"{in_mean(original):.2f}"]]
    for c in candidates:
        rows.append([f"{c[k]:g}" if isinstance(c[k], float) else str(c[k]) for k in keys]
                    + [cell(c["wer"][s], original[s]) for s in sets] + [cell(in_mean(c["wer"]), in_mean(original))])
    return table(header + sets + ["in-domain mean"], rows)


def table6(run: Path) -> str:
    path = run / "eval" / "table6.json"
    if not path.is_file():
        return "(not measured yet: stage table6)"
    t6 = json.loads(path.read_text())
    rows = [["original", f"{t6['original']:.4f}", "-", "-", "-"]]
    for r in t6["rows"]:
        rows.append([f"{r['k']}-domain", f"{r['rtf']:.4f}", f"{100 * r['dP']:+.1f}%",
                     "-" if r.get("dS") is None else f"{100 * r['dS']:+.1f}%",
                     "-" if r.get("speedup") is None else f"{r['speedup']:.1f}x"])
    return f"{t6['setup']}\n\n" + table(["adapters", "RTF", "%ΔP", "%ΔS", "speed-up"], rows)


def data_section(run: Path) -> str:
    sizes_path = run / "data" / "sizes.json"
    if not sizes_path.is_file():
        return "(no data split yet)"
    sizes = json.loads(sizes_path.read_text())
    rows = [[d, str(s["fit"]), str(s["val"]), f"{s['fit_seconds'] / 60:.1f}", str(s["test"]),
             str(s["test_dropped_overlap"]), f"{s['test_seconds'] / 60:.1f}"] for d, s in sizes.items()]
    voices = sorted({v for s in sizes.values() for v in s["voices"]})
    test_voices = sorted({v for s in sizes.values() for v in s["test_voices"]})
    return (table(["domain", "train utts", "val utts", "train min", "test utts", "test dropped (text in train)",
                   "test min"], rows)
            + f"\n\nTraining voices: {', '.join(voices)}. Test voices: {', '.join(test_voices)}."
            + "\n" + "".join(ood_val_line(p) for p in sorted((run / "data" / "val_ood").glob("*/manifest.jsonl"))))


def ood_val_line(manifest: Path) -> str:
    """One out-of-domain validation set (the tune stage's): its size and voices."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    voices = sorted({r["voice"] for r in rows})
    return (f"\n- out-of-domain validation set {manifest.parent.name}: {len(rows)} utterances, "
            f"{sum(r['duration'] for r in rows) / 60:.1f} min, voices {', '.join(voices)}.")


def models_section(run: Path) -> str:
    rows = []
    for path in sorted((run / "models").glob("*.done.json")):
        d = json.loads(path.read_text())
        rows.append([d["name"], d["method"], "+".join(d["data"]), f"{d['lr']:g}", f"{d['val_loss']:.4f}",
                     f"{d['best_step']}/{d['total_steps']}",
                     "-" if d.get("seconds") is None else f"{d['seconds'] / 60:.1f}"])
    return table(["run", "method", "data", "lr", "best val loss", "best step / steps", "minutes"], rows)


def plots(run: Path, results) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "Plots skipped: matplotlib is not installed (pip install -e '.[plots]')."
    out = run / "plots"
    out.mkdir(exist_ok=True)
    # 1. WER per method and domain.
    systems = [("Original", "original"), ("FT", "ft-{d}"), ("LoRA-ft", "lora-{d}"), ("FT-Multi", "ft-multi"),
               ("LoRA-ft-Multi", "lora-multi"), ("DAS", "DAS")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(systems)
    for i, (label, pattern) in enumerate(systems):
        values = [wer(results, pattern.format(d=d), d) or 0 for d in DOMAINS]
        ax.bar([x + i * width for x in range(len(DOMAINS))], values, width, label=label)
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(DOMAINS))], DOMAINS)
    ax.set_ylabel("WER %")
    ax.set_title("In-domain WER (FT and LoRA-ft: the adapter of that domain)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "wer_by_method.png", dpi=120)
    plt.close(fig)
    # 2. τ sweep.
    fig, ax = plt.subplots(figsize=(6, 4))
    taus = sweep_taus(results)
    xs = list(range(len(taus)))
    ax.plot(xs, [mean(results, tau_name(results, t), DOMAINS) for t in taus], "o-", label="in-domain mean")
    ax.plot(xs, [pooled(results, tau_name(results, t), OOD) for t in taus], "s-", label="real speech (pooled)")
    ax.set_xticks(xs, [f"{t:g}" for t in taus])
    ax.set_xlabel("τ")
    ax.set_ylabel("WER %")
    ax.set_title("DAS: the confidence threshold τ")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "tau_sweep.png", dpi=120)
    plt.close(fig)
    # 3. RTF against the number of adapters.
    t6_path = run / "eval" / "table6.json"
    if t6_path.is_file():
        t6 = json.loads(t6_path.read_text())
        fig, ax = plt.subplots(figsize=(6, 4))
        ks = [0] + [r["k"] for r in t6["rows"]]
        ax.plot(ks, [t6["original"]] + [r["rtf"] for r in t6["rows"]], "o-", label="ADML, batched B(AX)")
        seq = [(r["k"], r["rtf_sequential"]) for r in t6["rows"] if r.get("rtf_sequential")]
        if seq:
            ax.plot([0] + [k for k, _ in seq], [t6["original"]] + [v for _, v in seq], "s--", label="sequential")
        ax.set_xlabel("adapters")
        ax.set_ylabel("RTF")
        ax.set_title("Decoding cost against the number of adapters")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rtf_vs_adapters.png", dpi=120)
        plt.close(fig)
    return f"Plots: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}."


def write(run: Path) -> Path:
    results = load_results(run)
    commands = (run / "commands.txt").read_text() if (run / "commands.txt").is_file() else ""
    parts = [
        f"# Study results ({run})",
        "Cells: WER % (relative change against the original model; negative is better).",
        "## Data\n\n" + data_section(run),
        "## Training runs\n\n" + models_section(run),
        "## Tuning DAS on validation data\n\n" + tune_section(run),
        "## Table IV: in-domain test sets\n\n" + table4(results),
        f"## Table II: which part to fine-tune ({DOMAINS[0]} data)\n\n" + table2(results),
        "## Table V: real speech, out of domain\n\n" + table5(results),
        "## How sure: 95% intervals of the changes\n\nRelative change of the summed word errors, and its 95% "
        "interval from a paired bootstrap over utterances (`bench/bootstrap.py`). An interval that holds 0, "
        "or a target, means the test set cannot tell.\n\n" + intervals_table(results),
        "## τ sweep (DAS)\n\n" + tau_table(results),
        "## Table VI: real-time factor\n\n" + table6(run),
        plots(run, results),
        "## Commands run\n\n```\n" + commands + "```",
    ]
    path = run / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/paper"))
