"""lora.py against the naive math, on tiny random Whispers (fp32) and on the real tiny.en.

Tolerances: wrapping or converting an adapter only reorders fp32 sums, so logits agree to
1e-4 absolute on logits of magnitude ~10 (tiny models) and ~30 (tiny.en).
"""
import json
import math
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lora
from training.methods import count_parameters
from whisper_min.model import ModelDimensions, Whisper

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: tests/conftest.py

TINY = ModelDimensions(n_mels=80, n_audio_ctx=16, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                       n_vocab=100, n_text_ctx=24, n_text_state=32, n_text_head=2, n_text_layer=2)



def tiny_model(seed=0, dims=TINY) -> Whisper:
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for p in model.parameters():  # Whisper leaves some parameters uninitialised (empty)
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def inputs(dims=TINY, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, dims.n_vocab, (2, 10), generator=g)
    features = torch.randn(2, dims.n_audio_ctx, dims.n_audio_state, generator=g)
    return tokens, features


def perturb_lora(model, seed=3, size=0.05):
    """Stand-in for training: move every A and B somewhere else."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_A += size * torch.randn(layer.lora_A.shape, generator=g)
            layer.lora_B += size * torch.randn(layer.lora_B.shape, generator=g)


def test_scale_is_alpha_over_sqrt_r_and_forward_is_the_formula():
    base = torch.nn.Linear(8, 6)
    assert lora.LoRALinear(base, r=32, alpha=64).scale == pytest.approx(64 / math.sqrt(32))  # 11.31
    assert lora.LoRALinear(base, r=32, alpha=64, rslora=False).scale == 2.0
    layer = lora.LoRALinear(base, r=4, alpha=8)
    torch.nn.init.normal_(layer.lora_A)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 5, 8)
    expected = x @ base.weight.T + base.bias + (8 / 2) * x @ (layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_default_targets_are_query_and_value_of_self_and_cross_attention_only():
    model = tiny_model()
    names = lora.add_lora(model, r=4, alpha=8)
    assert names == [f"decoder.blocks.{i}.{t}" for i in range(2)
                     for t in ("attn.query", "attn.value", "cross_attn.query", "cross_attn.value")]
    assert not any(isinstance(m, lora.LoRALinear) for m in model.encoder.modules())
    with pytest.raises(ValueError, match="attn.nope"):
        lora.add_lora(tiny_model(), targets=["attn.nope"])


@pytest.mark.parametrize("init", [lora.init_pissa, lora.init_standard])
def test_init_keeps_the_base_models_outputs(init):
    model = tiny_model()
    tokens, features = inputs()
    before = model.logits(tokens, features)
    lora.add_lora(model, r=4, alpha=8, init=init)
    torch.testing.assert_close(model.logits(tokens, features), before, atol=1e-4, rtol=0)


def test_pissa_takes_the_principal_singular_triplets():
    W0 = torch.randn(12, 10)
    layer = lora.LoRALinear(torch.nn.Linear(10, 12), r=3, alpha=6)
    with torch.no_grad():
        layer.base.weight.copy_(W0)
    lora.init_pissa(layer)
    U, S, Vh = torch.linalg.svd(W0)
    principal = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    torch.testing.assert_close(layer.weight_update(), principal, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.base.weight, W0 - principal, atol=1e-5, rtol=0)
    # the residual keeps exactly the remaining singular values
    torch.testing.assert_close(torch.linalg.svdvals(layer.base.weight)[:7], S[3:], atol=1e-5, rtol=0)


def test_merge_and_unmerge_are_safe_twice():
    model = tiny_model()
    lora.add_lora(model, r=4, alpha=8)
    perturb_lora(model)
    tokens, features = inputs()
    weights = {n: l.base.weight.clone() for n, l in lora.lora_layers(model).items()}
    expected = model.logits(tokens, features)
    for layer in lora.lora_layers(model).values():
        layer.merge()
    merged = {n: l.base.weight.clone() for n, l in lora.lora_layers(model).items()}
    for layer in lora.lora_layers(model).values():
        layer.merge()  # second merge: nothing changes
    for n, l in lora.lora_layers(model).items():
        assert torch.equal(l.base.weight, merged[n])
        assert not torch.allclose(merged[n], weights[n])
    torch.testing.assert_close(model.logits(tokens, features), expected, atol=1e-4, rtol=0)
    for layer in lora.lora_layers(model).values():
        layer.unmerge()
        layer.unmerge()  # safe twice
    for n, l in lora.lora_layers(model).items():
        torch.testing.assert_close(l.base.weight, weights[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.logits(tokens, features), expected, atol=1e-4, rtol=0)


def test_only_adapters_train_and_the_base_stays_bit_identical():
    model = tiny_model()
    lora.add_lora(model, r=4, alpha=8)
    lora.mark_only_lora_trainable(model)
    frozen = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    adapters = {n: p.clone() for n, p in model.named_parameters() if "lora_" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens, features = inputs()
    model.logits(tokens, features).logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in n), n
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        else:
            assert not torch.equal(p, adapters[n]), n


def test_parameter_counts_are_exact():
    model = tiny_model()
    base = sum(p.numel() for p in model.parameters())
    lora.add_lora(model, r=4, alpha=8)
    lora.mark_only_lora_trainable(model)
    expected = 2 * 4 * (4 * (32 + 32))  # layers * targets * r * (in + out)
    assert count_parameters(model) == {"lora": expected, "base": base, "trainable": expected}


def test_paper_configuration_on_whisper_base_adds_about_one_percent():
    base_dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6,
                                n_vocab=51865, n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6)
    with torch.device("meta"):
        model = Whisper(base_dims)
        lora.add_lora(model, init=lambda layer, generator=None: None)  # r=32, alpha=64, q+v self+cross
    counts = count_parameters(model)
    assert counts["base"] == 71_825_920
    assert counts["lora"] == 6 * 4 * 32 * (512 + 512) == 786_432
    assert 100 * counts["lora"] / counts["base"] == pytest.approx(1.095, abs=0.001)  # the paper says "around 1.2%"


def trained_pissa(seed, r=4):
    model = tiny_model()
    lora.add_lora(model, r=r, alpha=8)
    perturb_lora(model, seed=seed)
    return model


def test_pissa_delta_reproduces_the_trained_model_on_the_original_base(tmp_path):
    tokens, features = inputs()
    music, sports = trained_pissa(seed=3), trained_pissa(seed=4)
    lora.save_adapter(music, tmp_path / "music.st", domain="music", base_model="tiny")
    lora.save_adapter(sports, tmp_path / "sports.st", domain="sports", base_model="tiny")
    base = tiny_model()
    for trained, path in ((music, "music.st"), (sports, "sports.st")):
        adapter = lora.load_adapter(tmp_path / path, base)
        A, B = adapter.deltas["decoder.blocks.0.attn.query"]
        assert A.shape == (8, 32) and B.shape == (32, 8) and A.dtype == torch.float32  # rank 2r
        shared = tiny_model()
        lora.apply_adapter(shared, adapter)
        torch.testing.assert_close(shared.logits(tokens, features), trained.logits(tokens, features), atol=1e-4, rtol=0)
    # and not by accident: the two adapters give different models
    assert not torch.allclose(music.logits(tokens, features), sports.logits(tokens, features), atol=1e-2)


def test_standard_adapter_is_rank_r_with_the_scale_folded_in(tmp_path):
    model = tiny_model()
    lora.add_lora(model, r=4, alpha=8, init=lora.init_standard)
    perturb_lora(model)
    lora.save_adapter(model, tmp_path / "a.st", domain="d", base_model="tiny")
    adapter = lora.load_adapter(tmp_path / "a.st", tiny_model())
    layer = lora.lora_layers(model)["decoder.blocks.1.cross_attn.value"]
    A, B = adapter.deltas["decoder.blocks.1.cross_attn.value"]
    assert A.shape == (4, 32)
    torch.testing.assert_close(B @ A, layer.weight_update(), atol=1e-6, rtol=0)


def test_save_load_round_trip_keeps_tensors_and_metadata(tmp_path):
    model = trained_pissa(seed=5)
    lora.save_adapter(model, tmp_path / "m.st", domain="music", base_model="tiny", data_sha256="abc")
    adapter = lora.load_adapter(tmp_path / "m.st", tiny_model())
    assert adapter.name == "music"
    meta = adapter.metadata
    assert (meta["format"], meta["r"], meta["alpha"], meta["rslora"], meta["init"], meta["data_sha256"]) == \
        ("das-lora", "4", "8", "True", "pissa", "abc")
    assert json.loads(meta["targets"]) == list(lora.DEFAULT_TARGETS)
    assert meta["base_fingerprint"] == lora.model_fingerprint(tiny_model())
    layers = lora.lora_layers(model)
    assert set(adapter.deltas) == set(layers)
    for name, (A, B) in adapter.deltas.items():
        A2, B2 = layers[name].delta()
        assert torch.equal(A, A2) and torch.equal(B, B2)


def test_fingerprint_ignores_lora_and_dtype_but_not_weights():
    model = tiny_model()
    fp = lora.model_fingerprint(model)
    assert lora.model_fingerprint(tiny_model().half()) == lora.model_fingerprint(tiny_model().half().float())
    lora.add_lora(model, r=4, alpha=8)  # PiSSA rewrote the targeted weights: still the same base
    assert lora.model_fingerprint(model) == fp
    assert lora.model_fingerprint(tiny_model(seed=1)) != fp


@pytest.fixture
def adapter_file(tmp_path):
    path = tmp_path / "music.st"
    lora.save_adapter(trained_pissa(seed=3), path, domain="music", base_model="tiny")
    return path


def test_other_weights_are_refused(adapter_file):
    other = tiny_model()
    with torch.no_grad():
        other.decoder.blocks[0].attn_ln.weight += 0.01  # the same size, other weights
    with pytest.raises(lora.AdapterError, match=r"music\.st: trained on a different base model"):
        lora.load_adapter(adapter_file, other)


def test_other_size_is_refused(adapter_file):
    bigger = ModelDimensions(**{**vars(TINY), "n_text_state": 48, "n_audio_state": 48})
    with pytest.raises(lora.AdapterError, match="different base model"):
        lora.load_adapter(adapter_file, tiny_model(dims=bigger))


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.001])
def test_truncated_file_is_refused(adapter_file, keep):
    data = adapter_file.read_bytes()
    adapter_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(lora.AdapterError, match=r"music\.st: truncated"):
        lora.load_adapter(adapter_file, tiny_model())


def test_missing_tensors_are_named(adapter_file):
    with safe_open(adapter_file, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "decoder.blocks.1.attn.value.B"}
    save_file(tensors, adapter_file, metadata=meta)
    with pytest.raises(lora.AdapterError, match=r"missing tensors: decoder\.blocks\.1\.attn\.value\.B"):
        lora.load_adapter(adapter_file, tiny_model())


def test_a_safetensors_file_that_is_no_adapter_is_refused(tmp_path):
    save_file({"x": torch.zeros(2)}, tmp_path / "model.st")
    with pytest.raises(lora.AdapterError, match="not a das LoRA adapter"):
        lora.load_adapter(tmp_path / "model.st", tiny_model())
    (tmp_path / "junk.st").write_bytes(struct.pack("<Q", 5) + b"{{{{{")
    with pytest.raises(lora.AdapterError, match="not a safetensors file"):
        lora.load_adapter(tmp_path / "junk.st", tiny_model())


def test_peft_export_and_import_round_trip(adapter_file, tmp_path):
    base = tiny_model()
    adapter = lora.load_adapter(adapter_file, base)
    out = lora.export_peft(adapter, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 8
    assert "model.decoder.layers.0.self_attn.q_proj" in config["target_modules"]
    assert not any(t.startswith("model.encoder.") for t in config["target_modules"])
    with safe_open(out / "adapter_model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert "base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.decoder.layers.1.encoder_attn.v_proj.lora_B.weight" in keys
    back = lora.import_peft(out, base)
    assert set(back.deltas) == set(adapter.deltas)
    for name, (A, B) in adapter.deltas.items():
        assert torch.equal(back.deltas[name][0], A) and torch.equal(back.deltas[name][1], B)


def test_peft_import_applies_peft_scaling(tmp_path, adapter_file):
    adapter = lora.load_adapter(adapter_file, tiny_model())
    out = lora.export_peft(adapter, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(lora_alpha=16, use_rslora=True)  # peft scale 16 / sqrt(8)
    (out / "adapter_config.json").write_text(json.dumps(config))
    back = lora.import_peft(out, tiny_model())
    A, B = adapter.deltas["decoder.blocks.0.attn.query"]
    torch.testing.assert_close(back.deltas["decoder.blocks.0.attn.query"][0], A * 16 / math.sqrt(8))


def test_pissa_init_keeps_the_real_tiny_en_logits():
    from whisper_min import get_tokenizer, load_model
    model, tokenizer = load_model("tiny.en"), get_tokenizer("tiny.en")
    tokens = torch.tensor([list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
                           + tokenizer.encode(" he was not an ill disposed young man")])
    features = torch.randn(1, 1500, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.logits(tokens, features)
        lora.add_lora(model)  # the paper's r=32, alpha=64, rsLoRA, PiSSA
        after = model.logits(tokens, features)
    # measured 4.8e-5 on logits up to 33: fp32 rounding of W_res + s B A
    torch.testing.assert_close(after, before, atol=2e-4, rtol=0)
