"""bench/reproduce.py's tune stage: DAS's settings chosen on validation data, never on a test set.

In-domain validation loss cannot see what an adapter forgets out of its domain, and the paper
leaves one branch of Eq. (3) open. So this stage decodes validation speech with every
candidate and picks one by a rule fixed before any candidate was scored.

Up to five steps, each a grid of candidates:
  1. each LoRA learning rate of the grid (one adapter per domain at each rate), the two
     readings of Eq. (3)'s min-only case (`das`: the least confident stream; `max-only`:
     the base keeps its word; see adml_select.select), and each τ of TUNE_TAUS (at τ = 0 both
     readings take the most confident stream, so it is one candidate), on the short sets;
  2. at step 1's rate and reading: each τ of TUNE_TAUS with each end rule (`any` stream may
     end the transcript, or only the `base`: adml_select.base_ends), on the short sets and two
     long-form sets. Step 1 could not see the end rule: its sets are single sentences;
  3. at step 2's rate, reading and end rule: each τ of TUNE_TAUS with each switch rule (streams
     may change at any `token`, or only between words: adml_select.keep_word), on all sets.
     Step 2's candidates are its `token` half, so only the `word` half is new;
  4. (only with reproduce.py --statements-lrs or --replay-lrs) at step 3's reading, end and
     switch rules: each τ of TUNE_TAUS with the adapters trained on requests alone (step 3's
     rate and scores), on requests plus in-domain statements (bench/statements.py), or on
     requests with out-of-domain replay (train --replay, replay.py) at each replay weight
     (reproduce.py --replay-weights), each at every rate it was trained at, on all sets;
  5. routing (`route`, adml_route.py: each utterance's whole transcript from one stream, not
     the paper's rule) with the adapters of the last step's choice, at each τ of TUNE_TAUS,
     beside that choice itself, on all sets. One decode of every stream per utterance serves
     every τ (scorer.Scorer.routed), so this step costs about one candidate.

Validation sets, none of them a test set:
  <domain>   each domain's validation split (10% of its synthetic training texts, held out
             of training, spoken by the training voices);
  everyday   out of domain: requests about everyday topics (bench/domains/everyday.json, the
             same LLM and pipeline as the training texts);
  fortunes   out of domain: short sentences people wrote (the fortunes-min package), not
             requests to an assistant at all.
Both out-of-domain sets are spoken by study_data.OOD_VAL_VOICES, which neither training nor
the test sets use. Long-form (steps 2 to 4; study_data.join_clips, up to 25 s a clip):
  long-domains   the domains' validation utterances joined (in domain);
  long-ood       everyday and fortunes joined (out of domain).

The rule, for each step: keep the candidates whose WER on each out-of-domain set is at
most MAX_OOD_RISE (2%, the issue's out-of-domain target) above the original model's; among
them take the lowest mean WER over the in-domain sets, ties going to the larger τ (nearer
the original model), then to end `any`, then to switch `token` (Algorithm 1 as written), then
to the requests-only adapters, then to a token-level rule over routing. τ above 1 is the
original model, so the rule can always fall back on it.
"""

import json
from pathlib import Path

from reproduce import model_file, replay_data_kind
from scorer import Scorer
from study_data import DOMAINS, OOD_VAL, OOD_VALS, join_clips, log, read_rows

TUNE_TAUS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3)
READINGS = ("das", "max-only")
ROUTE = "route"  # adml_select.STRATEGIES' whole-transcript rule (step 5)
ENDS = ("any", "base")  # adml_select.ENDS; not imported, so that this module loads without torch
SWITCHES = ("token", "word")  # adml_select.SWITCHES, likewise
# How the adapters trained: datagen's requests alone, plus statements, or with replay (train --replay);
# "replay-w<weight>" is replay at another --replay-weight than 1, "replay-mixed" replay of fortunes and
# programs' messages (reproduce.replay_data_kind).
DATA = ("requests", "statements", "replay")
SUFFIX = {"requests": "", "statements": "stmt"}  # in model names and labels; any other kind is its own
MAX_OOD_RISE = 0.02
LONG_IN_DOMAIN, LONG_OOD = "long-domains", "long-ood"
IN_DOMAIN = DOMAINS + (LONG_IN_DOMAIN,)


def suffix(data: str) -> str:
    """A kind of training's part of model names and labels: "" for requests, "stmt", "replay", "replay-w3"."""
    return SUFFIX.get(data, data)


def val_sets(args, run: Path) -> dict[str, Path]:
    sets = {d: run / "data" / "train" / d / "val.jsonl" for d in DOMAINS}
    sets.update({s: run / "data" / "val_ood" / s / "manifest.jsonl" for s in OOD_VALS})
    return sets


def long_sets(run: Path, rows_of: dict[str, list[dict]]) -> dict[str, Path]:
    """The long-form validation sets, joined on first use from the short sets' rows."""
    out = {}
    for name, names in {LONG_IN_DOMAIN: DOMAINS, LONG_OOD: OOD_VALS}.items():
        out[name] = run / "data" / "val_long" / name / "manifest.jsonl"
        join_clips([r for n in names for r in rows_of[n]], out[name].parent)
    return out


