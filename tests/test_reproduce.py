"""bench/reproduce.py's data plumbing (bench/study_data.py), its tune stage's rule (bench/tune.py) and
bench/report.py's arithmetic, on made-up run folders."""
import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402
import reproduce  # noqa: E402
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


def test_tune_rule_keeps_out_of_domain_within_two_percent():
    import tune

    original = {"music": 10.0, "weather": 10.0, "sports": 10.0, "everyday": 5.0, "fortunes": 20.0}

    def cand(lr, strategy, tau, domain_wer, everyday, fortunes=20.0):
        return {"lr": lr, "strategy": strategy, "tau": tau, "wer": {
            "music": domain_wer, "weather": domain_wer, "sports": domain_wer, "everyday": everyday,
            "fortunes": fortunes}}

    rows = [cand(3e-4, "das", 0.025, 6.0, 6.0),   # best in domain, but +20% out of domain: out
            cand(3e-4, "das", 0.05, 6.5, 4.0, 20.6),  # better on one out-of-domain set, +3% on the other: out
            cand(1e-4, "das", 0.05, 8.0, 5.1),    # +2.0%: exactly at the limit, in
            cand(1e-4, "max-only", 0.05, 7.0, 5.05),
            cand(1e-4, "max-only", 0.1, 7.0, 5.0)]  # ties with the one above: the larger τ wins
    choice = tune.choose(rows, original)
    assert (choice["lr"], choice["strategy"], choice["tau"]) == (1e-4, "max-only", 0.1)
    # Nothing within the limit: τ = 1, the original model's transcript.
    assert tune.choose(rows[:2], original)["tau"] == 1.0
    # One candidate at τ = 0 per rate (both readings agree there), both readings above it.
    args = type("Args", (), {"lora_lrs": [1e-4, 3e-4]})()
    cands = tune.candidates(args)
    assert len(cands) == 2 * (1 + 2 * (len(tune.TUNE_TAUS) - 1))
    assert sum(c["tau"] == 0 for c in cands) == 2


def test_tune_step_two_weighs_the_long_form_sets():
    import tune

    original = {"music": 10.0, "weather": 10.0, "sports": 10.0, "everyday": 5.0, "fortunes": 20.0,
                "long-domains": 10.0, "long-ood": 8.0}

    def cand(tau, end, long_domains, long_ood):
        return {"lr": 1e-4, "strategy": "max-only", "tau": tau, "end": end, "wer": {
            **{d: 7.0 for d in study_data.DOMAINS}, "everyday": 5.0, "fortunes": 20.0,
            "long-domains": long_domains, "long-ood": long_ood}}

    rows = [cand(0.025, "any", 6.0, 9.0),   # truncates long clips out of domain (+12.5%): out
            cand(0.025, "base", 7.0, 8.1),  # in; the long in-domain clips count in the mean
            cand(0.1, "base", 6.5, 8.0)]
    choice = tune.choose(rows, original)
    assert (choice["tau"], choice["end"]) == (0.1, "base") and "long-domains" in choice["why"]
    first = {"lr": 1e-4, "strategy": "max-only", "tau": 0.025}
    cands = tune.end_candidates(first)
    assert len(cands) == 2 * len(tune.TUNE_TAUS) and {c["end"] for c in cands} == {"any", "base"}
    assert tune.label(cands[0]) == "lr0.0001 das tau=0"  # the same scores as step 1's candidate
    assert tune.label(cands[-1]) == "lr0.0001 max-only tau=0.3 end=base"


