"""bench/tune.py: the tune stage's candidates and its rule, the systems reproduce.py's eval
stage builds from its choice, and report.md's account of it, on made-up run folders."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402
import reproduce  # noqa: E402
import study_data  # noqa: E402
import tune  # noqa: E402

ORIGINAL = {"music": 10.0, "weather": 10.0, "sports": 10.0, "long-domains": 10.0, "everyday": 5.0, "fortunes": 20.0,
            "long-ood": 8.0}


def cand(strategy, tau, in_domain, everyday=5.0, long_ood=8.0):
    return {"strategy": strategy, "tau": tau, "wer": {**ORIGINAL, **{s: in_domain for s in tune.IN_DOMAIN},
                                                     "everyday": everyday, "long-ood": long_ood}}


def test_the_rule_keeps_out_of_domain_within_two_percent_then_takes_the_best_in_domain():
    rows = [cand("route", 0.0, 6.0, everyday=6.0),      # best in domain, but +20% out of domain: out
            cand("route", 0.01, 6.5, long_ood=8.3),     # +3.75% on the long clips out of domain: out
            cand("das", 0.05, 8.0, everyday=5.1),       # +2.0%: exactly at the limit, in
            cand("max-only", 0.05, 7.0, everyday=5.05),
            cand("max-only", 0.1, 7.0)]                 # ties with the one above: the larger τ wins
    choice = tune.choose(rows, ORIGINAL)
    assert (choice["strategy"], choice["tau"]) == ("max-only", 0.1) and "long-domains" in choice["why"]
    assert tune.choose(rows + [cand("route", 0.1, 7.0)], ORIGINAL)["strategy"] == "route"  # a tie: das.py's default
    # Nothing within the limit: the original model's transcripts.
    assert (tune.choose(rows[:2], ORIGINAL)["strategy"], tune.choose(rows[:2], ORIGINAL)["tau"]) == ("max-only", 1.0)


def test_candidates_route_and_both_token_level_rules_at_every_tau():
    cands = tune.candidates()
    assert len(cands) == 3 * len(tune.TAUS) - 1  # at τ = 0, das and max-only both take the surest stream
    assert {c["strategy"] for c in cands} == set(tune.STRATEGIES) and len({tune.label(c) for c in cands}) == len(cands)
    assert tune.label(cands[1]) == "route tau=0.01"


def test_the_default_is_das_pys():
    import das

    assert tune.DEFAULT == {"strategy": das.DEFAULT_STRATEGY, "tau": das.DEFAULT_TAU}
    assert das.DEFAULT_END == "base"  # the end rule scorer.Scorer gives the token-level rules


def lora_run(tmp_path: Path, *names: str) -> Path:
    """A run folder whose models/ holds each named model, finished by the train stage."""
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    for name in names:
        (run / "models" / f"{name}.done.json").write_text(json.dumps({"name": name, "lr": 3e-4, "val_loss": 0.1}))
    return run


def test_systems_follow_the_tuned_choice(tmp_path):
    run = lora_run(tmp_path, *(f"lora-{d}" for d in study_data.DOMAINS), "lora-multi", "ft-enc-dec-music")
    systems = {name: (config, files) for name, config, files in reproduce.systems(run)}
    assert [f.name for f in systems["DAS"][1]] == [f"lora-{d}.st" for d in study_data.DOMAINS]
    assert (systems["DAS"][0]["strategy"], systems["DAS"][0]["tau"]) == ("route", 0.01)  # before the tune stage
    assert [name for name, _, _ in reproduce.systems(run)][:2] == ["original", "DAS"]
    (run / "tune.json").write_text(json.dumps({"chosen": {"strategy": "max-only", "tau": 0.05, "why": "."}}))
    systems = {name: config for name, config, _ in reproduce.systems(run)}
    assert (systems["DAS"]["strategy"], systems["DAS"]["tau"]) == ("max-only", 0.05)
    assert "DAS tau=0.05" not in systems and systems["DAS tau=0.01"] == {**systems["DAS"], "tau": 0.01}
    assert systems["lora-music"] == {"kind": "lora", "files": ["lora-music.st"]}  # LoRA-ft: DAS's adapter alone
    assert systems["ft-enc-dec-music"]["kind"] == "finetune" and "ft-multi" not in systems  # not trained


@pytest.mark.parametrize("route_ood, want", [(5.0, "route"), (5.3, "max-only")])
def test_the_stage_on_made_up_scores(tmp_path, monkeypatch, route_ood, want):
    """Every score faked by label: routing is best in domain at τ 0.01, max-only at τ 0.05 the
    best token-level rule; with everyday 6% worse than the original's (5.3 against 5.0) the
    rule refuses routing."""
    run = lora_run(tmp_path, *(f"lora-{d}" for d in study_data.DOMAINS))
    sets = {s: [{"audio": "a.wav", "text": "a"}] for s in ORIGINAL}
    monkeypatch.setattr(tune, "validation_sets", lambda args, run: sets)

    def fake_wer(name: str) -> dict:
        ind = {"route tau=0.01": 7.0, "max-only tau=0.05": 8.0}.get(name, 10.0)
        ood = route_ood if name.startswith("route") else 5.0
        return {**{s: ind for s in tune.IN_DOMAIN}, "everyday": ood, "fortunes": 20.0, "long-ood": 8.0}

    def fake_scores(args, run_, folder, todo, sets_):
        assert folder == "tune" and {s for *_, s in todo} == set(sets)
        assert all(files == tune.das_files(run) for name, _, files, _ in todo if name != "original")
        return {(name, s): {"wer": fake_wer(name)[s]} for name, _, _, s in todo}

    monkeypatch.setattr(tune, "score_all", fake_scores)
    tune.stage_tune(None, run)
    t = json.loads((run / "tune.json").read_text())
    assert (t["chosen"]["strategy"], t["chosen"]["tau"]) == ((want, 0.01) if want == "route" else (want, 0.05))
    assert len(t["candidates"]) == len(tune.candidates()) and t["sizes"]["everyday"] == 1
    assert {name: config for name, config, _ in reproduce.systems(run)}["DAS"]["strategy"] == want
    section = report.tune_section(run)
    assert "| route | 0.01 | 7.00 (-30.0%) |" in section
    assert f"Chosen: {want}, τ = {t['chosen']['tau']:g}: lowest mean in-domain validation WER" in section


def test_the_stage_waits_for_adapters_and_for_scores_another_process_holds(tmp_path, monkeypatch):
    run = lora_run(tmp_path, "lora-music")
    monkeypatch.setattr(tune, "validation_sets", lambda args, run: {"music": []})
    tune.stage_tune(None, run)  # two adapters missing
    assert not (run / "tune.json").exists()
    run = lora_run(tmp_path / "b", *(f"lora-{d}" for d in study_data.DOMAINS))
    monkeypatch.setattr(tune, "score_all", lambda *args: {})  # every score locked by another process
    tune.stage_tune(None, run)
    assert not (run / "tune.json").exists() and tune.chosen(run) is None
