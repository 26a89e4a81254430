"""The paper's study end to end on this machine: synthetic data, every model of Tables II and
IV, in-domain and out-of-domain WER, the τ sweep, Table VI, then tables and plots.

    python bench/reproduce.py                          # the whole study; rerun to resume
    python bench/reproduce.py --stages report          # only rebuild tables and plots
    python bench/reproduce.py --train-per-domain 44000 --device cuda   # the paper's scale

Everything lands in --run (default runs/paper): data/, models/, eval/, logs/, report.md and
plots/. Each stage skips what a previous run finished, so a crash, a Ctrl-C or a reboot costs
at most the item or model in progress (generation and training resume inside that too):

  generate  datagen, through two local LLM servers on $PORT and $PORT + 1 (bench/llm_server.sh,
            1 thread each, stopped when the stage ends; one already up is used and left up)
            unless --llm-url is given: training texts spoken by TRAIN_VOICES, and from a separate run (other
            seed) test texts spoken only by TEST_VOICES, an engine and voices training never
            uses; and the tune stage's two out-of-domain validation sets, everyday requests
            from the LLM and fortunes-min sentences, in a voice of their own (bench/study_data.py).
  split     10% of each domain's training items (by a hash of the text) become validation;
            test items whose text also occurs in any training set are dropped.
  ood       manifests of real speech: pocketsphinx LibriVox and cards, and the Asterisk prompts.
  train     LoRA and full fine-tuning per domain and on all three (Table IV), plus Table II's
            rows for music. Learning rates come from validation data, never from a test set:
            each domain's LoRA and the first domain's full fine-tuning are trained at every
            rate of the grid; single models and the multi-domain ones use the rate with the
            best validation loss. Each run keeps its best epoch (train --val). With
            --statements-lrs, each domain's LoRA is also trained on its training split plus
            the in-domain statements datagen rejected (bench/statements.py, no LLM needed);
            with --replay-lrs, also with `train --replay` on out-of-domain sentences
            (bench/replay_data.py: the fortunes package, TTS only; --replay-texts mixed: half
            of them programs' messages), which holds it near the base model outside its
            domain (replay.py), at each of --replay-weights.
  tune      DAS's adapters, reading of Eq. (3) or routing, τ, end and switch rules, chosen by decoding
            in-domain and out-of-domain validation speech (bench/tune.py has the candidates
            and the rule). With --tune-from OTHER_RUN it decodes nothing and takes the settings
            OTHER_RUN's tune stage chose (report.md says so).
  eval      every system on every test set, one JSON per pair. The frozen encoder runs once
            per window for all systems (encoder_cache.EncoderMemo: exact, fp32), so RTF is
            not measured here; Table VI measures it.
  table6    bench/adml.py (RTF against the number of adapters).
  report    report.md (Tables II, IV, V, the τ sweep, VI) and plots/*.png (needs matplotlib).
"""

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lora  # noqa: E402
import replay_data  # noqa: E402
from scorer import Scorer  # noqa: E402
from study_data import (DOMAINS, OOD_SETS, claim, log, read_rows, run_logged, stage_generate,  # noqa: E402
                        stage_ood, stage_split)

TAUS = (0.0, 0.01, 0.025, 0.05, 0.1, 1.0)
STAGES = ("generate", "split", "ood", "train", "tune", "eval", "table6", "report")


# ---------------------------------------------------------------- training


