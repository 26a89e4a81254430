"""The paper's study end to end on this machine: synthetic data, every model of Tables II and
IV, in-domain and out-of-domain WER, the τ sweep, Table VI, then tables and plots.

    python bench/reproduce.py                          # the whole study; rerun to resume
    python bench/reproduce.py --stages report          # only rebuild tables and plots
    python bench/reproduce.py --train-per-domain 44000 --device cuda   # the paper's scale

Everything lands in --run (default runs/paper): data/, models/, eval/, logs/, report.md and
plots/. Each stage skips what a previous run finished, so a crash, a Ctrl-C or a reboot costs
at most the item or model in progress (generation and training resume inside that too):

  generate  datagen, through the local LLM server (bench/llm_server.sh) unless --llm-url is
            given: training texts spoken by TRAIN_VOICES, and from a separate run (other seed)
            test texts spoken only by TEST_VOICES, an engine and voices training never uses.
  split     10% of each domain's training items (by a hash of the text) become validation;
            test items whose text also occurs in any training set are dropped.
  ood       manifests of real speech: pocketsphinx LibriVox and cards, and the Asterisk prompts.
  train     LoRA and full fine-tuning per domain and on all three (Table IV), plus Table II's
            rows for music. Learning rates come from validation loss, never from a test set:
            the first domain is trained at every rate of the grid, the one with the best
            validation loss is used for the rest. Each run keeps its best epoch (train --val).
  eval      every system on every test set, one JSON per pair. The frozen encoder runs once
            per window for all systems (encoder_cache.EncoderMemo: exact, fp32), so RTF is
            not measured here; Table VI measures it.
  table6    bench/adml.py (RTF against the number of adapters).
  report    report.md (Tables II, IV, V, the τ sweep, VI) and plots/*.png (needs matplotlib).
"""

import argparse
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lora  # noqa: E402
from datagen.clean import normalise  # noqa: E402

DOMAINS = ("music", "weather", "sports")
TRAIN_VOICES = "espeak-ng:en-us,flite:slt,flite:rms,flite:awb,piper:joe"
TEST_VOICES = "festival:kal_diphone,flite:kal16"  # festival is never a training engine
TAUS = (0.0, 0.01, 0.025, 0.05, 0.1, 1.0)
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
OOD_SETS = ("librivox", "cards", "asterisk")
STAGES = ("generate", "split", "ood", "train", "eval", "table6", "report")


