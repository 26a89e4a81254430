"""Model and checkpoint loading on tiny random configs (fast, no real weights)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from whisper_min.load import (CheckpointError, convert_openai_checkpoint, hf_name, load_model, save_model_dir)
from whisper_min.model import ModelDimensions, Whisper

TINY = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                       n_vocab=51865, n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=2)


def random_model(dims=TINY, seed=0) -> Whisper:
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def test_kv_cache_decoding_equals_teacher_forcing():
    model = random_model()
    mel = torch.randn(2, 80, 3000)
    tokens = torch.randint(0, 50000, (2, 12))
    with torch.no_grad():
        af = model.embed_audio(mel)
        full = model.logits(tokens, af)  # (B, T, V), no cache
        kv = model.decoder.cross_kv(af)
        cache = model.decoder.new_cache(2)
        steps = [model.decoder(tokens[:, :4], kv, cache, 0)]  # prefill 4, then one at a time
        steps += [model.decoder(tokens[:, t : t + 1], kv, cache, t) for t in range(4, 12)]
        # a chunk of several tokens after a cache exercises the offset mask too
    incremental = torch.cat(steps, dim=1)
    assert torch.allclose(full, incremental, atol=1e-4)


def test_hf_names_are_the_huggingface_layout():
    names = {hf_name(k) for k in Whisper(TINY).state_dict()}
    for expected in ["model.encoder.conv1.weight", "model.encoder.embed_positions.weight",
                     "model.encoder.layers.0.self_attn.k_proj.weight", "model.encoder.layers.1.fc2.bias",
                     "model.encoder.layers.0.self_attn_layer_norm.weight", "model.encoder.layer_norm.bias",
                     "model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                     "model.decoder.layers.1.encoder_attn.v_proj.bias",
                     "model.decoder.layers.0.encoder_attn_layer_norm.weight",
                     "model.decoder.layers.0.final_layer_norm.weight", "model.decoder.layer_norm.weight"]:
        assert expected in names
    assert len(names) == len(Whisper(TINY).state_dict())  # the mapping is one-to-one


def test_model_dir_round_trip(tmp_path):
    model = random_model()
    save_model_dir(model.state_dict(), TINY, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not list(tmp_path.glob(".m.tmp*"))  # the temporary folder was renamed away


def test_bad_checkpoints_name_the_tensors(tmp_path):
    model = random_model()
    save_model_dir(model.state_dict(), TINY, tmp_path / "m")
    st = tmp_path / "m" / "model.safetensors"
    good = load_file(st)
    bad = dict(good)
    del bad["model.decoder.layers.1.fc1.weight"]
    bad["model.decoder.extra.weight"] = torch.zeros(3)
    bad["model.encoder.conv2.bias"] = torch.zeros(7)
    save_file(bad, st)
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "m")
    msg = str(e.value)
    assert "missing tensors: model.decoder.layers.1.fc1.weight" in msg
    assert "unexpected tensors: model.decoder.extra.weight" in msg
    assert "model.encoder.conv2.bias (7,) (expected (64,))" in msg
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "m")


def test_openai_checkpoint_conversion_uses_weights_only(tmp_path):
    import dataclasses

    model = random_model()
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": model.state_dict()}, tmp_path / "m.pt")
    state, dims = convert_openai_checkpoint(tmp_path / "m.pt")
    assert dims == TINY and all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    class Evil:  # a pickled object that would run code on load
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        convert_openai_checkpoint(tmp_path / "evil.pt")


def test_config_json_is_huggingface_style(tmp_path):
    save_model_dir(random_model().state_dict(), TINY, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "whisper" and config["d_model"] == 64 and config["num_mel_bins"] == 80


def test_large_v3_shapes_128_mels_and_100_languages():
    from whisper_min import get_tokenizer as named_tokenizer
    from whisper_min.embedded import resolve_model
    from whisper_min.tokenizer import get_tokenizer

    dims = ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51866, n_text_ctx=16, n_text_state=64, n_text_head=2, n_text_layer=1)
    model = random_model(dims)
    with torch.no_grad():
        logits = model(torch.randn(1, 128, 3000), torch.tensor([[50258, 50259, 50360]]))
    assert logits.shape == (1, 3, 51866)
    tok = get_tokenizer(resolve_model("base") / "tokenizer.json", 51866)
    assert tok.num_languages == 100 and tok.language_token("yue") == 50358 and tok.timestamp_begin == 50365
    assert named_tokenizer("base").num_languages == 99


def test_temperature_fallback_retries_hotter_only_when_needed():
    from whisper_min.decoding import DecodingOptions, DecodingResult
    from whisper_min.transcribe import TranscribeOptions, decode_with_fallback

    seen = []

    def fake_decode(model, mel, tokenizer, options):
        seen.append(options.temperature)
        lp = -2.0 if options.temperature < 0.4 else -0.1  # unlikely text until T = 0.4
        return [DecodingResult(tokens=[1], text="hello", avg_logprob=lp, no_speech_prob=0.0,
                               temperature=options.temperature)]

    result = decode_with_fallback(None, None, None, DecodingOptions(), TranscribeOptions(), fake_decode)
    assert seen == [0.0, 0.2, 0.4] and result.temperature == 0.4
