"""The paper's study end to end on this machine: synthetic data, DAS and the paper's baselines,
in-domain and real-speech WER, the τ sweep and Table VI, written up in report.md.

    python bench/reproduce.py --run runs/paper                 # the whole study; rerun to resume
    python bench/reproduce.py --run runs/paper --stages report
    python bench/reproduce.py --train-per-domain 44000 --device cuda   # the paper's scale

Everything lands in --run. Each stage skips what is done, so a crash costs at most the item,
model or score in progress; two copies of the command share the train, tune and eval stages
through lock files.

  generate  datagen through --llm-url or two local LLM servers (bench/llm_server.sh): each
            domain's training texts, spoken by TRAIN_VOICES, and from another LLM run its test
            texts, spoken only by TEST_VOICES (an engine and voices training never uses); the
            out-of-domain validation sets and the replay set (bench/study_data.py).
  split     10% of each domain's training items, by a hash of the text, become validation;
            a test item whose text occurs in any training set is dropped.
  ood       manifests of real speech: pocketsphinx LibriVox and cards, the Asterisk prompts.
  train     DAS's adapters, one LoRA per domain with replay on the spoken fortunes (so that
            each stays the base model outside its domain); LoRA-ft-Multi, the same LoRA on all
            three domains; the full fine-tuning baselines: FT per domain, FT-Multi, and for
            Table II the last three decoder blocks and the whole model on the first domain.
            Each run keeps its best epoch by validation loss. The defaults are the recipe of
            the adapters that ship.
  tune      DAS's strategy and τ from validation speech (bench/tune.py). Without this stage
            DAS decodes with das.py's defaults, the setting that ships.
  eval      every system on every test set, and DAS at each τ of tune.TAUS (the τ sweep). The
            frozen encoder runs once per window for all systems (memo.EncoderMemo), so RTF is
            not measured here; Table VI measures it.
  table6    bench/table6.py: RTF against the number of adapters, batched and sequential.
  report    report.md: Tables II, IV, V and VI, their intervals, the tune stage, the τ sweep.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import report
import tune
from scorer import config, score_all
from study_data import (DOMAINS, OOD_SETS, REPLAY_COUNT, claim, log, read_rows, run_logged, stage_generate,
                        stage_ood, stage_split, trained)

STAGES = ("generate", "split", "ood", "train", "tune", "eval", "table6", "report")
BASELINES = [("lora-multi", "lora"), *((f"lora-{d}", "lora") for d in DOMAINS), ("ft-multi", "finetune"),
             *((f"{m}-{d}", "finetune") for m, ds in (("ft", DOMAINS), ("ft-last3", DOMAINS[:1]),
                                                       ("ft-enc-dec", DOMAINS[:1])) for d in ds)]


def train_runs(args) -> list[dict]:
    """Every model of the study, in the order they train (DAS's adapters first)."""
    # DAS's adapters replay the fortunes at `train`'s default weight, 1
    runs = [{"name": f"lora-{d}", "method": "lora", "data": [d], "lr": args.lora_lr, "replay": True} for d in DOMAINS]
    runs.append({"name": "lora-multi", "method": "lora", "data": list(DOMAINS), "lr": args.lora_lr})
    runs += [{"name": f"ft-{d}", "method": "ft", "data": [d], "lr": args.ft_lr} for d in DOMAINS]
    runs.append({"name": "ft-multi", "method": "ft", "data": list(DOMAINS), "lr": args.ft_lr})
    runs += [{"name": f"{m}-{DOMAINS[0]}", "method": m, "data": [DOMAINS[0]], "lr": args.ft_lr}
             for m in ("ft-last3", "ft-enc-dec")]
    return [r for r in runs if r["method"] in args.methods]


def train_command(args, run: Path, spec: dict) -> list[str]:
    data, one = run / "data", len(spec["data"]) == 1
    val = data / "train" / spec["data"][0] / "val.jsonl" if one else data / "train" / "val_multi.jsonl"
    return [sys.executable, "das.py", "train", "--model", args.model, "--method", spec["method"],
            *[a for d in spec["data"] for a in ("--data", str(data / "train" / d / "fit.jsonl"))],
            *(["--replay", str(data / "replay" / "manifest.jsonl")] if spec.get("replay") else []), "--val", str(val),
            "--out", str(run / "models" / f"{spec['name']}.st"),
            "--domain", spec["data"][0] if one else "multi", "--lr", f"{spec['lr']:g}",
            "--epochs", f"{args.epochs:g}", "--seed", str(args.seed), "--batch-size", "16",
            "--cache-dir", str(run / "cache" / "encoder"), "--device", args.device, "--progress-every", "30"]


def train_one(args, run: Path, spec: dict, record: dict) -> None:
    """das.py train for `spec` (resuming its checkpoint), then models/<name>.done.json: `record`,
    the kept step's validation loss and the time it took."""
    import lora

    name, models = spec["name"], run / "models"
    t = time.time()
    run_logged(train_command(args, run, spec) + (["--resume"] if (models / f"{name}.ckpt.st").is_file() else []),
               run / "logs" / f"train_{name}.log")
    meta = lora.read_header(models / f"{name}.st")["__metadata__"]
    (models / f"{name}.done.json").write_text(json.dumps(
        {"name": name, **record, "val_loss": float(meta["val_loss"]), "best_step": int(meta["steps"]),
         "total_steps": int(meta["total_steps"]), "seconds": round(time.time() - t, 1)}, indent=1) + "\n")


def stage_train(args, run: Path) -> None:
    models = run / "models"
    models.mkdir(parents=True, exist_ok=True)
    for spec in train_runs(args):
        name, done = spec["name"], models / f"{spec['name']}.done.json"
        cmd = train_command(args, run, spec)
        settings = {"method": spec["method"], "data": spec["data"], "lr": spec["lr"], "epochs": args.epochs,
                    "seed": args.seed, "replay": "--replay" in cmd, "model": args.model}
        if done.is_file():
            if {k: json.loads(done.read_text()).get(k) for k in settings} != settings:
                raise SystemExit(f"train: {name} in {run} was trained with other settings ({done}); use another --run")
            continue
        need = {run / "data" / "train" / d / "manifest.jsonl": args.train_per_domain for d in spec["data"]}
        need |= {run / "data" / "replay" / "manifest.jsonl": REPLAY_COUNT} if "--replay" in cmd else {}
        if short := [str(path.parent) for path, n in need.items() if len(read_rows(path)) < n]:
            log(f"train: {name} waits for {', '.join(short)} (stage generate); skipped")
            continue
        lock = models / f"{name}.lock"
        if not claim(lock):
            log(f"train: {name} is being trained by another process; skipped")
            continue
        try:
            if done.is_file():  # finished by another process since this one looked
                continue
            train_one(args, run, spec, settings)
        finally:
            lock.unlink(missing_ok=True)


def test_sets(run: Path) -> dict[str, Path]:
    return {**{d: run / "data" / "test_raw" / d / "test.jsonl" for d in DOMAINS},
            **{s: run / "data" / "ood" / f"{s}.jsonl" for s in OOD_SETS}}


def systems(run: Path) -> list[tuple[str, dict, list[Path]]]:
    """(name, scorer config, files) of every system whose models exist: the original model,
    DAS as the tune stage chose (das.py's defaults before it), DAS at each other τ, then the
    baselines, among them each of DAS's adapters alone (the paper's LoRA-ft)."""
    out = [("original", config("base", []), [])]
    files, choice = tune.das_files(run), tune.chosen(run) or tune.DEFAULT
    if files:
        out += [("DAS" if t == choice["tau"] else f"DAS tau={t:g}", config("adml", files, t, choice["strategy"]), files)
                for t in sorted({choice["tau"], *tune.TAUS}, key=lambda t: (t != choice["tau"], t))]
    return out + [(name, config(kind, [f]), [f]) for name, kind in BASELINES if (f := trained(run, name))]


def stage_eval(args, run: Path) -> None:
    from evaluation.evaluate import read_manifest

    sets = {n: read_manifest(p) for n, p in test_sets(run).items() if p.is_file()}
    # What the claims rest on is scored first (Tables IV and V, the τ sweep), so that a run cut
    # short still answers them; single-domain models on real speech come last.
    todo = sorted([(*system, s) for system in systems(run) for s in sets],
                  key=lambda t: t[3] in OOD_SETS and t[0].split("-")[-1] in DOMAINS)
    score_all(args, run, "eval", todo, sets)


def stage_table6(args, run: Path) -> None:
    out = run / "eval" / "table6.json"
    if out.is_file():
        return
    cmd = [sys.executable, "bench/table6.py", "--model", args.model, "--device", args.device, "--json", str(out),
           "--strategy", (tune.chosen(run) or tune.DEFAULT)["strategy"]]
    if args.device == "cpu":
        cmd += ["--threads", "1", "--clock", "cpu"]  # a busy machine: CPU time, not wall time
    run_logged(cmd + (["--quick"] if args.table6_quick else []), run / "logs" / "table6.log")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/paper", type=Path, help="folder for everything the study makes")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--model", default="base", help="Whisper model (the paper: base)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: training, evaluation and Table VI")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for tune and eval (0: torch's default)")
    p.add_argument("--train-per-domain", type=int, default=1500, help="synthetic training utterances per domain")
    p.add_argument("--test-per-domain", type=int, default=200, help="synthetic test utterances per domain")
    p.add_argument("--ood-val-count", type=int, default=150, help="utterances in each out-of-domain validation set")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of training texts held out for validation")
    p.add_argument("--lora-lr", type=float, default=3e-4, help="LoRA learning rate (chosen on validation speech)")
    p.add_argument("--ft-lr", type=float, default=1e-5, help="full fine-tuning learning rate (by validation loss)")
    p.add_argument("--epochs", type=float, default=1, help="epochs per training run (the best one is kept)")
    p.add_argument("--seed", type=int, default=1, help="training seed (the adapters that ship: 1)")
    p.add_argument("--methods", default="lora,ft,ft-last3,ft-enc-dec", help="which training methods to run")
    p.add_argument("--table6-quick", action="store_true", help="Table VI with bench/table6.py --quick")
    p.add_argument("--llm-url", default=None, help="OpenAI-compatible LLM (default: start bench/llm_server.sh)")
    args = p.parse_args(argv)
    args.methods = set(args.methods.split(","))
    stages = args.stages.split(",")
    if unknown := sorted(set(stages) - set(STAGES)):
        p.error(f"unknown stages {unknown}; choose from {','.join(STAGES)}")
    args.run.mkdir(parents=True, exist_ok=True)
    run_stage = {"generate": stage_generate, "split": stage_split, "ood": stage_ood, "train": stage_train,
                 "tune": tune.stage_tune, "eval": stage_eval, "table6": stage_table6,
                 "report": lambda args, run: report.write(run)}
    for stage in (s for s in STAGES if s in stages):
        t = time.time()
        log(f"stage {stage}")
        run_stage[stage](args, args.run)
        log(f"stage {stage} done in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