def candidates(args) -> list[dict]:
    """Step 1."""
    out = []
    for lr in args.lora_lrs:
        out.append({"lr": lr, "strategy": "das", "tau": 0.0})
        out += [{"lr": lr, "strategy": s, "tau": t} for s in READINGS for t in TUNE_TAUS if t > 0]
    return out


def end_candidates(first: dict) -> list[dict]:
    """Step 2, at step 1's choice."""
    return [{"lr": first["lr"], "strategy": first["strategy"] if t > 0 else "das", "tau": t, "end": e}
            for e in ENDS for t in TUNE_TAUS]


def switch_candidates(second: dict) -> list[dict]:
    """Step 3, at step 2's choice."""
    return [{**c, "end": second["end"], "switch": w} for w in SWITCHES
            for c in end_candidates(second) if c["end"] == ENDS[0]]


def data_candidates(third: dict, trained: list[tuple[str, float]]) -> list[dict]:
    """Step 4, at step 3's choice: its adapters, then each other (training, rate) trained."""
    return [{**c, "lr": lr, "data": data} for data, lr in [(DATA[0], third["lr"])] + trained
            for c in switch_candidates(third) if c["switch"] == third["switch"]]


def route_candidates(last: dict) -> list[dict]:
    """Step 5: the last step's choice itself, then its adapters routed at each τ."""
    keep = {k: last[k] for k in ("lr", "strategy", "tau", "end", "switch", "data") if k in last}
    return [keep] + [{"lr": last["lr"], "strategy": ROUTE, "tau": t, "data": last.get("data", DATA[0])}
                     for t in TUNE_TAUS]


def label(c: dict) -> str:
    end, switch = c.get("end", "any"), c.get("switch", "token")
    data = suffix(c.get("data", DATA[0]))
    data = f" {data}" if data else ""
    return (f"lr{c['lr']:g}{data} {c['strategy']} tau={c['tau']:g}" + ("" if end == "any" else f" end={end}")
            + ("" if switch == "token" else f" switch={switch}"))


def das_files(run: Path, lr: float | None, data: str = DATA[0]) -> list[Path] | None:
    """The three adapters at `lr`, or each domain's own choice by validation loss (lr None);
    data "statements", "replay" or "replay-w<weight>": those trained so (at `lr` only)."""
    kind = f"-{suffix(data)}" if suffix(data) else ""
    files = [model_file(run, f"lora-{d}{kind}" + (f"-lr{lr:g}" if lr is not None else "")) for d in DOMAINS]
    return files if all(files) else None


def chosen(run: Path) -> dict | None:
    """The tune stage's choice {"lr", "strategy", "tau", "end", "switch", "data"}, or None before it has run."""
    path = run / "tune.json"
    return json.loads(path.read_text())["chosen"] if path.is_file() else None


def choose(rows: list[dict], original: dict) -> dict:
    """The rule of the module docstring. rows: {"lr", "strategy", "tau", "wer": {set: WER}}."""
    ind = [s for s in original if s in IN_DOMAIN]
    ood = [s for s in original if s not in IN_DOMAIN]
    ok = [r for r in rows if all(r["wer"][s] <= original[s] * (1 + MAX_OOD_RISE) for s in ood)]
    if not ok:
        return {"lr": None, "strategy": "das", "tau": 1.0, "end": "any", "switch": "token", "data": DATA[0],
                "why": "no candidate kept out-of-domain "
                f"WER within {MAX_OOD_RISE:.0%} of the original model's: τ = 1, the original model"}
    best = min(ok, key=lambda r: (sum(r["wer"][d] for d in ind) / len(ind), -r["tau"], r.get("end", "any") != "any",
                                  r.get("switch", "token") != "token", r.get("data", DATA[0]) != DATA[0],
                                  r["strategy"] == ROUTE))
    return {"lr": best["lr"], "strategy": best["strategy"], "tau": best["tau"], "end": best.get("end", "any"),
            "switch": best.get("switch", "token"), "data": best.get("data", DATA[0]),
            "why": f"lowest mean in-domain validation WER ({', '.join(ind)}) among the {len(ok)} of {len(rows)} "
                   f"candidates within {MAX_OOD_RISE:.0%} of the original model's WER on {', '.join(ood)}"}


def score_grid(args, run: Path, scorer, grid: list[dict], files_at: dict, rows_of: dict):
    """Score the original model and every candidate of `grid` on every set (skipping scores
    already made) -> (scorer, {label: {set: WER}}, every score present?). files_at:
    (lr, training text) -> the three adapter files."""
    todo = [("original", Scorer.config("base", [], 0.0), [])]
    for c in grid:
        files = files_at[c["lr"], c.get("data", DATA[0])]
        todo.append((label(c), Scorer.config("adml", files, c["tau"], c["strategy"], c.get("end", "any"),
                                             c.get("switch", "token")), files))
    for name, config, files in todo:
        for s, rows in rows_of.items():
            out = run / "tune" / name / f"{s}.json"
            if not Scorer.is_done(out, config):
                scorer = scorer or Scorer(args, run)
                scorer.score(name, config, files, rows, s, out)
    wer = {name: {s: read_rows(run / "tune" / name / f"{s}.json")[0]["wer"] for s in rows_of
                  if Scorer.is_done(run / "tune" / name / f"{s}.json", config)} for name, config, _ in todo}
    return scorer, wer, all(len(w) == len(rows_of) for w in wer.values())