def test_tune_step_three_adds_word_switching_to_step_two():
    import tune

    second = {"lr": 1e-4, "strategy": "max-only", "tau": 0.025, "end": "base"}
    cands = tune.switch_candidates(second)
    assert len(cands) == 2 * len(tune.TUNE_TAUS) and all(c["end"] == "base" for c in cands)
    token = [tune.label(c) for c in cands if c["switch"] == "token"]
    assert token == [tune.label(c) for c in tune.end_candidates(second) if c["end"] == "base"]  # step 2's scores
    assert tune.label(cands[-1]) == "lr0.0001 max-only tau=0.3 end=base switch=word"
    original = {"music": 10.0, "everyday": 5.0}

    def cand(switch, music, everyday):
        return {**second, "switch": switch, "wer": {"music": music, "everyday": everyday}}

    assert tune.choose([cand("token", 8.0, 5.0), cand("word", 8.0, 5.0)], original)["switch"] == "token"  # a tie
    assert tune.choose([cand("token", 8.0, 5.0), cand("word", 7.0, 5.0)], original)["switch"] == "word"
    assert tune.choose([cand("token", 8.0, 5.0), cand("word", 7.0, 5.2)], original)["switch"] == "token"  # +4%


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


def test_systems_follow_the_tuned_choice(tmp_path):
    import tune

    run = tmp_path / "run"
    for d in study_data.DOMAINS:
        for lr, loss in ((1e-4, 0.3), (3e-4, 0.2)):
            name = f"lora-{d}-lr{lr:g}"
            (run / "models").mkdir(parents=True, exist_ok=True)
            (run / "models" / f"{name}.done.json").write_text(json.dumps({"name": name, "lr": lr, "val_loss": loss}))
    das = {s[0]: s for s in reproduce.systems(run)}["DAS"]
    assert [f.name for f in das[2]] == [f"lora-{d}-lr0.0003.st" for d in study_data.DOMAINS]  # by validation loss
    assert das[3:] == (0.025, "das", "any", "token")
    (run / "tune.json").write_text(json.dumps({"chosen": {"lr": 1e-4, "strategy": "max-only", "tau": 0.05}}))
    systems = {s[0]: s for s in reproduce.systems(run)}
    assert [f.name for f in systems["DAS"][2]] == [f"lora-{d}-lr0.0001.st" for d in study_data.DOMAINS]
    assert systems["DAS"][3:] == (0.05, "max-only", "any", "token")  # a tune.json from before steps 2 and 3
    assert "DAS tau=0.05" not in systems and systems["DAS tau=0.025"][3:] == (0.025, "max-only", "any", "token")
    (run / "tune.json").write_text(json.dumps({"chosen": {"lr": 1e-4, "strategy": "max-only", "tau": 0.1,
                                                          "end": "base", "switch": "word"}}))
    systems = {s[0]: s for s in reproduce.systems(run)}
    assert systems["DAS"][3:] == (0.1, "max-only", "base", "word")
    assert systems["DAS tau=0"][3:] == (0.0, "max-only", "base", "word")
    assert [f.name for f in systems["lora-music"][2]] == ["lora-music-lr0.0003.st"]  # single models: by loss
    assert tune.chosen(run)["tau"] == 0.1


def lora_run(tmp_path: Path, *suffixes: str) -> Path:
    """A run folder whose models/ holds every domain's finished LoRA run lora-<domain><suffix>."""
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    for d in study_data.DOMAINS:
        for name in (f"lora-{d}{s}" for s in suffixes):
            (run / "models" / f"{name}.done.json").write_text(json.dumps({"name": name, "lr": 1e-4, "val_loss": 0.1}))
    return run


def test_tune_step_four_weighs_adapters_trained_on_statements(tmp_path):
    import tune

    third = {"lr": 1e-4, "strategy": "max-only", "tau": 0.025, "end": "base", "switch": "token"}
    cands = tune.data_candidates(third, [("statements", 1e-4)])
    assert len(cands) == 2 * len(tune.TUNE_TAUS) and all(c["switch"] == "token" for c in cands)
    requests = [tune.label(c) for c in cands if c["data"] == "requests"]
    assert requests == [tune.label(c) for c in tune.switch_candidates(third) if c["switch"] == "token"]  # step 3's
    assert tune.label(cands[-1]) == "lr0.0001 stmt max-only tau=0.3 end=base"
    original = {"music": 10.0, "everyday": 5.0}
    rows = [{**c, "wer": {"music": 8.0, "everyday": 5.0}} for c in cands if c["tau"] == 0.025]
    assert tune.choose(rows, original)["data"] == "requests"  # a tie: the adapters of steps 1-3
    rows[1]["wer"]["music"] = 7.5
    assert tune.choose(rows, original)["data"] == "statements"

    run = lora_run(tmp_path, "-lr0.0001", "-stmt-lr0.0001")
    assert [f.name for f in tune.das_files(run, 1e-4)] == [f"lora-{d}-lr0.0001.st" for d in study_data.DOMAINS]
    (run / "tune.json").write_text(json.dumps({"chosen": {**third, "data": "statements"}}))
    das = {s[0]: s for s in reproduce.systems(run)}["DAS"]
    assert [f.name for f in das[2]] == [f"lora-{d}-stmt-lr0.0001.st" for d in study_data.DOMAINS]
    assert [f.name for f in reproduce.systems(run)[2][2]] == ["lora-music-lr0.0001.st"]  # single models: requests


