"""bench/new_domain.py's bookkeeping on made-up run folders: the split, the recipe it trains,
and the report's arithmetic. (That its transcripts equal das.py eval's: its own check stage,
on real runs.)"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import new_domain  # noqa: E402
import study_data  # noqa: E402


def args_for(run: Path, **kw):
    return argparse.Namespace(**{
        "run": run, "domain": "telephony", "spec": "telephony", "real": "asterisk", "extra_real": [],
        "count": 40, "test_count": 5, "shipped_test_count": 3, "model": "base", "device": "cpu", "threads": 0,
        "lr": 3e-4, "epochs": 1, "seed": 1, "check": 5, "llm_url": None, **kw})


def manifest(path: Path, texts: list[str]) -> None:
    study_data.write_rows(path, [{"audio": f"audio/{i}.flac", "text": t, "duration": 2.0, "voice": "flite:slt"}
                                for i, t in enumerate(texts)])


def test_split_drops_test_texts_the_domain_trained_on(tmp_path):
    data = tmp_path / "data"
    manifest(data / "train" / "telephony" / "manifest.jsonl", [f"press {i} for sales" for i in range(40)] + ["extra"])
    manifest(data / "test_raw" / "telephony" / "manifest.jsonl",
             ["Press 3 for sales.", "please hold", "please hold", "goodbye now", "one", "two beyond the count"])
    for d in study_data.DOMAINS:
        manifest(data / "test_raw" / d / "manifest.jsonl", [f"{d} one", f"{d} two", f"{d} three", f"{d} four"])
    sizes = new_domain.stage_split(args_for(tmp_path), tmp_path)
    fit = study_data.read_rows(data / "train" / "telephony" / "fit.jsonl")
    val = study_data.read_rows(data / "train" / "telephony" / "val.jsonl")
    assert len(fit) + len(val) == 40 and not {r["text"] for r in fit} & {r["text"] for r in val} and val
    test = [r["text"] for r in study_data.read_rows(data / "test_raw" / "telephony" / "test.jsonl")]
    assert test == ["please hold", "goodbye now", "one"]  # a training text and a repeat dropped
    assert sizes["telephony"] == {"test": 3, "dropped_overlap": 2, "fit": len(fit), "val": len(val)}
    assert all(sizes[d] == {"test": 3, "dropped_overlap": 0} for d in study_data.DOMAINS)


def test_train_is_the_shipped_recipe_with_replay(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("reproduce.run_logged", lambda cmd, log: calls.append(cmd))  # train_one runs it
    monkeypatch.setattr("lora.read_header", lambda path: {"__metadata__": {"val_loss": "1.5", "steps": "9",
                                                                            "total_steps": "10"}})
    new_domain.stage_train(args_for(tmp_path), tmp_path)
    cmd = " ".join(calls[0])
    for part in ("--method lora", "--lr 0.0003", "--epochs 1", "--seed 1", "--batch-size 16",
                 f"--replay {tmp_path}/data/replay/manifest.jsonl", f"--val {tmp_path}/data/train/telephony/val.jsonl",
                 f"--data {tmp_path}/data/train/telephony/fit.jsonl", f"--out {tmp_path}/models/lora-telephony.st"):
        assert part in cmd
    assert json.loads((tmp_path / "models" / "lora-telephony.done.json").read_text())["best_step"] == 9
    new_domain.stage_train(args_for(tmp_path), tmp_path)  # done: not trained again
    assert len(calls) == 1


def fake_result(name: str, errors: list[int], hyps: list[str]) -> dict:
    details = [{"audio": f"/a/{name}{i}.wav", "substitutions": e, "deletions": 0, "insertions": 0,
                "ref_norm": f"ref {i}", "hyp_norm": h, "hypothesis": h} for i, (e, h) in enumerate(zip(errors, hyps))]
    return {"name": name, "utterances": len(errors), "substitutions": sum(errors), "deletions": 0, "insertions": 0,
            "ref_words": 10 * len(errors), "details": details}


def test_report_changes_pool_the_real_speech_and_list_remaining_errors(tmp_path):
    args = args_for(tmp_path)
    errors = {"base": 4, "telephony alone": 3, "DAS-3": 4, "DAS-4": 2}
    for system, e in errors.items():
        for s in new_domain.test_sets(args, tmp_path):
            hyps = ["ref 0", "wrong"] if system == "DAS-4" else ["x", "y"]
            study_data.write_rows(tmp_path / "eval" / system / f"{s}.json",
                                  [fake_result(s, [0, e] if system == "DAS-4" else [e // 2, e - e // 2], hyps)])
    text = new_domain.stage_report(args, tmp_path).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| asterisk |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["asterisk", "2", "20.00", "15.00", "20.00", "10.00"]  # WER: errors / 20 words
    assert cells[6].startswith("-25.0%") and cells[8].startswith("-50.0%") and cells[9].startswith("-50.0%")
    pooled = next(line for line in text.splitlines() if line.startswith("| real out-of-domain, pooled |"))
    assert pooled.split("|")[2].strip() == "4"  # librivox and cards, 2 utterances each
    assert "DAS-4 still wrong on 1 utterances" in text and '"ref 1" → "wrong"' in text
