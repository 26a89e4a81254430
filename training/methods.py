"""What trains: a LoRA adapter (the method), or the paper's full fine-tuning baselines
(`--method ft|ft-last3|ft-enc-dec`, Tables II and IV), and how a fine-tune is saved and loaded.
A fine-tune file holds only the tensors that trained, under their model names."""

from pathlib import Path

from safetensors import safe_open
from torch import nn

import lora

METHODS = ("lora", "ft", "ft-last3", "ft-enc-dec")


def set_trainable(model: nn.Module, args, init) -> None:
    """Which parameters train: LoRA adds adapters (started by `init`); the ft methods unfreeze
    parts of the model."""
    if args.method == "lora":
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        lora.add_lora(model, targets, r=args.lora_r, alpha=args.lora_alpha, rslora=not args.no_rslora, init=init)
        lora.mark_only_lora_trainable(model)
        return
    n = len(model.decoder.blocks)
    prefixes = {"ft": ["decoder."],
                "ft-last3": [f"decoder.blocks.{i}." for i in range(n - 3, n)] + ["decoder.ln."],
                "ft-enc-dec": ["encoder.", "decoder."]}[args.method]
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(tuple(prefixes))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """{'lora': adapter parameters, 'base': everything else, 'trainable': requires_grad}."""
    n_lora = sum(p.numel() for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B")))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"lora": n_lora, "base": total - n_lora, "trainable": trainable}


def save_finetune(model: nn.Module, path: Path, metadata: dict) -> Path:
    """Full fine-tunes: the tensors that trained, under their model names."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    return lora.write_safetensors(tensors, path, {"format": "das-finetune", **metadata})


def load_finetune(path: str | Path, model: nn.Module) -> None:
    meta = lora.read_header(Path(path)).get("__metadata__", {})
    if meta.get("base_fingerprint") != lora.model_fingerprint(model):
        raise lora.AdapterError(f"{path}: fine-tuned from a different base model ({meta.get('base_model')!r})")
    with safe_open(path, framework="pt") as f:
        missing, unexpected = model.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=False)
    if unexpected:
        raise lora.AdapterError(f"{path}: tensors this model does not have: {unexpected[:5]}")
