"""bench/tau_sweep.py: which systems it scores and the table it prints (the scoring itself is
bench/scorer.py's, which reproduce.py's tests cover)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import tau_sweep  # noqa: E402


def test_the_base_then_das_at_each_tau_with_the_shipped_options():  # das.py's defaults
    systems = tau_sweep.systems(["m.st", "w.st"], [0.0, 0.01, 1.0])
    assert [name for name, _, _ in systems] == ["original", "tau=0", "tau=0.01", "tau=1"]
    assert systems[0][1]["kind"] == "base" and systems[0][2] == []
    config = systems[2][1]
    assert (config["kind"], config["files"], config["tau"], config["strategy"], config["end"]) == \
        ("adml", ["m.st", "w.st"], 0.01, "route", "base")
    assert tau_sweep.systems(["m.st"], [0.01], strategy="max-only")[1][1]["strategy"] == "max-only"
    labelled = tau_sweep.systems(["m.st"], [0.01], "mixed")
    assert [name for name, _, _ in labelled] == ["original", "mixed tau=0.01"]  # one OUT for several adapter sets


def test_table_pools_edits_over_the_sets():
    def score(errors, words):
        return {"wer": 100 * errors / words, "substitutions": errors, "deletions": 0, "insertions": 0,
                "ref_words": words}

    results = {("original", "a"): score(10, 100), ("original", "b"): score(10, 300),
               ("tau=0.01", "a"): score(5, 100), ("tau=0.01", "b"): score(16, 300),
               ("tau=0.1", "a"): score(8, 100)}  # b not scored yet
    lines = tau_sweep.table(results, ["original", "tau=0.01", "tau=0.1"], ["a", "b"]).splitlines()
    assert lines[2] == "| original | 10.00 | 3.33 | 5.00 | +0.0% |"
    assert lines[3] == "| tau=0.01 | 5.00 | 5.33 | 5.25 | +5.0% |"  # 21 errors in 400 words against 20
    assert lines[4] == "| tau=0.1 | 8.00 | - | - | - |"


def test_a_missing_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tau_sweep.main(["--loras", str(tmp_path / "gone.st"), "--data", str(tmp_path / "x.jsonl"),
                        "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "no such file" in err and "gone.st" in err and "x.jsonl" in err


def test_plain_adapters_come_after_the_base_with_reproduces_config():
    systems = tau_sweep.systems(["m.st", "w.st"], [0.01], "das", {"lora-multi": "runs/x/multi.st"})
    assert [name for name, _, _ in systems] == ["original", "lora-multi", "das tau=0.01"]
    assert systems[1][1] == {"kind": "lora", "files": ["multi.st"], "tau": 0.0, "strategy": "das"}
    assert systems[1][2] == ["runs/x/multi.st"]  # one file: das.py decodes it merged, not with ADML
    alone = tau_sweep.systems([], [0.01], "", {"lora-multi": "multi.st"})
    assert [name for name, _, _ in alone] == ["original", "lora-multi"]  # no DAS without --loras


@pytest.mark.parametrize("argv, message", [
    (["--plain", "multi.st"], "NAME=FILE"),
    (["--plain", "=multi.st"], "NAME=FILE"),
    ([], "give --loras, --plain or both"),
])
def test_bad_plain_or_nothing_to_score_is_an_error(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        tau_sweep.main([*argv, "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err


def test_a_missing_plain_adapter_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tau_sweep.main(["--plain", f"multi={tmp_path / 'multi.st'}", "--data", str(tmp_path / "x.jsonl"),
                        "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "no such file" in err and "multi.st" in err
