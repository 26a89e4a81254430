"""A new domain from its name alone, scored on real speech of that domain: README's path from
a domain name to an adapter, then the new adapter beside the three that ship.

    python bench/new_domain.py --domain telephony --real asterisk --run runs/telephony

Everything lands in --run; each stage skips what is done, so rerun the command to resume.

  generate  the domain's training items (datagen through two local LLM servers, TRAIN_VOICES,
            LLM seed 0) and, from another LLM run, its test items (TEST_VOICES, seed 3000); test
            sets of the shipped domains made as the study makes them; the replay set.
  split     10% of the training items, by a hash of the text, become validation; a test item
            whose text is also a training text is dropped.
  ood       the real-speech manifests (study_data.stage_ood), --real among them.
  train     das.py train with the recipe of the adapters that ship (bench/reproduce.py's).
  eval      four systems, each decoded as das.py decodes it: the base (plain decoding), the new
            adapter alone (one file: merged in, nothing to route), DAS with the three shipped
            adapters and with all four (routing, das.py's τ). The frozen encoder runs once per
            window for all of them (scorer.py, memo.EncoderMemo).
  check     das.py eval itself, each system on the first --check utterances of every set: its
            transcripts must equal the eval stage's.
  report    report.md: every change with its paired-bootstrap interval, and the first
            utterances of --real that DAS with four adapters still gets wrong.
"""

import argparse
import json
import sys
from pathlib import Path

import bootstrap
from reproduce import train_one
from study_data import (DOMAINS, OOD_SETS, REPLAY_COUNT, ROOT, TEST_VOICES, TRAIN_VOICES, generate_jobs,
                        is_validation, log, new_texts, read_rows, replay_texts, run_llm_jobs, run_logged, speak_texts,
                        write_rows)

from datagen.clean import normalise

STAGES = ("generate", "split", "ood", "train", "eval", "check", "report")


def systems(domain: str) -> dict[str, list[int]]:
    """System name -> its adapters (1-3: the shipped ones, 4: the new one)."""
    return {"base": [], f"{domain} alone": [4], "DAS-3": [1, 2, 3], "DAS-4": [1, 2, 3, 4]}


def adapter_files(args, run: Path) -> list[Path]:
    return [ROOT / "adapters" / f"{d}.st" for d in DOMAINS] + [run / "models" / f"lora-{args.domain}.st"]


def test_sets(args, run: Path) -> dict[str, Path]:
    """The real in-domain set first, then real out-of-domain speech, then the synthetic sets."""
    ood = run / "data" / "ood"
    real = [args.real] + [s for s in OOD_SETS if s != args.real] + [p.stem for p in args.extra_real]
    return {**{s: ood / f"{s}.jsonl" for s in real},
            **{d: run / "data" / "test_raw" / d / "test.jsonl" for d in (*DOMAINS, args.domain)}}


def stage_generate(args, run: Path) -> None:
    data = run / "data"
    sets = [(data / "train" / args.domain, args.spec, args.count, TRAIN_VOICES, 2),
            (data / "test_raw" / args.domain, args.spec, args.test_count, TEST_VOICES, 1),
            *((data / "test_raw" / d, d, args.shipped_test_count, TEST_VOICES, 1) for d in DOMAINS)]
    speak_texts(replay_texts(REPLAY_COUNT), data / "replay", TRAIN_VOICES)
    run_llm_jobs(args, run, generate_jobs(run, sets))


