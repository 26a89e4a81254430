"""bench/bootstrap.py: paired bootstrap intervals of a relative WER change, on made-up results."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bootstrap  # noqa: E402


def result(test_set: str, errors: list[int]) -> dict:
    return {"test_set": test_set, "details": [{"audio": f"{test_set}/{i}.flac", "substitutions": e, "deletions": 0,
                                               "insertions": 0} for i, e in enumerate(errors)]}


def test_an_identical_system_changes_nothing_and_halved_errors_halve_in_every_resample():
    old = np.array([3, 0, 5, 1, 2], dtype=float)
    assert bootstrap.relative_change(old, old.copy()) == (0.0, 0.0, 0.0)
    # Every utterance halved: every resample is exactly -50%, so the interval has no width.
    assert bootstrap.relative_change(old, old / 2) == pytest.approx((-50.0, -50.0, -50.0))
    assert bootstrap.relative_change(np.zeros(3), np.ones(3)) is None  # no errors to be relative to


def test_interval_holds_the_change_and_narrows_with_more_utterances():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 2000):
        old = rng.poisson(2.0, n).astype(float)
        new = np.maximum(old + rng.integers(-1, 2, n), 0)  # noisy, no systematic change
        change, low, high = bootstrap.relative_change(old, new)
        assert low <= change <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(40) as wide


def test_paired_matches_utterances_by_audio_across_sets_and_refuses_different_ones():
    old = [result("a", [1, 2]), result("b", [4])]
    new = [result("a", [0, 2]), result("b", [1])]
    new[0]["details"].reverse()  # order does not matter: utterances are matched by audio path
    a, b = bootstrap.paired(old, new)
    assert sorted(zip(a, b)) == [(1, 0), (2, 2), (4, 1)]
    assert bootstrap.relative_change(a, b)[0] == pytest.approx(100 * (3 - 7) / 7)
    with pytest.raises(ValueError, match="different utterances"):
        bootstrap.paired([result("a", [1, 2])], [result("a", [1])])


def test_cli_reads_eval_folders_and_pools_the_chosen_sets(tmp_path):
    for system, errors in (("original", [[2, 2], [4]]), ("DAS", [[1, 1], [4]])):
        (tmp_path / system).mkdir()
        for name, e in zip(("music", "asterisk"), errors):
            (tmp_path / system / f"{name}.json").write_text(json.dumps(result(name, e)))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bootstrap.py"), str(tmp_path / "original"),
                          str(tmp_path / "DAS")], capture_output=True, text=True, check=True).stdout
    assert "music: -50.0% [-50.0, -50.0]" in out
    assert "asterisk: +0.0% [+0.0, +0.0]" in out
    assert "pooled: -25.0%" in out  # 6 errors against 8
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "bootstrap.py"), str(tmp_path / "original"),
                          str(tmp_path / "DAS"), "--sets", "weather"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no result for weather" in bad.stderr


def test_report_shows_intervals_only_where_both_systems_have_details():
    import report

    results = {}
    for system, scale in (("original", 2), ("DAS", 1)):
        for s in (*report.DOMAINS, *report.OOD_SETS):
            results[(system, s)] = result(s, [scale * 2, scale * 3])
    text = report.intervals_table(results)
    assert "| DAS against the original | -50.0% [-50.0, -50.0] | -50.0% [-50.0, -50.0] | -50.0% [-50.0, -50.0] " \
           "| -50.0% [-50.0, -50.0] |" in text
    assert "| DAS against LoRA-ft-Multi | - | - | - | - |" in text  # LoRA-ft-Multi not scored: no made-up number
    del results[("DAS", "cards")]["details"]  # a result without per-utterance details cannot be resampled
    assert "| DAS against the original | -50.0% [-50.0, -50.0] | -50.0% [-50.0, -50.0] | -50.0% [-50.0, -50.0] " \
           "| - |" in report.intervals_table(results)
