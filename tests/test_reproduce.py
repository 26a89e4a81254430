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
        study_data.write_rows(run / "eval" / system / f"{test_set}.json", [{
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


def test_statements_come_back_from_the_rejects(tmp_path):
    import statements

    run = tmp_path / "run"
    train = run / "data" / "train" / "music"
    write_manifest(train / "manifest.jsonl", ["Play Adele.", "What is jazz?"], "flite:slt")
    write_manifest(run / "data" / "test_raw" / "music" / "test.jsonl", ["Adele sings soul."], "flite:kal16")
    study_data.write_rows(train / "rejects.jsonl", [
        {"text": "The Beatles released Abbey Road in 1969.", "reason": "not_a_request"},
        {"text": "Adele sings soul.", "reason": "not_a_request"},             # a test text: never trained on
        {"text": "Here are some facts about music:", "reason": "preamble"},  # dropped for another reason
        {"text": "Jazz was born in New Orleans", "reason": "not_a_request"},
        {"text": "jazz was born in new orleans!", "reason": "not_a_request"},  # a duplicate of the one above
        {"text": "Hi there", "reason": "not_a_request"}])                    # fails another rule on a recheck
    assert statements.statements(run, "music") == ["The Beatles released Abbey Road in 1969.",
                                                   "Jazz was born in New Orleans"]


def test_report_leaves_out_a_stale_tau_sweep(tmp_path):
    run = tmp_path / "run"
    das = {"kind": "adml", "files": ["a.st"], "tau": 0.025, "strategy": "max-only"}
    for system, config in (("original", None), ("DAS", das), ("DAS tau=0", {**das, "tau": 0.0}),
                           ("DAS tau=0.1", {**das, "tau": 0.1, "strategy": "das"})):  # made before the tune stage
        study_data.write_rows(run / "eval" / system / "music.json", [{
            "system": system, "test_set": "music", "wer": 10.0, "substitutions": 10, "deletions": 0,
            "insertions": 0, "ref_words": 100, "config": config}])
    results = report.load_results(run)
    assert ("DAS tau=0", "music") in results and ("DAS tau=0.1", "music") not in results
    assert report.das_label(results) == "DAS (τ = 0.025, max-only)"


def test_a_score_is_redone_when_its_system_changes(tmp_path):
    out = tmp_path / "eval" / "DAS" / "music.json"
    config = scorer.Scorer.config("adml", [Path("m/lora-music-lr0.0003.st")], 0.025, "das")
    assert config["files"] == ["lora-music-lr0.0003.st"]
    assert not scorer.Scorer.is_done(out, config)
    study_data.write_rows(out, [{"system": "DAS", "wer": 5.0, "config": config}])
    assert scorer.Scorer.is_done(out, config)
    assert not scorer.Scorer.is_done(out, {**config, "strategy": "max-only"})
    # `end` and `switch` are recorded only when not the default, so scores made before them stay valid.
    make = scorer.Scorer.config
    assert make("adml", [], 0.1, "das", "any", "token") == make("adml", [], 0.1, "das")
    for rule in (("base", "token"), ("any", "word")):
        assert not scorer.Scorer.is_done(out, make("adml", [Path("lora-music-lr0.0003.st")], 0.025, "das", *rule))
    assert not scorer.Scorer.is_done(out, {**config, "files": ["lora-music-lr0.0001.st"]})


def test_report_tune_section_shows_every_step(tmp_path):
    import tune

    original = {"music": 10.0, "weather": 10.0, "sports": 10.0, "everyday": 5.0, "fortunes": 20.0}
    wer = {**original, "music": 8.0}
    first = {"lr": 1e-4, "strategy": "max-only", "tau": 0.05, "why": "step one's reason"}
    original_all = {**original, "long-domains": 10.0, "long-ood": 4.0}
    steps = [{**c, "wer": {**original_all, "long-ood": 4.4 if c["end"] == "any" else 4.0}}
             for c in tune.end_candidates(first)]
    (tmp_path / "tune.json").write_text(json.dumps({
        "first": first, "original": original, "candidates": [{**first, "wer": wer}], "original_all": original_all,
        "end_candidates": steps, "second": {**first, "end": "base", "why": "step two's reason"},
        "switch_candidates": [{**c, "switch": "word", "wer": original_all} for c in steps if c["end"] == "base"],
        "third": {**first, "end": "base", "switch": "word", "why": "step three's reason"},
        "data_candidates": [{**c, "switch": "word", "data": d, "wer": original_all} for d in ("requests", "statements")
                            for c in steps if c["end"] == "base"],
        "chosen": {**first, "end": "base", "switch": "word", "data": "statements", "why": "step four's reason"},
        "sizes": {s: 10 for s in original_all}}))
    text = report.tune_section(tmp_path)
    assert "| 0.0001 | max-only | 0.05 | 8.00 (-20.0%) | 10.00 (+0.0%) |" in text
    assert "| 0.3 | base |" in text and "4.40 (+10.0%)" in text
    assert "Step 1 chose: lr 0.0001, max-only, τ = 0.05: step one's reason." in text
    assert "Step 2 chose: lr 0.0001, max-only, τ = 0.05, base may end the transcript: step two's reason." in text
    assert "| 0.3 | word |" in text and "streams switch only between words: step three's reason." in text
    assert "Step 4, at step 3's choice, adapters trained on requests alone or requests and statements:" in text
    assert "| statements | 0.0001 | 0.3 |" in text
    assert ("Chosen: the adapters trained on requests and statements at lr 0.0001, τ = 0.05: step four's reason."
            in text)


def test_replay_texts_take_the_categories_in_turn_and_leave_out_the_validation_file(tmp_path):
    import replay_data

    def fortune_file(name, lines):
        (tmp_path / name).write_text("\n%\n".join(lines) + "\n")

    fortune_file("fortunes", ["This one is in the validation set."])
    for c in replay_data.CATEGORIES:
        fortune_file(c, [])
    fortune_file("people", ["People are the same everywhere you go.", "This one is in the validation set.",
                            "A second sentence about people, long enough."])
    fortune_file("work", ["Work expands to fill the time available.", "people are the same everywhere you go",
                          "Too short", "Work hard and the rest will follow."])
    assert replay_data.replay_texts(4, tmp_path) == [
        "People are the same everywhere you go.", "Work expands to fill the time available.",
        "A second sentence about people, long enough.", "Work hard and the rest will follow."]
    with pytest.raises(SystemExit, match="only 4 usable texts"):
        replay_data.replay_texts(5, tmp_path)
    (tmp_path / "pets").unlink()
    with pytest.raises(SystemExit, match="no pets"):
        replay_data.replay_texts(1, tmp_path)


def write_mo(path: Path, originals: list[str], order: str = "<") -> None:
    """A GNU .mo catalog (every original translated as itself): header, two tables, strings."""
    import struct

    strings = [o.encode() for o in sorted(originals)]
    n, start = len(strings), 28 + 16 * len(strings)
    table, blob = [], b""
    for s in strings:
        table.append(struct.pack(order + "II", len(s), start + len(blob)))
        blob += s + b"\0"
    header = struct.pack(order + "IIIIIII", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    path.write_bytes(header + b"".join(table) * 2 + blob)


def test_message_texts_read_catalogs_in_turn_and_keep_only_speakable_sentences(tmp_path):
    import replay_data

    catalogs = list(replay_data.MESSAGE_CATALOGS)
    for name in catalogs:
        write_mo(tmp_path / f"{name}.mo", [])
    write_mo(tmp_path / "git.mo", ["", "There is no tracking information for the current branch.",
                                   "Could not read %s.", "Use --force to override this check.",
                                   "See push.default in the manual.", "Too short.", "Print FILE to standard output.",
                                   "Not ending in a stop", "Your branch is up to date with the remote."])
    write_mo(tmp_path / "apt.mo", ["Do you want to continue?", "Do you want to continue?\0Plural form"], ">")
    assert replay_data.msgids(tmp_path / "apt.mo") == ["Do you want to continue?", "Do you want to continue?"]
    texts = replay_data.message_texts(3, tmp_path)
    assert len(texts) == 3 and texts[1] == "Do you want to continue?"  # git, apt, git: in turn, no repeat
    assert set(texts) - {texts[1]} <= {"There is no tracking information for the current branch.",
                                       "Your branch is up to date with the remote."}
    with pytest.raises(SystemExit, match="only 3 usable texts"):
        replay_data.message_texts(4, tmp_path)
    (tmp_path / "Linux-PAM.mo").unlink()
    with pytest.raises(SystemExit, match="apt install libpam-runtime"):
        replay_data.message_texts(1, tmp_path)
    (tmp_path / "bad.mo").write_bytes(b"\0" * 28)
    with pytest.raises(SystemExit, match="not a gettext"):
        replay_data.msgids(tmp_path / "bad.mo")


def test_mixed_replay_texts_alternate_fortunes_and_messages(monkeypatch):
    import replay_data

    monkeypatch.setattr(replay_data, "replay_texts", lambda count: [f"fortune {i}" for i in range(count)])
    monkeypatch.setattr(replay_data, "message_texts", lambda count: [f"message {i}" for i in range(count)])
    assert replay_data.texts_for("mixed", 5) == ["fortune 0", "message 0", "fortune 1", "message 1", "fortune 2"]
    assert replay_data.texts_for("mixed", 4) == ["fortune 0", "message 0", "fortune 1", "message 1"]
    assert replay_data.texts_for("fortunes", 2) == ["fortune 0", "fortune 1"]


def test_generate_sends_every_job_to_both_one_thread_llm_servers(tmp_path, monkeypatch):
    started, servers = [], []
    monkeypatch.setattr(study_data, "run_logged", lambda cmd, log, env=None: servers.append((cmd[-1], env["PORT"],
                                                                                          env["N_THREADS"])))
    monkeypatch.setattr(study_data, "start_logged", lambda cmd, log, env=None: started.append(cmd) or
                        type("Done", (), {"wait": lambda self: 0})())
    monkeypatch.setattr(study_data, "speak_fortunes", lambda args, run: None)
    monkeypatch.setattr(study_data, "llm_server_up", lambda env: False)
    monkeypatch.setenv("PORT", "9000")
    args = type("Args", (), {"llm_url": None, "train_per_domain": 10, "test_per_domain": 4, "ood_val_count": 3})()
    study_data.write_rows(tmp_path / "data" / "train" / "music" / "manifest.jsonl", [{"text": "x"}] * 10)  # done
    study_data.stage_generate(args, tmp_path)
    # started, then stopped once every job is done
    assert servers == [("start", "9000", "1"), ("start", "9001", "1"), ("stop", "9000", "1"), ("stop", "9001", "1")]
    urls = {cmd[cmd.index("--out") + 1].split("data/")[1]: cmd[cmd.index("--llm-url") + 1] for cmd in started}
    assert "train/music" not in urls and len(urls) == 6  # 2 training sets, 3 test sets, everyday
    # each job's client sends every request to the less busy server (datagen.llm.ChatClient)
    assert set(urls.values()) == {"http://127.0.0.1:9000/v1,http://127.0.0.1:9001/v1"}
    # a server already up on 9000 (the user's) is used and left up; a failed job still stops ours
    monkeypatch.setattr(study_data, "llm_server_up", lambda env: env["PORT"] == "9000")
    monkeypatch.setattr(study_data, "start_logged", lambda cmd, log, env=None: type("Failed", (), {"wait": lambda self: 1})())
    servers.clear()
    with pytest.raises(SystemExit, match="generation failed"):
        study_data.stage_generate(args, tmp_path)
    assert servers == [("start", "9000", "1"), ("start", "9001", "1"), ("stop", "9001", "1")]
    monkeypatch.setattr(study_data, "start_logged", lambda cmd, log, env=None: started.append(cmd) or
                        type("Done", (), {"wait": lambda self: 0})())
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


def test_two_processes_share_the_train_stage(tmp_path, monkeypatch):
    """A run another live process trains is skipped; one a dead process left is trained."""
    import types

    import replay_data

    run = tmp_path / "run"
    for d in study_data.DOMAINS:
        write_manifest(run / "data" / "train" / d / "manifest.jsonl", ["a text"] * 2, "v")
    (run / "models").mkdir(parents=True)
    (run / "models" / "lora-music-replay-lr0.0003.lock").write_text(str(os.getpid()))  # "another process"
    (run / "models" / "lora-sports-replay-lr0.0003.lock").write_text("999999999")  # no such process
    trained = []

    def fake_train(cmd, log_path):
        trained.append(Path(cmd[cmd.index("--out") + 1]).name)
        assert (run / "models" / (trained[-1][: -len(".st")] + ".lock")).read_text() == str(os.getpid())

    monkeypatch.setattr(reproduce, "run_logged", fake_train)
    monkeypatch.setattr(replay_data, "speak", lambda run, count, texts: run / "data" / "replay" / "manifest.jsonl")
    monkeypatch.setattr(reproduce.lora, "read_header", lambda path: {"__metadata__": {
        "val_loss": "0.25", "steps": "56", "total_steps": "86"}})
    args = types.SimpleNamespace(lora_lrs=[], ft_lrs=[1e-5], statements_lrs=[], replay_lrs=[3e-4], replay_weights=[1.0],
                                 methods={"lora"}, train_per_domain=2, model="base", epochs=1.0, device="cpu")
    reproduce.stage_train(args, run)
    assert trained == ["lora-weather-replay-lr0.0003.st", "lora-sports-replay-lr0.0003.st"]
    assert json.loads((run / "models" / "lora-sports-replay-lr0.0003.done.json").read_text())["best_step"] == 56
    assert not (run / "models" / "lora-music-replay-lr0.0003.done.json").exists()
    assert sorted(p.name for p in (run / "models").glob("*.lock")) == ["lora-music-replay-lr0.0003.lock"]