def test_tune_step_four_weighs_adapters_trained_with_replay_at_each_rate(tmp_path):
    import tune

    third = {"lr": 1e-4, "strategy": "max-only", "tau": 0.025, "end": "base", "switch": "token"}
    cands = tune.data_candidates(third, [("replay", 1e-4), ("replay", 3e-4)])
    assert len(cands) == 3 * len(tune.TUNE_TAUS)
    assert [(c["data"], c["lr"]) for c in cands[:: len(tune.TUNE_TAUS)]] == [("requests", 1e-4), ("replay", 1e-4),
                                                                           ("replay", 3e-4)]
    assert tune.label(cands[-1]) == "lr0.0003 replay max-only tau=0.3 end=base"
    assert len({tune.label(c) for c in cands}) == len(cands)  # every candidate is scored under a name of its own
    original = {"music": 10.0, "everyday": 5.0}
    rows = [{**c, "wer": {"music": 8.0, "everyday": 5.0}} for c in cands if c["tau"] == 0.025]
    rows[2]["wer"]["music"] = 7.0
    chosen = tune.choose(rows, original)
    assert (chosen["data"], chosen["lr"]) == ("replay", 3e-4)
    rows[2]["wer"]["everyday"] = 5.2  # 4% worse out of domain: the rule turns it down
    assert tune.choose(rows, original)["data"] == "requests"

    run = lora_run(tmp_path, "-lr0.0001", "-replay-lr0.0003")
    assert tune.das_files(run, 1e-4, "replay") is None  # not trained at that rate
    (run / "tune.json").write_text(json.dumps({"chosen": {**third, "lr": 3e-4, "data": "replay"}}))
    das = {s[0]: s for s in reproduce.systems(run)}["DAS"]
    assert [f.name for f in das[2]] == [f"lora-{d}-replay-lr0.0003.st" for d in study_data.DOMAINS]


