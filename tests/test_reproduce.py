"""bench/reproduce.py's data plumbing and bench/report.py's arithmetic, on made-up run folders."""
import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402
import reproduce  # noqa: E402


def write_manifest(path: Path, texts: list[str], voice: str) -> None:
    reproduce.write_rows(path, [{"audio": f"audio/{i}.flac", "text": t, "duration": 2.0, "voice": voice}
                                for i, t in enumerate(texts)])


def test_validation_is_a_stable_tenth():
    texts = [f"play song number {i} please" for i in range(2000)]
    val = [t for t in texts if reproduce.is_validation(t, 0.1)]
    assert 150 < len(val) < 250
    # Case and punctuation do not move a text between the splits.
    assert all(reproduce.is_validation(t.upper() + "?", 0.1) for t in val[:20])


def test_split_keeps_test_texts_out_of_training(tmp_path):
    run = tmp_path / "run"
    for d in reproduce.DOMAINS:
        write_manifest(run / "data" / "train" / d / "manifest.jsonl",
                       [f"what is the {d} like number {i}" for i in range(50)] + ["extra beyond the count"], "flite:slt")
        write_manifest(run / "data" / "test_raw" / d / "manifest.jsonl",
                       ["What is the music like, number 3?", f"a new {d} question", f"a new {d} question"],
                       "festival:kal_diphone")
    args = type("A", (), {"train_per_domain": 50, "test_per_domain": 10, "val_fraction": 0.1})()
    sizes = reproduce.stage_split(args, run)
    for d in reproduce.DOMAINS:
        fit = reproduce.read_rows(run / "data" / "train" / d / "fit.jsonl")
        val = reproduce.read_rows(run / "data" / "train" / d / "val.jsonl")
        test = reproduce.read_rows(run / "data" / "test_raw" / d / "test.jsonl")
        assert len(fit) + len(val) == 50 and not {r["text"] for r in fit} & {r["text"] for r in val}
        assert [r["text"] for r in test] == [f"a new {d} question"]  # the training text and the repeat dropped
        assert sizes[d]["test_dropped_overlap"] == 2
    multi = reproduce.read_rows(run / "data" / "train" / "val_multi.jsonl")
    assert len(multi) == sum(sizes[d]["val"] for d in reproduce.DOMAINS) and all(Path(r["audio"]).is_absolute() for r in multi)


def test_ood_manifests(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    (sounds / "letters").mkdir(parents=True)
    for name in ("activated", "beep", "letters/at"):
        (sounds / f"{name}.wav").write_bytes(b"")
    texts = tmp_path / "core.txt.gz"
    with gzip.open(texts, "wt") as f:
        f.write("; Core sounds\n\nactivated: Activated.\nbeep: [this is a simple beep tone]\n"
                "letters/at: at [@]\nmissing-file: Not shipped.\n")
    monkeypatch.setattr(reproduce, "ASTERISK_SOUNDS", sounds)
    monkeypatch.setattr(reproduce, "ASTERISK_TEXTS", texts)
    reproduce.stage_ood(None, tmp_path / "run")
    rows = reproduce.read_rows(tmp_path / "run" / "data" / "ood" / "asterisk.jsonl")
    assert [r["text"] for r in rows] == ["Activated.", "at"]
    if reproduce.POCKETSPHINX.is_dir():  # tests/setup.sh installs it
        libri = reproduce.read_rows(tmp_path / "run" / "data" / "ood" / "librivox.jsonl")
        assert len(libri) == 5 and all(Path(r["audio"]).is_file() for r in libri)
        assert libri[1]["text"] == "he was not an ill disposed young man"


def test_report_tables_and_pooled_wer(tmp_path):
    run = tmp_path / "run"

    def result(system, test_set, errors, words):
        reproduce.write_rows(run / "eval" / system / f"{test_set}.json", [{
            "system": system, "test_set": test_set, "wer": 100 * errors / words, "substitutions": errors,
            "deletions": 0, "insertions": 0, "ref_words": words}])

    for d, e in zip(report.DOMAINS, (20, 10, 10)):
        result("original", d, e, 100)
        result("DAS", d, e // 2, 100)
    result("original", "librivox", 1, 100)
    result("original", "cards", 0, 10)
    result("original", "asterisk", 9, 890)
    result("DAS", "librivox", 2, 100)
    result("DAS", "cards", 0, 10)
    result("DAS", "asterisk", 9, 890)
    results = report.load_results(run)
    assert report.pooled(results, "original", report.OOD) == pytest.approx(1.0)  # 10 errors / 1000 words
    assert report.pooled(results, "DAS", report.OOD) == pytest.approx(1.1)
    assert report.mean(results, "DAS", report.DOMAINS) == pytest.approx(20 / 3)
    text = report.write(run).read_text()
    assert "| DAS (τ = 0.025) | 10.00 (-50.0%) | 5.00 (-50.0%) | 5.00 (-50.0%) | 6.67 (-50.0%) |" in text
    assert "| DAS (τ = 0.025) | 2.00 (+100.0%) | 0.00 | 1.01 (+0.0%) | 1.10 (+10.0%) |" in text
    assert "| LoRA-ft-Multi | - | - | - | - |" in text  # not trained: a dash, never a made-up number
