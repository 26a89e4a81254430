"""bench/reproduce.py's data plumbing (bench/study_data.py), its train and eval stages' bookkeeping and
bench/report.py's arithmetic, on made-up run folders (the tune stage: tests/test_tune.py)."""
import gzip
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402
import reproduce  # noqa: E402
import scorer  # noqa: E402
import study_data  # noqa: E402


def write_manifest(path: Path, texts: list[str], voice: str) -> None:
    study_data.write_rows(path, [{"audio": f"audio/{i}.flac", "text": t, "duration": 2.0, "voice": voice}
                                for i, t in enumerate(texts)])


def test_validation_is_a_stable_tenth():
    texts = [f"play song number {i} please" for i in range(2000)]
    val = [t for t in texts if study_data.is_validation(t, 0.1)]
    assert 150 < len(val) < 250
    # Case and punctuation do not move a text between the splits.
    assert all(study_data.is_validation(t.upper() + "?", 0.1) for t in val[:20])


def test_split_keeps_test_texts_out_of_training(tmp_path):
    run = tmp_path / "run"
    for d in study_data.DOMAINS:
        write_manifest(run / "data" / "train" / d / "manifest.jsonl",
                       [f"what is the {d} like number {i}" for i in range(50)] + ["extra beyond the count"], "flite:slt")
        write_manifest(run / "data" / "test_raw" / d / "manifest.jsonl",
                       ["What is the music like, number 3?", f"a new {d} question", f"a new {d} question"],
                       "festival:kal_diphone")
    args = type("A", (), {"train_per_domain": 50, "test_per_domain": 10, "val_fraction": 0.1})()
    sizes = study_data.stage_split(args, run)
    for d in study_data.DOMAINS:
        fit = study_data.read_rows(run / "data" / "train" / d / "fit.jsonl")
        val = study_data.read_rows(run / "data" / "train" / d / "val.jsonl")
        test = study_data.read_rows(run / "data" / "test_raw" / d / "test.jsonl")
        assert len(fit) + len(val) == 50 and not {r["text"] for r in fit} & {r["text"] for r in val}
        assert [r["text"] for r in test] == [f"a new {d} question"]  # the training text and the repeat dropped
        assert sizes[d]["test_dropped_overlap"] == 2
    multi = study_data.read_rows(run / "data" / "train" / "val_multi.jsonl")
    assert len(multi) == sum(sizes[d]["val"] for d in study_data.DOMAINS)
    assert all(Path(r["audio"]).is_absolute() for r in multi)


