"""bench/switches.py's Recorder: it sees the same decode as adml.decode and records
the steps where an adapter's token, not the base's, was taken."""

import sys
from pathlib import Path

import torch

import adml  # the project's, imported before bench/ (which has an adml.py benchmark) joins the path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
import switches  # noqa: E402
from test_adml import OPTIONS, tiny, tiny_adapters, tiny_features, tokenizer  # noqa: E402,F401 (fixtures)


def test_recorder_sees_the_decode_and_each_switch(tiny, tokenizer):  # noqa: F811
    adapters, audio = tiny_adapters(tiny), tiny_features(U=2)
    want = adml.decode(tiny, None, tokenizer, OPTIONS, audio_features=audio, adapters=adapters, tau=0.0)
    stack = adml.stack_adapters(adapters, tiny)
    with torch.inference_mode(), adml.swapped(tiny, adml.multi_lora_modules(tiny, stack)):
        rec = switches.Recorder(adml.BatchedStreams(tiny, stack.k, audio), ["a", "b", "c"], tokenizer)
        got = adml.run(rec, audio, tokenizer, OPTIONS, tiny.dims.n_vocab, tiny.dims.n_text_ctx, 0.0, "das")
    assert [r.tokens for r in got] == [r.tokens for r in want]  # the wrapper changes nothing
    assert rec.records  # not vacuous: the adapters did put in tokens of their own
    for r in rec.records:
        assert got[r["row"]].tokens[r["step"]] == r["taken_id"] != r["base_id"]
        assert r["base_place"] >= 2 and r["base_p"] <= r["base_best_p"] and r["adapter"] in ("a", "b", "c")
    # every adapter token the streams counted that differs from the base's proposal is there, once
    assert len(rec.records) <= sum(sum(r.stream_tokens[1:]) for r in got)
    assert "switches to an adapter's token" in switches.summary(rec.records)


def test_recording_decoder_logs_each_window_and_drops_a_sampled_retry(tiny, tokenizer, tmp_path):  # noqa: F811
    import copy
    from dataclasses import replace

    import lora

    paths = []
    for i, domain in enumerate(["music", "sports"]):
        trained = copy.deepcopy(tiny)
        lora.add_lora(trained, r=4, generator=torch.Generator().manual_seed(i))
        for layer in lora.lora_layers(trained).values():  # off the init, as training would
            layer.lora_B.data.normal_(std=0.5, generator=torch.Generator().manual_seed(i))
        paths.append(str(lora.save_adapter(trained, tmp_path / f"{domain}.st", domain=domain, base_model="tiny")))
    decode_fn, log = switches.recording_decoder(tiny, paths, 0.0, "das", "any", "token")
    want = adml.make_decoder(tiny, paths, tau=0.0, strategy="das")(tiny, None, tokenizer, OPTIONS,
                                                                  audio_features=tiny_features(U=1))
    for seed in (1, 2):  # two windows
        decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=tiny_features(U=1, seed=seed))
    assert len(log["windows"]) == 2 and not log["sampled"] and any(log["windows"])
    assert decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=tiny_features(U=1))[0].tokens == want[0].tokens
    decode_fn(tiny, None, tokenizer, replace(OPTIONS, temperature=0.5), audio_features=tiny_features(U=1))
    assert len(log["windows"]) == 3 and log["windows"][-1] == [] and log["sampled"]  # the retry replaced it