def test_replay_weights_name_their_adapters_and_step_four_weighs_each(tmp_path):
    import types

    import tune

    args = types.SimpleNamespace(lora_lrs=[1e-4], ft_lrs=[1e-5], statements_lrs=[], replay_lrs=[3e-4],
                                 replay_weights=[1.0, 3.0])
    replay = [(r["name"], r["replay"]) for r in reproduce.train_runs(args) if r.get("replay")]
    assert replay[:2] == [("lora-music-replay-lr0.0003", 1.0), ("lora-weather-replay-lr0.0003", 1.0)]  # as before
    assert replay[3:] == [(f"lora-{d}-replay-w3-lr0.0003", 3.0) for d in study_data.DOMAINS]

    third = {"lr": 1e-4, "strategy": "max-only", "tau": 0.025, "end": "base", "switch": "token"}
    cands = tune.data_candidates(third, [("replay", 3e-4), (reproduce.replay_data_kind(3.0), 3e-4)])
    assert tune.label(cands[-1]) == "lr0.0003 replay-w3 max-only tau=0.3 end=base"
    assert len({tune.label(c) for c in cands}) == len(cands) == 3 * len(tune.TUNE_TAUS)
    run = lora_run(tmp_path, "-lr0.0001", "-replay-lr0.0003", "-replay-w3-lr0.0003")
    (run / "tune.json").write_text(json.dumps({"chosen": {**third, "lr": 3e-4, "data": "replay-w3"}}))
    das = {s[0]: s for s in reproduce.systems(run)}["DAS"]
    assert [f.name for f in das[2]] == [f"lora-{d}-replay-w3-lr0.0003.st" for d in study_data.DOMAINS]
    assert report.trained_on("replay-w3") == "requests with replay at weight 3"
    assert report.trained_on("replay") == "requests with replay"
    results = {("DAS", "music"): {"config": {"tau": 0.01, "strategy": "max-only", "files": [str(f) for f in das[2]]}}}
    assert report.das_label(results) == "DAS (τ = 0.01, max-only, adapters with replay at weight 3)"


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
    config = reproduce.Scorer.config("adml", [Path("m/lora-music-lr0.0003.st")], 0.025, "das")
    assert config["files"] == ["lora-music-lr0.0003.st"]
    assert not reproduce.Scorer.is_done(out, config)
    study_data.write_rows(out, [{"system": "DAS", "wer": 5.0, "config": config}])
    assert reproduce.Scorer.is_done(out, config)
    assert not reproduce.Scorer.is_done(out, {**config, "strategy": "max-only"})
    # `end` and `switch` are recorded only when not the default, so scores made before them stay valid.
    make = reproduce.Scorer.config
    assert make("adml", [], 0.1, "das", "any", "token") == make("adml", [], 0.1, "das")
    for rule in (("base", "token"), ("any", "word")):
        assert not reproduce.Scorer.is_done(out, make("adml", [Path("lora-music-lr0.0003.st")], 0.025, "das", *rule))
    assert not reproduce.Scorer.is_done(out, {**config, "files": ["lora-music-lr0.0001.st"]})


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


def test_generate_spreads_its_jobs_over_two_one_thread_llm_servers(tmp_path, monkeypatch):
    loads = [1500, 200, 1500, 200, 1500, 200, 150]
    choice = study_data.balance(loads, 2)
    totals = [sum(n for n, c in zip(loads, choice) if c == s) for s in (0, 1)]
    assert sorted(totals) == [2250, 3000]  # the best split of three 1500s, 450 of small jobs to one side
    assert study_data.balance([4, 3, 3], 2) in ([0, 1, 1], [1, 0, 0])  # 4 | 3 + 3, never 4 + 3 | 3
    assert study_data.balance([5, 3], 1) == [0, 0] and study_data.balance([], 0) == []
    started, servers = [], []
    monkeypatch.setattr(study_data, "run_logged", lambda cmd, log, env=None: servers.append((cmd[-1], env["PORT"],
                                                                                          env["N_THREADS"])))
    monkeypatch.setattr(study_data, "start_logged", lambda cmd, log, env=None: started.append(cmd) or
                        type("Done", (), {"wait": lambda self: 0})())
    monkeypatch.setattr(study_data, "speak_fortunes", lambda args, run: None)
    monkeypatch.setenv("PORT", "9000")
    args = type("Args", (), {"llm_url": None, "train_per_domain": 10, "test_per_domain": 4, "ood_val_count": 3})()
    study_data.write_rows(tmp_path / "data" / "train" / "music" / "manifest.jsonl", [{"text": "x"}] * 10)  # done
    study_data.stage_generate(args, tmp_path)
    assert servers == [("start", "9000", "1"), ("start", "9001", "1")]
    urls = {cmd[cmd.index("--out") + 1].split("data/")[1]: cmd[cmd.index("--llm-url") + 1] for cmd in started}
    assert "train/music" not in urls and len(urls) == 6  # 2 training sets, 3 test sets, everyday
    assert urls["train/weather"] != urls["train/sports"]  # the two big jobs on different servers
    assert set(urls.values()) == {"http://127.0.0.1:9000/v1", "http://127.0.0.1:9001/v1"}
    started.clear()
    args.llm_url = "http://example:1/v1"  # a server of the user's: no local ones, every job goes there
    servers.clear()
    study_data.stage_generate(args, tmp_path)
    assert servers == [] and {cmd[cmd.index("--llm-url") + 1] for cmd in started} == {"http://example:1/v1"}
