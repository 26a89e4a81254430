"""The adapters in adapters/ (music, weather and sports trained by bench/reproduce.py, telephony by
bench/new_domain.py, all on Whisper base): they load, they were made for the base model that
ships, and on the example clips README's Run command prints what README shows and moves the
transcripts toward the references."""
import re
from pathlib import Path

import pytest
import torch

import das as cli
import lora
import whisper_min
from evaluation.evaluate import word_errors
from evaluation.normalize import normalize

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = [ROOT / "adapters" / f"{d}.st" for d in ("music", "weather", "sports", "telephony")]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def base():
    return whisper_min.load_model("base")


def references() -> dict[Path, str]:
    rows = (EXAMPLES / "transcripts.tsv").read_text().splitlines()
    return {EXAMPLES / name: text for name, text in (r.split("\t") for r in rows if r.strip())}


def test_adapters_load_for_the_shipped_base(base):
    fingerprint = lora.model_fingerprint(base)
    for path in ADAPTERS:
        adapter = lora.load_adapter(path, base)  # raises for another base model or a damaged file
        assert adapter.metadata["base_fingerprint"] == fingerprint
        assert adapter.name == path.stem and len(adapter.deltas) == 24  # q, v of self and cross attention x 6
        assert path.stat().st_size < 8_000_000


@pytest.mark.slow
def test_das_moves_examples_toward_their_references(base, monkeypatch, capsys):
    """README's Run command as a user runs it: it prints what README shows, and its transcripts
    are closer to the references than the base model's alone."""
    command, shown = re.findall(r"```\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[1:3]
    args = command.split()
    assert args[:3] == ["python", "das.py", "transcribe"] and args[-1] == "examples/*.wav"
    monkeypatch.chdir(ROOT)
    assert cli.main(args[2:-1] + sorted(f"examples/{p.name}" for p in EXAMPLES.glob("*.wav"))) == 0
    printed = capsys.readouterr().out
    assert printed == shown
    das = dict(line.split(": ", 1) for line in printed.splitlines())
    tokenizer = whisper_min.get_tokenizer("base", language="en")
    options = whisper_min.DecodingOptions(language="en")  # das.py transcribe's
    errors = {}
    for clip, ref in references().items():
        with torch.inference_mode():
            plain = whisper_min.transcribe(base, whisper_min.load_audio(str(clip)), tokenizer, options)["text"]
        hyps = (plain, das[f"examples/{clip.name}"])
        errors[clip.name] = [word_errors(normalize(ref).split(), normalize(h).split()).errors for h in hyps]
    assert len(errors) >= 3
    assert any(d < p for p, d in errors.values()), errors  # at least one clip is fixed
    assert sum(d for _, d in errors.values()) < sum(p for p, _ in errors.values()), errors  # and fewer errors in all
