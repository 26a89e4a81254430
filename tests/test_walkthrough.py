"""docs/walkthrough.md quotes tensor shapes for Whisper base with k = 3 adapters; this runs
the code it describes and checks every quoted shape, so the text cannot drift from the code.

A quoted row reads  | `name` | `(1, 1500, 512)` | `adml.py:BatchedStreams.step` |.  The shapes
are read off the running code: every tensor local of the watched functions, as each call
returns. Every name measured here must be quoted there, and every place named must exist.
"""

import ast
import copy
import inspect
import json
import re
import sys
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import torch

import adml
import decoders
import lora
import whisper_min
from decoders import route
from training.data import collate, read_manifest
from training.encoder_cache import EncoderCache
from whisper_min.decoding import DecodingOptions
from whisper_min.model import MultiHeadAttention, Whisper

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "walkthrough.md"
ROW = re.compile(r"^\| `([^`]+)` \| `(\([^`]*\))` \| `([\w/]+\.py):([\w.]+)` \|", re.M)
ADAPTERS = [ROOT / "adapters" / f"{d}.st" for d in ("music", "weather", "sports")]
CLIP = ROOT / "examples" / "music1.wav"
LONGEST = "What will the weather be like in Seattle tomorrow morning?"  # the training batch's longest text

# walkthrough name -> (function, local, which distinct shape: 0 the first seen, 1 the next, ...)
INFERENCE = {
    "audio": (whisper_min.transcribe, "audio", 0),
    "mel": (whisper_min.transcribe, "mel", 0),
    "window": (whisper_min.transcribe, "segment_mel", 0),
    "audio features": (route.decode_streams, "features", 0),
    "stacked A": (adml.stack_adapters, "A", 0),
    "stacked B": (adml.stack_adapters, "B", 0),
    "k0": (adml.MultiLoRACrossAttention.cross, "kv.k0", 0),
    "pv": (adml.MultiLoRACrossAttention.cross, "kv.pv", 0),
    "self-attention cache": (MultiHeadAttention.forward, "cache[0]", 0),
    "start tokens": (adml.BatchedStreams.prefill, "tokens", 0),
    "prefill rows": (adml.BatchedStreams._hidden, "rows", 0),
    "prefill hidden": (adml.BatchedStreams.prefill, "h", 0),
    "prefill logits": (adml.BatchedStreams.prefill, "return[0]", 0),
    "base start logits": (adml.BatchedStreams.prefill, "return[1]", 0),
    "step tokens": (adml.BatchedStreams.step, "token", 0),
    "x": (adml.MultiLoRALinear.forward, "x", 1),
    "xs": (adml.MultiLoRALinear.forward, "xs", 1),
    "A x": (adml.MultiLoRALinear.forward, "ax", 1),
    "B (A x)": (adml.MultiLoRALinear.forward, "delta", 1),
    "cross query": (adml.MultiLoRACrossAttention.cross, "q", 1),
    "cross scores": (adml.MultiLoRACrossAttention.cross, "scores", 1),
    "step logits": (adml.BatchedStreams.step, "return", 0),
}
TRAINING = {
    "inputs": (collate, "inputs", 0),
    "labels": (collate, "labels", 0),
    "features": (EncoderCache.get, "return", 0),
    "lora x": (lora.LoRALinear.forward, "x", 1),  # 0 is cross_attn.value on the audio features
    "lora out": (lora.LoRALinear.forward, "lora", 1),
    "training logits": (Whisper.logits, "return", 0),
    "delta A": (lora.LoRALinear.delta, "return[0]", 0),
    "delta B": (lora.LoRALinear.delta, "return[1]", 0),
}


