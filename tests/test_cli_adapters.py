"""`das.py transcribe --loras`: ADML from the command line, and its clear errors."""

import copy
import json

import pytest
import torch

import das
import lora
import whisper_min


def make_adapter(model, path, domain, seed, scale=0.02):
    m = copy.deepcopy(model)
    lora.add_lora(m, r=4, alpha=8, init=lora.init_standard)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(m).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)
    return lora.save_adapter(m, path, domain=domain, base_model="tiny.en")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("adapters")
    return [str(make_adapter(tiny_model, folder / f"{d}.st", d, i)) for i, d in enumerate(["music", "sports"])]


def run(capsys, *argv):
    code = das.main(["transcribe", "--model", "tiny.en", *argv])
    return (code, *capsys.readouterr())


def test_adml_jsonl_counts_tokens_per_stream(capsys, adapters, real_clips):
    code, out, err = run(capsys, "--format", "jsonl", "--loras", ",".join(adapters), str(real_clips[0][0]))
    assert code == 0, err
    row = json.loads(out)
    counts = row["stream_tokens"]
    assert list(counts) == ["base", "music", "sports"]
    n_tokens = len(whisper_min.get_tokenizer("tiny.en").encode(" " + row["text"]))
    assert sum(counts.values()) >= n_tokens - 2 and "dashwood" in row["text"].lower()


def test_no_loras_is_the_plain_decoder(capsys, real_clips):
    code, out, _ = run(capsys, "--format", "jsonl", str(real_clips[0][0]))
    assert code == 0 and "stream_tokens" not in json.loads(out)


def test_adapter_errors_are_clear(capsys, adapters, tmp_path, base_model, real_clips):
    clip = str(real_clips[0][0])
    code, _, err = run(capsys, "--loras", f"{adapters[0]},{adapters[0]}", clip)
    assert code == 2 and "duplicate" in err
    other = make_adapter(base_model, tmp_path / "base_music.st", "music", 0)
    code, _, err = run(capsys, "--loras", str(other), clip)
    assert code == 2 and str(other) in err and "base model" in err
    truncated = tmp_path / "cut.st"
    truncated.write_bytes(open(adapters[0], "rb").read()[:1000])
    code, _, err = run(capsys, "--loras", str(truncated), clip)
    assert code == 2 and str(truncated) in err
    code, _, err = run(capsys, "--loras", str(tmp_path / "missing.st"), clip)
    assert code == 2 and "missing.st" in err