def train_runs(args) -> list[dict]:
    """Every model of the study, in the order they train. `grid` runs choose a learning rate.
    Every domain's LoRA is trained at every rate, since the tune stage chooses DAS's rate by
    decoding validation speech with all three adapters; full fine-tuning (4x the cost per
    run) tries the grid on the first domain only."""
    runs = []
    for method, grid in (("lora", args.lora_lrs), ("ft", args.ft_lrs)):
        for i, d in enumerate(DOMAINS):
            for lr in (grid if i == 0 or method == "lora" else [None]):  # None: the rate the first domain chose
                runs.append({"name": f"{method}-{d}" + (f"-lr{lr:g}" if lr is not None else ""), "method": method,
                             "data": [d], "lr": lr, "choose": f"{method}-{DOMAINS[0]}"})
        runs.append({"name": f"{method}-multi", "method": method, "data": list(DOMAINS), "lr": None,
                     "choose": f"{method}-{DOMAINS[0]}"})
    for method in ("ft-last3", "ft-enc-dec"):  # Table II: which part of Whisper to fine-tune
        runs.append({"name": f"{method}-{DOMAINS[0]}", "method": method, "data": [DOMAINS[0]], "lr": None,
                     "choose": f"ft-{DOMAINS[0]}"})
    for lr in args.statements_lrs:  # the training text experiment (bench/statements.py)
        runs += [{"name": f"lora-{d}-stmt-lr{lr:g}", "method": "lora", "data": [d], "lr": lr, "statements": True}
                 for d in DOMAINS]
    for lr in args.replay_lrs:  # the forgetting experiment (replay.py), at each replay weight
        for w in getattr(args, "replay_weights", [1.0]):
            texts = getattr(args, "replay_texts", "fortunes")
            runs += [{"name": f"lora-{d}-{replay_data_kind(w, texts)}-lr{lr:g}", "method": "lora", "data": [d],
                      "lr": lr, "replay": w, "replay_texts": texts} for d in DOMAINS]
    return runs


def replay_data_kind(weight: float, texts: str = "fortunes") -> str:
    """How adapters trained with replay at `weight` on `texts` are named (and called in
    tune.py): "replay" at weight 1 on fortunes (their name from before the weight grid and
    the mixed texts), "replay-w<weight>" at another weight, "replay-mixed[-w<weight>]"."""
    return "replay" + ("" if texts == "fortunes" else f"-{texts}") + ("" if weight == 1 else f"-w{weight:g}")


def chosen_lr(run: Path, prefix: str) -> tuple[float, str] | None:
    """(lr, model name) of the grid run of `prefix` with the lowest validation loss."""
    done = [json.loads(p.read_text()) for p in (run / "models").glob(f"{prefix}-lr*.done.json")]
    return min(((d["val_loss"], d["lr"], d["name"]) for d in done), default=None)[1:] if done else None


def model_file(run: Path, name: str) -> Path | None:
    """The file a system name refers to: a name trained over a grid (name-lr*) resolves to
    the grid run with the best validation loss."""
    if any((run / "models").glob(f"{name}-lr*.done.json")):
        return run / "models" / f"{chosen_lr(run, name)[1]}.st"
    path = run / "models" / f"{name}.st"
    return path if (run / "models" / f"{name}.done.json").is_file() else None


def stage_train(args, run: Path) -> None:
    models = run / "models"
    for spec in train_runs(args):
        if spec["method"] not in args.methods:
            continue
        name, done = spec["name"], models / f"{spec['name']}.done.json"
        if done.is_file():
            continue
        short = [d for d in spec["data"] if len(read_rows(run / "data" / "train" / d / "manifest.jsonl"))
                 < args.train_per_domain]
        if short:
            log(f"train: {name} waits for {', '.join(short)} to reach {args.train_per_domain} utterances; skipped")
            continue
        lr = spec["lr"]
        if lr is None:
            choice = chosen_lr(run, spec["choose"])
            if choice is None:
                log(f"train: {name} waits for {spec['choose']}'s learning-rate grid; skipped")
                continue
            lr = choice[0]
        data = [str(run / "data" / "train" / d / "fit.jsonl") for d in spec["data"]]
        if spec.get("statements"):
            import statements

            data += [str(statements.speak(run, d)) for d in spec["data"]]
        replay = []
        if spec.get("replay"):
            replay = ["--replay", str(replay_data.speak(run, replay_data.COUNT, spec["replay_texts"])),
                      "--replay-weight", f"{spec['replay']:g}"]
        val = (run / "data" / "train" / spec["data"][0] / "val.jsonl" if len(spec["data"]) == 1
               else run / "data" / "train" / "val_multi.jsonl")
        out = models / f"{name}.st"
        cmd = [sys.executable, "das.py", "train", "--model", args.model, "--method", spec["method"],
               *[a for p in data for a in ("--data", p)], *replay, "--val", str(val), "--out", str(out),
               "--domain", spec["data"][0] if len(spec["data"]) == 1 else "multi",
               "--lr", f"{lr:g}", "--epochs", str(args.epochs), "--batch-size", "16",
               "--cache-dir", str(run / "cache" / "encoder"), "--device", args.device, "--progress-every", "30"]
        lock = models / f"{name}.lock"
        models.mkdir(parents=True, exist_ok=True)
        if not claim(lock):
            log(f"train: {name} is being trained by another process; skipped")
            continue
        try:
            if done.is_file():  # finished by another process since this one looked
                continue
            if (models / f"{name}.ckpt.st").is_file():
                cmd.append("--resume")
            t = time.time()
            run_logged(cmd, run / "logs" / f"train_{name}.log")
            meta = lora.read_header(out)["__metadata__"]
            done.write_text(json.dumps({"name": name, "method": spec["method"], "data": spec["data"], "lr": lr,
                                        "val_loss": float(meta["val_loss"]), "best_step": int(meta["steps"]),
                                        "total_steps": int(meta["total_steps"]),
                                        "seconds": round(time.time() - t, 1)}, indent=1) + "\n")
        finally:
            lock.unlink(missing_ok=True)


