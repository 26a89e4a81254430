"""decoders.make_decoder: adapter files in, the `decode_fn` that `das.py transcribe` and
`das.py eval` run out; checked against the sequential reference, with its errors."""

import copy

import pytest
import torch

import adml
import decoders
import lora
from decoders import reference
from test_adml import OPTIONS, tiny, tiny_features, tokenizer  # noqa: F401 (fixtures)
from whisper_min.decoding import decode

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: tests/conftest.py


def adapter_files(model, folder, domains=("music", "sports")) -> list:
    """Real adapter files (lora.save_adapter) for the tiny model, one per domain."""
    paths = []
    for i, domain in enumerate(domains):
        trained = copy.deepcopy(model)
        lora.add_lora(trained, r=4, generator=torch.Generator().manual_seed(i))
        for layer in lora.lora_layers(trained).values():  # stand-in for training: move off the init
            layer.lora_B.data.normal_(std=0.5, generator=torch.Generator().manual_seed(i))
        paths.append(lora.save_adapter(trained, folder / f"{domain}.st", domain=domain, base_model="tiny-random"))
    return paths


def test_make_decoder_on_adapter_files(tiny, tokenizer, tmp_path):
    paths = adapter_files(tiny, tmp_path)
    decode_fn = decoders.make_decoder(tiny, [str(p) for p in paths], tau=0.025, strategy="das")
    assert decode_fn.adapter_names == ["music", "sports"]
    audio = tiny_features(U=1)
    got = decode_fn(tiny, None, tokenizer, OPTIONS, audio_features=audio)
    adapters = [lora.load_adapter(p, tiny) for p in paths]
    ref = reference.decode_sequential(tiny, None, tokenizer, OPTIONS, audio_features=audio, adapters=adapters)
    assert [r.tokens for r in got] == [r.tokens for r in ref] and len(got[0].stream_tokens) == 3
    # one adapter: plain decoding of base + that adapter (merged), as the CLI's --loras x.st
    one = decoders.make_decoder(tiny, [str(paths[0])])(tiny, None, tokenizer, OPTIONS, audio_features=audio)
    with adml.swapped(tiny, reference.one_adapter_modules(tiny, adapters[0].deltas, merged=True)):
        alone = decode(tiny, None, tokenizer, OPTIONS, audio_features=audio)
    assert one[0].tokens == alone[0].tokens and one[0].stream_tokens == [0, len(alone[0].tokens)]
    with pytest.raises(ValueError, match="duplicate adapters"):
        decoders.make_decoder(tiny, [str(paths[0]), str(paths[0])])
    with pytest.raises(ValueError, match="tau must be"):
        decoders.make_decoder(tiny, [str(paths[0])], tau=-1)
    other = copy.deepcopy(tiny)
    torch.nn.init.normal_(other.decoder.ln.weight)
    with pytest.raises(lora.AdapterError, match="different base model"):
        decoders.make_decoder(other, [str(paths[0])])