def test_ood_manifests(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    (sounds / "letters").mkdir(parents=True)
    for name in ("activated", "beep", "letters/at"):
        (sounds / f"{name}.wav").write_bytes(b"")
    texts = tmp_path / "core.txt.gz"
    with gzip.open(texts, "wt") as f:
        f.write("; Core sounds\n\nactivated: Activated.\nbeep: [this is a simple beep tone]\n"
                "letters/at: at [@]\nmissing-file: Not shipped.\n")
    monkeypatch.setattr(study_data, "ASTERISK_SOUNDS", sounds)
    monkeypatch.setattr(study_data, "ASTERISK_TEXTS", texts)
    study_data.stage_ood(None, tmp_path / "run")
    rows = study_data.read_rows(tmp_path / "run" / "data" / "ood" / "asterisk.jsonl")
    assert [r["text"] for r in rows] == ["Activated.", "at"]
    if study_data.POCKETSPHINX.is_dir():  # tests/setup.sh installs it
        libri = study_data.read_rows(tmp_path / "run" / "data" / "ood" / "librivox.jsonl")
        assert len(libri) == 5 and all(Path(r["audio"]).is_file() for r in libri)
        assert libri[1]["text"] == "he was not an ill disposed young man"


def test_report_tables_and_pooled_wer(tmp_path):
    run = tmp_path / "run"

    def result(system, test_set, errors, words):
        config = scorer.config("adml", ["m.st"], 0.01, "route") if system == "DAS" else scorer.config("base", [])
        study_data.write_rows(run / "eval" / system / f"{test_set}.json", [{
            "system": system, "test_set": test_set, "wer": 100 * errors / words, "substitutions": errors,
            "deletions": 0, "insertions": 0, "ref_words": words, "config": config}])

    for d, e in zip(study_data.DOMAINS, (20, 10, 10)):
        result("original", d, e, 100)
        result("DAS", d, e // 2, 100)
    result("original", "librivox", 1, 100)
    result("original", "cards", 0, 10)
    result("original", "asterisk", 9, 890)
    result("DAS", "librivox", 2, 100)
    result("DAS", "cards", 0, 10)
    result("DAS", "asterisk", 9, 890)
    results = report.load_results(run)
    assert report.pooled(results, "original", study_data.OOD_SETS) == pytest.approx(1.0)  # 10 errors / 1000 words
    assert report.pooled(results, "DAS", study_data.OOD_SETS) == pytest.approx(1.1)
    assert report.mean(results, "DAS", study_data.DOMAINS) == pytest.approx(20 / 3)
    text = report.write(run).read_text()
    assert "| DAS (route, τ = 0.01) | 10.00 (-50.0%) | 5.00 (-50.0%) | 5.00 (-50.0%) | 6.67 (-50.0%) |" in text
    assert "| DAS (route, τ = 0.01) | 2.00 (+100.0%) | 0.00 | 1.01 (+0.0%) | 1.10 (+10.0%) |" in text
    assert "| LoRA-ft-Multi | - | - | - | - |" in text  # not trained: a dash, never a made-up number
    assert "| 0.01 | 10.00 (-50.0%) |" in text  # the τ sweep's row for DAS itself
    assert "Not tuned on this run" in text
    assert {p.name for p in (run / "plots").glob("*.png")} == {"wer_by_method.png", "tau_sweep.png"}  # no Table VI yet


def test_join_clips(tmp_path):
    import numpy as np
    import soundfile as sf

    src = tmp_path / "src"
    (src / "audio").mkdir(parents=True)
    rows = []
    for i, seconds in enumerate((4.0, 4.0, 3.0, 6.0)):
        sf.write(src / "audio" / f"{i}.flac", np.full(int(seconds * 8000), 0.1, dtype=np.float32), 8000)
        rows.append({"audio": str(src / "audio" / f"{i}.flac"), "text": f"sentence {i}."})
    out = study_data.join_clips(rows, tmp_path / "long", seconds=12.0, gap=0.5)
    assert [r["text"] for r in out] == ["sentence 0. sentence 1. sentence 2.", "sentence 3."]
    assert [r["duration"] for r in out] == [12.0, 6.0]  # 4 + 0.5 + 4 + 0.5 + 3; no trailing gap
    audio, sr = sf.read(tmp_path / "long" / out[0]["audio"])
    assert sr == 16000 and len(audio) == 12 * 16000
    assert study_data.join_clips([], tmp_path / "long") == out  # made once, then read back


def test_fortune_texts(tmp_path):
    path = tmp_path / "fortunes"
    path.write_text("A gift of a flower will soon be made to you.\n%\nYou will\n  live long.\n%\n"
                    "Too short.\n%\nThe best is yet to come. -- Someone\n%\nCall 555 1234 today!\n%\n"
                    "Beware of a tall dark stranger.\n")
    assert study_data.fortune_texts(path, 10) == ["A gift of a flower will soon be made to you.",
                                                  "You will live long.", "Beware of a tall dark stranger."]
    assert study_data.fortune_texts(path, 1) == ["A gift of a flower will soon be made to you."]


def test_report_leaves_out_a_stale_tau_sweep(tmp_path):
    run = tmp_path / "run"
    das = scorer.config("adml", ["a.st"], 0.025, "max-only")
    for system, config in (("original", scorer.config("base", [])), ("DAS", das), ("DAS tau=0", {**das, "tau": 0.0}),
                           ("DAS tau=0.1", {**das, "tau": 0.1, "strategy": "route"})):  # made before the tune stage
        study_data.write_rows(run / "eval" / system / "music.json", [{
            "system": system, "test_set": "music", "wer": 10.0, "substitutions": 10, "deletions": 0,
            "insertions": 0, "ref_words": 100, "config": config}])
    results = report.load_results(run)
    assert ("DAS tau=0", "music") in results and ("DAS tau=0.1", "music") not in results
    assert report.das_label(results) == "DAS (max-only, τ = 0.025)"


def test_a_score_is_redone_when_its_system_changes(tmp_path):
    out = tmp_path / "eval" / "DAS" / "music.json"
    config = scorer.config("adml", [Path("m/lora-music.st")], 0.025, "route")
    assert config == {"kind": "adml", "files": ["lora-music.st"], "tau": 0.025, "strategy": "route"}
    assert not scorer.is_done(out, config)
    study_data.write_rows(out, [{"system": "DAS", "wer": 5.0, "config": config}])
    assert scorer.is_done(out, config)
    assert not scorer.is_done(out, {**config, "strategy": "max-only"})
    assert not scorer.is_done(out, {**config, "tau": 0.01})
    assert not scorer.is_done(out, {**config, "files": ["lora-music-other.st"]})
    assert scorer.config("lora", [Path("m/lora-multi.st")]) == {"kind": "lora", "files": ["lora-multi.st"]}


def test_replay_texts_take_the_categories_in_turn_and_leave_out_the_validation_file(tmp_path):
    def fortune_file(name, lines):
        (tmp_path / name).write_text("\n%\n".join(lines) + "\n")

    fortune_file("fortunes", ["This one is in the validation set."])
    for c in study_data.REPLAY_CATEGORIES:
        fortune_file(c, [])
    fortune_file("people", ["People are the same everywhere you go.", "This one is in the validation set.",
                            "A second sentence about people, long enough."])
    fortune_file("work", ["Work expands to fill the time available.", "people are the same everywhere you go",
                          "Too short", "Work hard and the rest will follow."])
    assert study_data.replay_texts(4, tmp_path) == [
        "People are the same everywhere you go.", "Work expands to fill the time available.",
        "A second sentence about people, long enough.", "Work hard and the rest will follow."]
    with pytest.raises(SystemExit, match="only 4 usable texts"):
        study_data.replay_texts(5, tmp_path)
    (tmp_path / "pets").unlink()
    with pytest.raises(SystemExit, match="no pets"):
        study_data.replay_texts(1, tmp_path)


def test_generate_sends_every_job_to_both_one_thread_llm_servers(tmp_path, monkeypatch):
    started, servers, spoken = [], [], []

    def fake_run(cmd, log, env=None, wait=True, code=0):
        if wait:  # bench/llm_server.sh
            return servers.append((cmd[-1], env["PORT"], env["N_THREADS"]))
        started.append(cmd)
        return type("Done", (), {"wait": lambda self: code})()

    monkeypatch.setattr(study_data, "run_logged", fake_run)
    monkeypatch.setattr(study_data, "FORTUNES", tmp_path / "no-fortunes")
    monkeypatch.setattr(study_data, "fortune_texts", lambda path, count: ["a fortune"] * count)
    monkeypatch.setattr(study_data, "replay_texts", lambda count: ["a replay text"] * count)
    monkeypatch.setattr(study_data, "speak_texts",
                        lambda texts, out, voices: spoken.append((out.name, len(texts), voices)))
    monkeypatch.setattr(study_data, "llm_server_up", lambda env: False)
    monkeypatch.setenv("PORT", "9000")
    args = type("Args", (), {"llm_url": None, "train_per_domain": 10, "test_per_domain": 4, "ood_val_count": 3})()
    study_data.write_rows(tmp_path / "data" / "train" / "music" / "manifest.jsonl", [{"text": "x"}] * 10)  # done
    study_data.stage_generate(args, tmp_path)
    assert spoken == [("fortunes", 3, study_data.OOD_VAL_VOICES),
                      ("replay", study_data.REPLAY_COUNT, study_data.TRAIN_VOICES)]  # the replay set: training voices
    # started, then stopped once every job is done
    assert servers == [("start", "9000", "1"), ("start", "9001", "1"), ("stop", "9000", "1"), ("stop", "9001", "1")]
    urls = {cmd[cmd.index("--out") + 1].split("data/")[1]: cmd[cmd.index("--llm-url") + 1] for cmd in started}
    assert "train/music" not in urls and len(urls) == 6  # 2 training sets, 3 test sets, everyday
    # each job's client sends every request to the less busy server (datagen.llm.ChatClient)
    assert set(urls.values()) == {"http://127.0.0.1:9000/v1,http://127.0.0.1:9001/v1"}
    seeds = {cmd[cmd.index("--out") + 1].split("data/")[1]: cmd[cmd.index("--seed") + 1] for cmd in started}
    assert (seeds["test_raw/music"], seeds["train/weather"], seeds["val_ood/everyday"]) == ("3000", "0", "2000")
    # a server already up on 9000 (the user's) is used and left up; a failed job still stops ours
    monkeypatch.setattr(study_data, "llm_server_up", lambda env: env["PORT"] == "9000")
    monkeypatch.setattr(study_data, "run_logged", lambda *a, **k: fake_run(*a, **k, code=1))
    servers.clear()
    with pytest.raises(SystemExit, match="generation failed"):
        study_data.stage_generate(args, tmp_path)
    assert servers == [("start", "9000", "1"), ("start", "9001", "1"), ("stop", "9001", "1")]
    monkeypatch.setattr(study_data, "run_logged", fake_run)
    started.clear()
    args.llm_url = "http://example:1/v1"  # a server of the user's: no local ones, every job goes there
    servers.clear()
    study_data.stage_generate(args, tmp_path)
    assert servers == [] and {cmd[cmd.index("--llm-url") + 1] for cmd in started} == {"http://example:1/v1"}


def test_a_lock_held_by_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path):
    import subprocess

    lock = tmp_path / "x.lock"
    assert study_data.claim(lock) and lock.read_text() == str(os.getpid())
    assert not study_data.claim(lock)  # held (by this very process, which is alive)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(str(dead.pid))
    assert study_data.claim(lock) and lock.read_text() == str(os.getpid())


def train_args(**changes):
    import types

    return types.SimpleNamespace(**{"lora_lr": 3e-4, "ft_lr": 1e-5, "epochs": 1.0, "seed": 1,
                                    "methods": {"lora"}, "train_per_domain": 2, "model": "base", "device": "cpu",
                                    **changes})


def test_the_study_trains_the_shipped_recipe_and_the_papers_baselines(tmp_path):
    args = train_args(methods={"lora", "ft", "ft-last3", "ft-enc-dec"})
    runs = reproduce.train_runs(args)
    assert [r["name"] for r in runs] == ["lora-music", "lora-weather", "lora-sports", "lora-multi", "ft-music",
                                         "ft-weather", "ft-sports", "ft-multi", "ft-last3-music", "ft-enc-dec-music"]
    cmd = reproduce.train_command(args, tmp_path, runs[0])
    assert cmd[cmd.index("--replay") + 1].endswith("data/replay/manifest.jsonl")  # at train's default weight, 1
    assert [cmd[cmd.index(f) + 1] for f in ("--lr", "--epochs", "--seed", "--method")] == ["0.0003", "1", "1", "lora"]
    multi = reproduce.train_command(args, tmp_path, runs[3])  # LoRA-ft-Multi: all three domains, no replay
    assert "--replay" not in multi and multi.count("--data") == 3 and multi[multi.index("--val") + 1].endswith(
        "val_multi.jsonl")
    assert [r["name"] for r in reproduce.train_runs(train_args(methods={"ft"}))] == [
        "ft-music", "ft-weather", "ft-sports", "ft-multi"]


def test_two_processes_share_the_train_stage(tmp_path, monkeypatch):
    """A model another live process trains is skipped; one a dead process left is trained; a
    model trained with other settings stops the stage rather than be scored as this one."""
    run = tmp_path / "run"
    for d in study_data.DOMAINS:
        write_manifest(run / "data" / "train" / d / "manifest.jsonl", ["a text"] * 2, "v")
    write_manifest(run / "data" / "replay" / "manifest.jsonl", ["a replay text"] * 3, "v")
    monkeypatch.setattr(reproduce, "REPLAY_COUNT", 3)
    (run / "models").mkdir(parents=True)
    (run / "models" / "lora-music.lock").write_text(str(os.getpid()))  # "another process"
    (run / "models" / "lora-sports.lock").write_text("999999999")  # no such process
    trained = []

    def fake_train(cmd, log_path):
        trained.append(Path(cmd[cmd.index("--out") + 1]).name)
        assert (run / "models" / (trained[-1][: -len(".st")] + ".lock")).read_text() == str(os.getpid())

    monkeypatch.setattr(reproduce, "run_logged", fake_train)
    import lora

    monkeypatch.setattr(lora, "read_header", lambda path: {"__metadata__": {
        "val_loss": "0.25", "steps": "56", "total_steps": "86"}})
    reproduce.stage_train(train_args(), run)
    assert trained == ["lora-weather.st", "lora-sports.st", "lora-multi.st"]
    done = json.loads((run / "models" / "lora-sports.done.json").read_text())
    assert (done["best_step"], done["lr"], done["replay"], done["seed"]) == (56, 3e-4, True, 1)
    assert not (run / "models" / "lora-music.done.json").exists()
    assert sorted(p.name for p in (run / "models").glob("*.lock")) == ["lora-music.lock"]
    with pytest.raises(SystemExit, match="lora-weather .* other settings"):
        reproduce.stage_train(train_args(lora_lr=1e-4), run)