# ---------------------------------------------------------------- evaluation


def test_sets(run: Path) -> dict[str, Path]:
    sets = {d: run / "data" / "test_raw" / d / "test.jsonl" for d in DOMAINS}
    sets.update({n: run / "data" / "ood" / f"{n}.jsonl" for n in OOD_SETS})
    return sets


def systems(run: Path) -> list[tuple[str, str, list[Path], float, str, str, str]]:
    """(name, kind, files, τ, strategy, end, switch) of every system whose models exist. DAS
    and its τ sweep use the adapters (learning rate and training text), reading of Eq. (3),
    end rule and switch rule the tune stage chose on validation data (before it has run:
    each domain's adapter by validation loss, `das`, τ = 0.025, any stream may end, streams
    switch at any token)."""
    import tune

    plain = (0.0, "das", "any", "token")
    out = [("original", "base", [], *plain)]
    choice = {"lr": None, "strategy": "das", "tau": 0.025, "end": "any", "switch": "token", "data": tune.DATA[0],
              **(tune.chosen(run) or {})}
    rule = (choice["strategy"], choice["end"], choice["switch"])
    loras = tune.das_files(run, choice["lr"], choice["data"])
    if loras:
        out += [("DAS", "adml", loras, choice["tau"], *rule)]
    for name in ("lora-multi",) + tuple(f"lora-{d}" for d in DOMAINS):
        if model_file(run, name):
            out.append((name, "lora", [model_file(run, name)], *plain))
    if loras:
        out += [(f"DAS tau={t:g}", "adml", loras, t, *rule) for t in TAUS if t != choice["tau"]]
    for name in ("ft-multi",) + tuple(f"ft-{d}" for d in DOMAINS) + (f"ft-last3-{DOMAINS[0]}", f"ft-enc-dec-{DOMAINS[0]}"):
        if model_file(run, name):
            out.append((name, "finetune", [model_file(run, name)], *plain))
    return out


def stage_eval(args, run: Path) -> None:
    from evaluate import read_manifest

    sets = {n: read_manifest(p) for n, p in test_sets(run).items() if p.is_file()}
    # What the claims rest on is scored first (Tables IV and V, the τ sweep), so a run cut short
    # still answers them; single-domain models on real speech come last.
    todo = [(system, s) for system in systems(run) for s in sets
            if not Scorer.is_done(run / "eval" / system[0] / f"{s}.json", Scorer.config(*system[1:]))
            and any(fnmatch.fnmatch(system[0], pattern) for pattern in args.systems.split(","))
            and any(fnmatch.fnmatch(s, pattern) for pattern in args.sets.split(","))]
    todo.sort(key=lambda pair: pair[1] in OOD_SETS and pair[0][0].split("-")[-1] in DOMAINS)
    scorer = Scorer(args, run) if todo else None
    for (name, kind, files, *rule), s in todo:
        config = Scorer.config(kind, files, *rule)
        scorer.score(name, config, files, sets[s], s, run / "eval" / name / f"{s}.json")