def log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_logged(cmd: list[str], logfile: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a step as a subprocess, its output appended to `logfile` (in run/logs/); the
    command is kept in run/commands.txt, which the report quotes."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    line = " ".join(shlex.quote(c) for c in cmd)
    with open(logfile.parent.parent / "commands.txt", "a") as f:
        f.write(line + "\n")
    log(f"$ {line}  (log: {logfile})")
    with open(logfile, "a") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def run_logged(cmd: list[str], logfile: Path, env: dict | None = None) -> None:
    """`start_logged` and wait. A failure stops the study (rerun to resume)."""
    code = start_logged(cmd, logfile, env).wait()
    if code != 0:
        raise SystemExit(f"step failed with exit code {code}; see {logfile}. Rerun the same command to resume.")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


# ---------------------------------------------------------------- data


def stage_generate(args, run: Path) -> None:
    port = os.environ.get("PORT", "8012")
    url = args.llm_url or f"http://127.0.0.1:{port}/v1"
    jobs = []
    for d in DOMAINS:
        for split, count, voices, seed, workers in (("train", args.train_per_domain, TRAIN_VOICES, 0, 2),
                                                    ("test_raw", args.test_per_domain, TEST_VOICES, 1000, 1)):
            out = run / "data" / split / d
            if len(read_rows(out / "manifest.jsonl")) >= count:
                continue
            cmd = [sys.executable, "das.py", "generate", "--domain", d, "--count", str(count), "--out", str(out),
                   "--llm-url", url, "--tts", voices, "--workers", str(workers), "--seed", str(seed),
                   "--progress-every", "60"]
            jobs.append((cmd, run / "logs" / f"generate_{split}_{d}.log"))
    if jobs and args.llm_url is None:
        run_logged(["bash", "bench/llm_server.sh", "start"], run / "logs" / "llm_server.log", {**os.environ, "PORT": port})
    # All six runs at once keep the LLM server busy while the others speak their texts.
    procs = [(start_logged(cmd, logfile), logfile) for cmd, logfile in jobs]
    failed = [str(lf) for p, lf in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"generation failed; see {', '.join(failed)}. Rerun to resume.")


def is_validation(text: str, fraction: float) -> bool:
    """A fixed pseudo-random tenth of the texts, the same whatever order they were made in."""
    return int(hashlib.sha1(normalise(text).encode()).hexdigest(), 16) % 1000 < 1000 * fraction


def stage_split(args, run: Path) -> dict:
    """train/<d>/{fit,val}.jsonl and test_raw/<d>/test.jsonl, beside the audio they point to."""
    sizes, train_keys = {}, set()
    for d in DOMAINS:
        rows = read_rows(run / "data" / "train" / d / "manifest.jsonl")[: args.train_per_domain]
        train_keys |= {normalise(r["text"]) for r in rows}
        val = [r for r in rows if is_validation(r["text"], args.val_fraction)]
        fit = [r for r in rows if not is_validation(r["text"], args.val_fraction)]
        write_rows(run / "data" / "train" / d / "fit.jsonl", fit)
        write_rows(run / "data" / "train" / d / "val.jsonl", val)
        sizes[d] = {"fit": len(fit), "val": len(val), "fit_seconds": round(sum(r["duration"] for r in fit), 1),
                    "voices": sorted({r["voice"] for r in rows})}
    # One validation set over all domains for the multi-domain models (absolute paths: it
    # lives outside any one domain's folder).
    write_rows(run / "data" / "train" / "val_multi.jsonl",
               [{**r, "audio": str((run / "data" / "train" / d / r["audio"]).resolve())}
                for d in DOMAINS for r in read_rows(run / "data" / "train" / d / "val.jsonl")])
    for d in DOMAINS:
        rows = read_rows(run / "data" / "test_raw" / d / "manifest.jsonl")[: args.test_per_domain]
        kept, seen = [], set()
        for r in rows:
            key = normalise(r["text"])
            if key not in train_keys and key not in seen:
                seen.add(key)
                kept.append(r)
        write_rows(run / "data" / "test_raw" / d / "test.jsonl", kept)
        sizes[d].update(test=len(kept), test_dropped_overlap=len(rows) - len(kept),
                        test_seconds=round(sum(r["duration"] for r in kept), 1),
                        test_voices=sorted({r["voice"] for r in kept}))
    (run / "data" / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    log(f"split: {json.dumps(sizes)}")
    return sizes


def stage_ood(args, run: Path) -> None:
    """Real speech, none of it about music, weather or sports."""
    out = run / "data" / "ood"
    missing = [f"{p} (apt install {pkg})" for p, pkg in (
        (POCKETSPHINX, "pocketsphinx-testdata"), (ASTERISK_SOUNDS, "asterisk-core-sounds-en-wav"),
        (ASTERISK_TEXTS, "asterisk-core-sounds-en")) if not p.exists()]
    if missing:
        raise SystemExit(f"the real-speech test sets need: {'; '.join(missing)}")
    for sub, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        rows = []
        for line in (POCKETSPHINX / sub / listing).read_text().splitlines():
            m = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line)
            if m:
                name = Path(m.group(2).strip()).name
                rows.append({"audio": str(POCKETSPHINX / sub / f"{name}.wav"), "text": m.group(1).strip()})
        write_rows(out / f"{sub}.jsonl", rows)
    rows = []
    with gzip.open(ASTERISK_TEXTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            # "[ascending tones]" is a sound, not speech; "at [@]" says "at".
            text = re.sub(r"\[[^\]]*\]", "", text).strip()
            wav = ASTERISK_SOUNDS / f"{name.strip()}.wav"
            if sep and text and not line.startswith(";") and wav.is_file():
                rows.append({"audio": str(wav), "text": text})
    write_rows(out / "asterisk.jsonl", rows)
    log(f"ood: {', '.join(f'{p.stem} {len(read_rows(p))}' for p in sorted(out.glob('*.jsonl')))} utterances")


# ---------------------------------------------------------------- training


def train_runs(args) -> list[dict]:
    """Every model of the study, in the order they train. `grid` runs choose a learning rate."""
    runs = []
    for method, grid in (("lora", args.lora_lrs), ("ft", args.ft_lrs)):
        for i, d in enumerate(DOMAINS):
            for lr in (grid if i == 0 else [None]):  # None: the rate the first domain chose
                runs.append({"name": f"{method}-{d}" + (f"-lr{lr:g}" if lr is not None else ""), "method": method,
                             "data": [d], "lr": lr, "choose": f"{method}-{DOMAINS[0]}"})
        runs.append({"name": f"{method}-multi", "method": method, "data": list(DOMAINS), "lr": None,
                     "choose": f"{method}-{DOMAINS[0]}"})
    for method in ("ft-last3", "ft-enc-dec"):  # Table II: which part of Whisper to fine-tune
        runs.append({"name": f"{method}-{DOMAINS[0]}", "method": method, "data": [DOMAINS[0]], "lr": None,
                     "choose": f"ft-{DOMAINS[0]}"})
    return runs


def chosen_lr(run: Path, prefix: str) -> tuple[float, str] | None:
    """(lr, model name) of the grid run of `prefix` with the lowest validation loss."""
    done = [json.loads(p.read_text()) for p in (run / "models").glob(f"{prefix}-lr*.done.json")]
    return min(((d["val_loss"], d["lr"], d["name"]) for d in done), default=None)[1:] if done else None


def model_file(run: Path, name: str) -> Path | None:
    """The file a system name refers to: a grid name resolves to the chosen grid run."""
    for prefix in (f"lora-{DOMAINS[0]}", f"ft-{DOMAINS[0]}"):
        if name == prefix:
            choice = chosen_lr(run, prefix)
            return run / "models" / f"{choice[1]}.st" if choice else None
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
        val = (run / "data" / "train" / spec["data"][0] / "val.jsonl" if len(spec["data"]) == 1
               else run / "data" / "train" / "val_multi.jsonl")
        out = models / f"{name}.st"
        cmd = [sys.executable, "das.py", "train", "--model", args.model, "--method", spec["method"],
               *[a for p in data for a in ("--data", p)], "--val", str(val), "--out", str(out),
               "--domain", spec["data"][0] if len(spec["data"]) == 1 else "multi",
               "--lr", f"{lr:g}", "--epochs", str(args.epochs), "--batch-size", "16",
               "--cache-dir", str(run / "cache" / "encoder"), "--device", args.device, "--progress-every", "30"]
        if (models / f"{name}.ckpt.st").is_file():
            cmd.append("--resume")
        t = time.time()
        run_logged(cmd, run / "logs" / f"train_{name}.log")
        meta = lora.read_header(out)["__metadata__"]
        done.write_text(json.dumps({"name": name, "method": spec["method"], "data": spec["data"], "lr": lr,
                                    "val_loss": float(meta["val_loss"]), "best_step": int(meta["steps"]),
                                    "total_steps": int(meta["total_steps"]),
                                    "seconds": round(time.time() - t, 1)}, indent=1) + "\n")


# ---------------------------------------------------------------- evaluation


def test_sets(run: Path) -> dict[str, Path]:
    sets = {d: run / "data" / "test_raw" / d / "test.jsonl" for d in DOMAINS}
    sets.update({n: run / "data" / "ood" / f"{n}.jsonl" for n in OOD_SETS})
    return sets


def systems(run: Path) -> list[tuple[str, str, list[Path], float]]:
    """(name, kind, files, τ) of every system whose models exist."""
    out = [("original", "base", [], 0.0)]
    loras = [model_file(run, f"lora-{d}") for d in DOMAINS]
    if all(loras):
        out += [("DAS", "adml", loras, 0.025)]
    for name in ("lora-multi",) + tuple(f"lora-{d}" for d in DOMAINS):
        if model_file(run, name):
            out.append((name, "lora", [model_file(run, name)], 0.0))
    if all(loras):
        out += [(f"DAS tau={t:g}", "adml", loras, t) for t in TAUS if t != 0.025]
    for name in ("ft-multi",) + tuple(f"ft-{d}" for d in DOMAINS) + (f"ft-last3-{DOMAINS[0]}", f"ft-enc-dec-{DOMAINS[0]}"):
        if model_file(run, name):
            out.append((name, "finetune", [model_file(run, name)], 0.0))
    return out


def stage_eval(args, run: Path) -> None:
    import torch

    import adml
    import train
    import whisper_min
    from encoder_cache import EncoderMemo
    from evaluate import evaluate_set, read_manifest, transcriber
    from whisper_min import DecodingOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    base = whisper_min.load_model(args.model, device=args.device)
    tokenizer = whisper_min.get_tokenizer(args.model, language="en")
    options = DecodingOptions(language="en", without_timestamps=True)
    memo_root = run / "cache" / "eval"
    base.embed_audio = EncoderMemo(base, memo_root)
    sets = {n: read_manifest(p) for n, p in test_sets(run).items() if p.is_file()}
    audio_cache: dict[str, object] = {}

    def load_audio(path: str):  # every system hears the same files: read each once
        if path not in audio_cache:
            audio_cache[path] = whisper_min.load_audio(path)
        return audio_cache[path]

    # What the claims rest on is scored first (Tables IV and V, the τ sweep), so a run cut short
    # still answers them; single-domain models on real speech come last.
    todo = [(system, s) for system in systems(run) for s in sets
            if not (run / "eval" / system[0] / f"{s}.json").is_file()
            and any(fnmatch.fnmatch(system[0], pattern) for pattern in args.systems.split(","))]
    todo.sort(key=lambda pair: pair[1] in OOD_SETS and pair[0][0].split("-")[-1] in DOMAINS)
    built: dict[str, tuple] = {}

    def build(name, kind, files, tau):
        model, decode_fn = base, whisper_min.decode
        if kind in ("adml", "lora"):
            decode_fn = adml.make_decoder(base, [str(f) for f in files], tau=tau)
        elif kind == "finetune":
            model = whisper_min.load_model(args.model, device=args.device)  # a fresh copy to overwrite
            train.load_finetune(files[0], model)
            if "enc-dec" in name:  # its encoder changed: its own memo, never the shared one
                model.embed_audio = EncoderMemo(model, memo_root)
            else:
                model.embed_audio = base.embed_audio
        return model, decode_fn

    for (name, kind, files, tau), s in todo:
        if (run / "eval" / name / f"{s}.json").is_file():
            continue  # another process scored it meanwhile
        if name not in built:
            built.clear()  # one system's models in memory at a time
            built[name] = build(name, kind, files, tau)
        model, decode_fn = built[name]

        transcribe_fn = transcriber(model, tokenizer, options, decode_fn, load_audio)
        t = time.time()
        result = evaluate_set(sets[s], transcribe_fn, f"{name} on {s}")
        result.update(system=name, test_set=s, seconds=round(time.time() - t, 1))
        result.pop("rtf", None)  # meaningless with the encoder shared between systems
        write_rows(run / "eval" / name / f"{s}.json", [result])
        log(f"eval: {name} on {s}: WER {result['wer']}% ({result['utterances']} utts, {result['seconds']} s)")


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
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of training texts held out for validation")
    p.add_argument("--epochs", type=float, default=4, help="epochs per training run (the best one is kept)")
    p.add_argument("--lora-lrs", default="1e-4,3e-4", help="LoRA learning-rate grid, tried on the first domain")
    p.add_argument("--ft-lrs", default="1e-5,3e-5", help="full fine-tuning learning-rate grid, first domain")
    p.add_argument("--methods", default="lora,ft,ft-last3,ft-enc-dec", help="which training methods to run")
    p.add_argument("--systems", default="*", help="eval: only systems matching these comma-separated globs")
    p.add_argument("--table6-quick", action="store_true", help="Table VI with bench/adml.py --quick (k = 1, 3, 25)")
    p.add_argument("--llm-url", default=None, help="OpenAI-compatible LLM (default: start bench/llm_server.sh)")
    args = p.parse_args()
    args.lora_lrs = [float(x) for x in args.lora_lrs.split(",")]
    args.ft_lrs = [float(x) for x in args.ft_lrs.split(",")]
    args.methods = set(args.methods.split(","))
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {','.join(STAGES)}")
    run = args.run
    run.mkdir(parents=True, exist_ok=True)
    import report  # bench/report.py: tables and plots from the run folder

    for stage in STAGES:
        if stage in stages:
            t = time.time()
            log(f"stage {stage}")
            {"generate": stage_generate, "split": stage_split, "ood": stage_ood, "train": stage_train,
             "eval": stage_eval, "table6": stage_table6, "report": lambda a, r: report.write(r)}[stage](args, run)
            log(f"stage {stage} done in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
