"""Optional: an adapter exported by lora.py loads into transformers + peft and gives our logits.

Needs `pip install peft transformers` (not das dependencies); skipped without them. The
required round trip on the tensors is tests/test_lora.py::test_peft_export_and_import_round_trip.
"""
import pytest
import torch

import lora
from test_lora import TINY, perturb_lora, tiny_model
from whisper_min.load import save_model_dir
from whisper_min.model import ModelDimensions

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.peft
DIMS = ModelDimensions(**{**vars(TINY), "n_vocab": 51865})  # transformers' default special ids must exist


def test_exported_adapter_in_peft_gives_the_trained_models_logits(tmp_path):
    torch.manual_seed(0)
    save_model_dir(tiny_model(dims=DIMS).state_dict(), DIMS, tmp_path / "base")
    trained = tiny_model(dims=DIMS)
    lora.add_lora(trained, r=4, alpha=8)  # PiSSA: the export must be the rank-2r delta to W0
    perturb_lora(trained)
    lora.save_adapter(trained, tmp_path / "music.st", domain="music", base_model="tiny")
    adapter = lora.load_adapter(tmp_path / "music.st", tiny_model(dims=DIMS))
    lora.export_peft(adapter, tmp_path / "peft", base_model_name=str(tmp_path / "base"))

    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    mel = torch.randn(2, DIMS.n_mels, 2 * DIMS.n_audio_ctx)
    tokens = torch.randint(0, DIMS.n_vocab, (2, 8))
    with torch.no_grad():
        ours = trained(mel, tokens)
        theirs = model(input_features=mel, decoder_input_ids=tokens).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)

    # and back: peft's own save_pretrained reads into the same deltas
    model.save_pretrained(tmp_path / "resaved")
    back = lora.import_peft(tmp_path / "resaved", tiny_model(dims=DIMS))
    for name, (A, B) in adapter.deltas.items():
        torch.testing.assert_close(back.deltas[name][1] @ back.deltas[name][0], B @ A, atol=1e-6, rtol=0)