def tensors(name: str, value):
    """(name, tensor) pairs in a local: a tensor, a tuple of them, or a dataclass holding them."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            yield from tensors(f"{name}[{i}]", v)
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from tensors(f"{name}.{f.name}", getattr(value, f.name))


@contextmanager
def watching(functions):
    """{(function's code, local): [distinct shapes, in the order first seen]} of each call's
    tensor locals (and its return value, as "return") when it returns."""
    codes = {inspect.unwrap(f).__code__ for f in functions}
    seen: dict[tuple, list] = {}

    def profile(frame, event, arg):
        if event == "return" and frame.f_code in codes:
            for name, value in [*frame.f_locals.items(), ("return", arg)]:
                for key, t in tensors(name, value):
                    shapes = seen.setdefault((frame.f_code, key), [])
                    if tuple(t.shape) not in shapes:
                        shapes.append(tuple(t.shape))

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def read(seen, table) -> dict[str, tuple]:
    out = {}
    for name, (fn, local, index) in table.items():
        shapes = seen.get((inspect.unwrap(fn).__code__, local), [])
        out[name] = shapes[index] if index < len(shapes) else None
    return out


def measure_transcribe(model, tokenizer) -> dict[str, tuple]:
    """A 3.0 s clip through what `das.py transcribe --loras music,weather,sports` runs."""
    audio = whisper_min.load_audio(str(CLIP))[:48000]
    with watching([fn for fn, _, _ in INFERENCE.values()]) as seen, torch.inference_mode():
        decode_fn = decoders.make_decoder(model, [str(p) for p in ADAPTERS], tau=0.01, strategy="route")
        whisper_min.transcribe(model, audio, tokenizer, DecodingOptions(language="en"), decode_fn=decode_fn)
    return read(seen, INFERENCE)


def measure_training(model, tokenizer, tmp: Path) -> dict[str, tuple]:
    """One training step's batch: 16 domain rows and 8 replay rows, collated together, through
    the LoRA model on cached encoder outputs, then the delta the adapter file stores."""
    rows = [{"audio": str(CLIP), "text": LONGEST}] + [{"audio": str(CLIP), "text": "Play some jazz."}] * 23
    (tmp / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = read_manifest(tmp / "m.jsonl", tokenizer, model.dims.n_text_ctx, 0)
    lora.add_lora(model, r=32, alpha=64)  # PiSSA, as `das.py train` does
    layer = lora.lora_layers(model)["decoder.blocks.0.attn.query"]
    cache = EncoderCache(tmp / "cache", model)
    with torch.no_grad():
        cache.fill([CLIP], log=None)
    with watching([fn for fn, _, _ in TRAINING.values()]) as seen, torch.no_grad():
        inputs, labels = collate(utts, len(tokenizer.sot_sequence) + 1, tokenizer.eot)
        model.logits(inputs, cache.get([u.audio for u in utts]).float())
        layer.delta()
    out = read(seen, TRAINING)
    out["utterance tokens"] = (len(utts[0].tokens),)
    out["lora A"], out["lora B"] = tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)
    return out


@pytest.fixture(scope="module")
def measured(base_model, base_tokenizer, tmp_path_factory) -> dict[str, tuple]:
    shapes = measure_transcribe(base_model, base_tokenizer)
    # a copy of the model: LoRA goes into it
    return shapes | measure_training(copy.deepcopy(base_model), base_tokenizer, tmp_path_factory.mktemp("w"))


def quoted() -> dict[str, tuple[str, str, str]]:
    return {name: (shape, path, where) for name, shape, path, where in ROW.findall(DOC.read_text())}


@pytest.mark.slow
def test_every_quoted_shape_is_the_code_s(measured):
    rows = quoted()
    wrong = [f"{name}: quoted {shape}, measured {measured.get(name)}" for name, (shape, _, _) in rows.items()
             if measured.get(name) != tuple(ast.literal_eval(shape))]
    assert not wrong, "\n".join(wrong)
    assert set(measured) == set(rows), f"measured, not quoted: {sorted(set(measured) - set(rows))}; " \
                                       f"quoted, not measured: {sorted(set(rows) - set(measured))}"


def test_every_place_named_exists():
    for name, (_, path, where) in quoted().items():
        scope = ast.parse((ROOT / path).read_text()).body
        for part in where.split("."):
            found = [n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part]
            assert found, f"{name}: {path} has no {where}"
            scope = found[0].body


def test_the_training_text_is_as_quoted(base_tokenizer):
    assert f"`{LONGEST}`" in DOC.read_text()
    assert len(base_tokenizer.encode(" " + LONGEST)) == 11  # the walkthrough's T = 4 + 11 + 1