def stage_table6(args, run: Path) -> None:
    out = run / "eval" / "table6.json"
    if out.is_file():
        return
    cmd = [sys.executable, "bench/adml.py", "--model", args.model, "--device", args.device, "--json", str(out)]
    if args.device == "cpu":
        cmd += ["--threads", "1", "--clock", "cpu"]  # a busy 2-core machine: CPU time, not wall time
    if args.table6_quick:
        cmd.append("--quick")
    run_logged(cmd, run / "logs" / "table6.log")


# ---------------------------------------------------------------- report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/paper", type=Path, help="folder for everything the study makes")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--model", default="base", help="Whisper model (the paper: base)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: training, evaluation and Table VI")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for evaluation (0: torch's default)")
    p.add_argument("--train-per-domain", type=int, default=1500, help="synthetic training utterances per domain")
    p.add_argument("--test-per-domain", type=int, default=200, help="synthetic test utterances per domain")
    p.add_argument("--ood-val-count", type=int, default=150,
                   help="out-of-domain validation utterances (everyday topics) for the tune stage")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of training texts held out for validation")
    p.add_argument("--epochs", type=float, default=4, help="epochs per training run (the best one is kept)")
    p.add_argument("--lora-lrs", default="1e-4,3e-4", help="LoRA learning-rate grid, every domain (tune picks)")
    p.add_argument("--ft-lrs", default="1e-5,3e-5", help="full fine-tuning learning-rate grid, first domain")
    p.add_argument("--statements-lrs", default="", help="also train each domain's LoRA at these rates on its training "
                   "split plus the statements datagen rejected (bench/statements.py; the tune stage weighs them)")
    p.add_argument("--replay-lrs", default="", help="also train each domain's LoRA at these rates with `train "
                   "--replay` (replay.py, bench/replay_data.py; the tune stage weighs them)")
    p.add_argument("--replay-weights", default="1", help="with --replay-lrs: train at each of these `--replay-weight`s")
    p.add_argument("--replay-texts", default="fortunes", choices=replay_data.TEXTS,
                   help="with --replay-lrs: replay fortunes, or half fortunes and half programs' messages")
    p.add_argument("--methods", default="lora,ft,ft-last3,ft-enc-dec", help="which training methods to run")
    p.add_argument("--tune-from", default=None, type=Path, help="tune: take DAS's settings from this other run's "
                   "tune.json instead of decoding validation speech (report.md says so)")
    p.add_argument("--systems", default="*", help="eval: only systems matching these comma-separated globs")
    p.add_argument("--sets", default="*", help="eval: only test sets matching these comma-separated globs")
    p.add_argument("--table6-quick", action="store_true", help="Table VI with bench/adml.py --quick (k = 1, 3, 25)")
    p.add_argument("--llm-url", default=None, help="OpenAI-compatible LLM (default: start bench/llm_server.sh)")
    args = p.parse_args()
    args.lora_lrs = [float(x) for x in args.lora_lrs.split(",") if x.strip()]
    args.ft_lrs = [float(x) for x in args.ft_lrs.split(",")]
    args.statements_lrs = [float(x) for x in args.statements_lrs.split(",") if x.strip()]
    args.replay_lrs = [float(x) for x in args.replay_lrs.split(",") if x.strip()]
    args.replay_weights = [float(x) for x in args.replay_weights.split(",")]
    args.methods = set(args.methods.split(","))
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {','.join(STAGES)}")
    run = args.run
    run.mkdir(parents=True, exist_ok=True)
    sys.modules.setdefault("reproduce", sys.modules[__name__])  # tune.py imports this module by name
    import report  # bench/report.py: tables and plots from the run folder
    import tune  # bench/tune.py: DAS's settings from validation data

    for stage in STAGES:
        if stage in stages:
            t = time.time()
            log(f"stage {stage}")
            {"generate": stage_generate, "split": stage_split, "ood": stage_ood, "train": stage_train,
             "tune": tune.stage_tune, "eval": stage_eval, "table6": stage_table6,
             "report": lambda a, r: report.write(r)}[stage](args, run)
            log(f"stage {stage} done in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
