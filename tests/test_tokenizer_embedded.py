"""The tokenizer against openai-whisper's, and the embedded-weights cache."""

import pytest

import whisper_min.embedded as embedded
from whisper_min.load import load_model

TEXTS = ["Hello world! What's the weather in Zürich, 36°C?", " leading space", "♪ la la ♪ 日本語 «quotes»",
         "<|endoftext|> is plain text here", "numbers 1234567 and 3.14159"]


@pytest.mark.parametrize("name,multilingual", [("base", True), ("tiny.en", False)])
def test_tokenizer_matches_reference(name, multilingual, base_tokenizer, tiny_tokenizer):
    wt = pytest.importorskip("whisper.tokenizer", reason="run `bash tests/setup.sh`")
    ours = base_tokenizer if name == "base" else tiny_tokenizer
    ref = wt.get_tokenizer(multilingual, num_languages=99, language="en", task="transcribe")
    for text in TEXTS:
        assert ours.encode(text) == ref.encoding.encode(text, disallowed_special=()), text
        assert ours.decode(ours.encode(text)) == text
    assert ours.sot_sequence == ref.sot_sequence
    assert ours.non_speech_tokens == ref.non_speech_tokens
    for attr in ("eot", "sot", "no_speech", "no_timestamps", "timestamp_begin", "transcribe", "translate",
                 "sot_prev", "sot_lm"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert ours.encoding.n_vocab == (51865 if multilingual else 51864)
    assert ours.decode_with_timestamps([ours.timestamp_begin + 50]) == "<|1.00|>"


def test_embedded_cache_is_built_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # the user presses Ctrl-C during the first conversion

    real_convert = embedded.convert_ctranslate2
    monkeypatch.setattr(embedded, "convert_ctranslate2", boom)
    with pytest.raises(KeyboardInterrupt):
        embedded.resolve_model("tiny.en")
    models = tmp_path / "das" / "models"
    assert not (models / "tiny.en").exists() and not list(models.glob("*.bin.tmp*"))  # nothing half-done

    monkeypatch.setattr(embedded, "convert_ctranslate2", real_convert)
    path = embedded.resolve_model("tiny.en")
    assert path == models / "tiny.en" and sorted(p.name for p in path.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json"]
    assert load_model(path).dims.n_text_layer == 4
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert embedded.resolve_model("tiny.en") == path and (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_embedded_sha256_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = embedded.EMBEDDED["tiny.en"]
    monkeypatch.setitem(embedded.EMBEDDED, "tiny.en", embedded.Embedded(spec.packages, spec.tokenizer, "0" * 64,
                                                                        spec.pip_name))
    with pytest.raises(ValueError, match="sha256"):
        embedded.resolve_model("tiny.en")
    assert not (tmp_path / "das" / "models" / "tiny.en").exists()


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an embedded model"):
        embedded.resolve_model(str(tmp_path / "nope"))