def carry_over(run: Path, other: Path) -> dict:
    """reproduce.py --tune-from: DAS takes the settings another run's tune stage chose, with
    nothing decoded here (a run too large to tune on this machine). Written to run/tune.json
    with where they came from, so report.md says this run was not tuned."""
    path = Path(other) / "tune.json"
    if not path.is_file():
        raise SystemExit(f"tune: --tune-from {other}: {path} does not exist (run that study's tune stage first)")
    choice = {**json.loads(path.read_text())["chosen"],
              "why": f"carried over from {path}, not chosen on this run's validation data"}
    (run / "tune.json").write_text(json.dumps({"chosen": choice, "from": str(path)}, indent=1) + "\n")
    return choice


def stage_tune(args, run: Path) -> None:
    from evaluate import read_manifest

    if getattr(args, "tune_from", None):
        return log(f"tune: {carry_over(run, args.tune_from)}")
    sets = {n: p for n, p in val_sets(args, run).items() if p.is_file()}
    missing = sorted(set(val_sets(args, run)) - set(sets))
    if missing:
        log(f"tune: waits for validation sets {', '.join(missing)}; skipped")
        return
    rows_of = {n: read_manifest(p) for n, p in sets.items()}
    rows_of[OOD_VAL] = rows_of[OOD_VAL][: args.ood_val_count]  # a longer manifest may have been made
    files_at = {(lr, DATA[0]): das_files(run, lr) for lr in args.lora_lrs}
    waiting = [lr for (lr, _), files in files_at.items() if files is None]
    busy = "some scores are still being made (by another process?); no choice written yet"

    # The rates already trained are scored while the others still train.
    grid = [c for c in candidates(args) if c["lr"] not in waiting]
    scorer, wer, complete = score_grid(args, run, None, grid, files_at, rows_of)
    if waiting:
        return log(f"tune: adapters at lr {', '.join(f'{lr:g}' for lr in waiting)} are not trained; "
                   "no choice written yet")
    if not complete:
        return log(f"tune: step 1: {busy}")
    rows = [{**c, "wer": wer[label(c)]} for c in candidates(args)]
    first = choose(rows, wer["original"])
    log(f"tune: step 1 chose {first}")
    result = {"first": first, "original": wer["original"], "candidates": rows}

    def step(n: int, grid: list[dict], rows_key: str) -> dict | None:
        """Steps 2-4: score `grid`, record its rows (with their WER) as result[rows_key] and
        the original model's WER on every set as result["original_all"], and return the
        rule's choice; None while another process still scores."""
        nonlocal scorer
        scorer, wer, complete = score_grid(args, run, scorer, grid, files_at, rows_of)
        if not complete:
            log(f"tune: step {n}: {busy}")
            return None
        rows = [{**c, "wer": wer[label(c)]} for c in grid]
        result.update({"original_all": wer["original"], rows_key: rows})
        return choose(rows, wer["original"])

    choice = first
    if first["lr"] is not None:  # step 2 starts from a candidate, not from the fallback
        rows_of.update({n: read_manifest(p) for n, p in long_sets(run, rows_of).items()})
        if not (choice := step(2, end_candidates(first), "end_candidates")):
            return

    if choice["lr"] is not None and "end_candidates" in result:  # step 3, from step 2's candidate
        result["second"] = second = choice
        log(f"tune: step 2 chose {second}")
        if not (choice := step(3, switch_candidates(second), "switch_candidates")):
            return

    # Step 4's other adapters. Statements count only at step 3's rate, as before replay came.
    trained = [("statements", lr) for lr in getattr(args, "statements_lrs", []) if lr == choice["lr"]]
    texts = getattr(args, "replay_texts", "fortunes")
    trained += [(replay_data_kind(w, texts), lr) for lr in getattr(args, "replay_lrs", [])
                for w in getattr(args, "replay_weights", [1.0])]
    if trained and choice["lr"] is not None and "switch_candidates" in result:  # step 4
        for data, lr in trained:
            files_at[lr, data] = das_files(run, lr, data)
            if files_at[lr, data] is None:
                return log(f"tune: step 4: the {data} adapters at lr {lr:g} are not trained; no choice written yet")
        result["third"] = third = choice
        log(f"tune: step 3 chose {third}")
        if not (choice := step(4, data_candidates(third, trained), "data_candidates")):
            return
    if choice["lr"] is not None and "switch_candidates" in result:  # step 5, from step 3's or 4's candidate
        result["before_route"] = choice
        log(f"tune: step {4 if 'data_candidates' in result else 3} chose {choice}")
        if not (choice := step(5, route_candidates(choice), "route_candidates")):
            return
    result.update(chosen=choice, sizes={s: len(r) for s, r in rows_of.items()})
    (run / "tune.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"tune: chose {choice}")