def stage_split(args, run: Path) -> dict:
    data, d = run / "data", args.domain
    rows = read_rows(data / "train" / d / "manifest.jsonl")[: args.count]
    write_rows(data / "train" / d / "fit.jsonl", [r for r in rows if not is_validation(r["text"], 0.1)])
    write_rows(data / "train" / d / "val.jsonl", [r for r in rows if is_validation(r["text"], 0.1)])
    # The shipped adapters' training texts are not kept, so only the new domain's are dropped.
    train_keys, sizes = {normalise(r["text"]) for r in rows}, {}
    for name, count in ((d, args.test_count), *((s, args.shipped_test_count) for s in DOMAINS)):
        test = read_rows(data / "test_raw" / name / "manifest.jsonl")[:count]
        kept = new_texts(test, train_keys)
        write_rows(data / "test_raw" / name / "test.jsonl", kept)
        sizes[name] = {"test": len(kept), "dropped_overlap": len(test) - len(kept)}
    sizes[d].update(fit=len(read_rows(data / "train" / d / "fit.jsonl")),
                    val=len(read_rows(data / "train" / d / "val.jsonl")))
    (data / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    log(f"split: {json.dumps(sizes)}")
    return sizes


def stage_ood(args, run: Path) -> None:
    from study_data import stage_ood as study_ood

    study_ood(args, run)
    for path in args.extra_real:  # more real speech: manifests with absolute audio paths
        write_rows(run / "data" / "ood" / f"{path.stem}.jsonl", read_rows(path))


def stage_train(args, run: Path) -> None:
    name = f"lora-{args.domain}"
    if (run / "models" / f"{name}.done.json").is_file():
        return
    spec = {"name": name, "method": "lora", "data": [args.domain], "lr": args.lr, "replay": True}
    (run / "models").mkdir(parents=True, exist_ok=True)
    train_one(args, run, spec, {k: v for k, v in spec.items() if k != "name"})


def stage_eval(args, run: Path) -> None:
    """Every system on every set made so far, as das.py decodes it (scorer.py: the base plainly,
    one adapter merged in, DAS routed at das.py's τ), into eval/<system>/<set>.json."""
    from das import DEFAULT_STRATEGY, DEFAULT_TAU
    from evaluation.evaluate import read_manifest
    from scorer import config, score_all

    sets = {}
    for name, path in test_sets(args, run).items():
        rows = read_manifest(path) if path.is_file() else []
        if rows:
            sets[name] = rows
        else:
            log(f"eval: {name} waits for {path} (stages generate, split)")
    files, todo = adapter_files(args, run), []
    for system, adapters in systems(args.domain).items():
        chosen = [files[i - 1] for i in adapters]
        kind = "adml" if len(chosen) > 1 else "lora" if chosen else "base"
        todo.append((system, config(kind, chosen, DEFAULT_TAU, DEFAULT_STRATEGY), chosen))
    score_all(args, run, "eval", [(*system, s) for s in sets for system in todo], sets)


def stage_check(args, run: Path) -> dict:
    """das.py eval on the first --check utterances of each set, per system: the eval stage,
    with its encoder shared, must give the transcripts das.py gives."""
    sets, files = test_sets(args, run), adapter_files(args, run)
    checked, differ = 0, []
    for system, adapters in systems(args.domain).items():
        out = run / "check" / f"{system}.json"
        if not out.is_file():
            loras = ",".join(str(files[i - 1]) for i in adapters)
            run_logged([sys.executable, "das.py", "eval", "--model", args.model, "--loras", loras,
                        "--data", *map(str, sets.values()), "--name", *sets, "--limit", str(args.check),
                        "--json", str(out)], run / "logs" / "check.log")
        for r in json.loads(out.read_text())["results"]:
            ours = {d["audio"]: d["hypothesis"] for d in json.loads((run / "eval" / system / f"{r['name']}.json")
                                                                      .read_text())["details"]}
            for d in r["details"]:
                checked += 1
                if ours[d["audio"]] != d["hypothesis"]:
                    differ.append({"system": system, "audio": d["audio"], "das.py": d["hypothesis"],
                                   "eval": ours[d["audio"]]})
    summary = {"checked": checked, "differ": differ}
    (run / "check" / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"check: {checked - len(differ)} of {checked} transcripts equal das.py eval's")
    return summary


def results(run: Path, system: str, names) -> list[dict]:
    return [json.loads((run / "eval" / system / f"{s}.json").read_text()) for s in names]


def stage_report(args, run: Path) -> Path:
    """report.md: WER per system and set, then each comparison as a relative change with its
    95% paired-bootstrap interval (bench/bootstrap.py), per set and pooled over real
    out-of-domain speech; then the first 20 --real utterances DAS-4 still gets wrong."""
    names, alone = list(test_sets(args, run)), f"{args.domain} alone"
    groups = {s: [s] for s in names}
    groups["real out-of-domain, pooled"] = [s for s in names[1:] if s not in (*DOMAINS, args.domain)]
    pairs = [("base", alone), ("base", "DAS-3"), ("base", "DAS-4"), ("DAS-3", "DAS-4")]
    head = ["test set", "utts", *(f"WER {s}" for s in systems(args.domain)), *(f"{n} vs {o}" for o, n in pairs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, sets in groups.items():
        res = {s: results(run, s, sets) for s in systems(args.domain)}
        wers = [100 * sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rs)
                / sum(r["ref_words"] for r in rs) for rs in res.values()]
        changes = [bootstrap.describe(bootstrap.relative_change(*bootstrap.paired(res[o], res[n]))) for o, n in pairs]
        lines.append(f"| {group} | {sum(r['utterances'] for r in res['base'])} | "
                     + " | ".join(f"{w:.2f}" for w in wers) + " | " + " | ".join(changes) + " |")
    wrong = [d for d in results(run, "DAS-4", [args.real])[0]["details"] if d["ref_norm"] != d["hyp_norm"]]
    errors = [f"- `{Path(d['audio']).name}`: \"{d['ref_norm']}\" → \"{d['hyp_norm']}\"" for d in wrong[:20]]
    check = json.loads((run / "check" / "summary.json").read_text()) if (run / "check" / "summary.json").is_file() \
        else None
    text = "\n".join([
        f"# {args.domain}: a domain from its name, on real speech", "",
        "Relative changes in summed word errors, 95% paired-bootstrap interval in brackets.", "", *lines, "",
        f"das.py eval gave the same transcripts on {check['checked'] - len(check['differ'])} of {check['checked']} "
        "checked utterances." if check else "The check stage has not run.", "",
        f"## {args.real}: DAS-4 still wrong on {len(wrong)} utterances; the first {len(errors)} in file order", "",
        *errors, ""])
    (run / "report.md").write_text(text)
    log(f"report: {run / 'report.md'}")
    return run / "report.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/new_domain", type=Path, help="folder for everything this makes")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--domain", required=True, help="a domain spec: a name under datagen/domains/ or a .json path")
    p.add_argument("--real", required=True, choices=OOD_SETS, help="the real speech of the new domain")
    p.add_argument("--extra-real", nargs="*", default=[], type=Path,
                   help="more real out-of-domain speech: manifests with absolute audio paths, named by file")
    p.add_argument("--count", type=int, default=1500,
                   help="training items generated, 10%% of them for validation (the shipped recipe)")
    p.add_argument("--test-count", type=int, default=200, help="synthetic test items of the new domain")
    p.add_argument("--shipped-test-count", type=int, default=100, help="synthetic test items per shipped domain")
    p.add_argument("--model", default="base", help="Whisper model")
    p.add_argument("--device", default="cpu", help="cpu or cuda: training and evaluation")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for eval (0: torch's default)")
    p.add_argument("--lr", type=float, default=3e-4, help="LoRA learning rate (the shipped recipe)")
    p.add_argument("--epochs", type=float, default=1, help="epochs (the shipped recipe)")
    p.add_argument("--seed", type=int, default=1, help="training seed (the shipped recipe)")
    p.add_argument("--check", type=int, default=5, help="utterances per set the check stage decodes with das.py")
    p.add_argument("--llm-url", default=None, help="OpenAI-compatible LLM (default: start bench/llm_server.sh)")
    args = p.parse_args(argv)
    args.spec, args.domain = args.domain, Path(args.domain).stem  # a spec path's domain is its file's name
    run = args.run.resolve()
    stages = {"generate": stage_generate, "split": stage_split, "ood": stage_ood, "train": stage_train,
              "eval": stage_eval, "check": stage_check, "report": stage_report}
    for stage in args.stages.split(","):
        stages[stage](args, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
