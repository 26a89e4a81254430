"""A training run's resumable state (`train --resume`, Ctrl-C): the trainable parameters, their
AdamW moments, the RNG and PiSSA's starting point, in one safetensors file beside the output.

A checkpoint carries the id of the run that wrote it (a hash of data, model and settings),
so a resume with other arguments is refused instead of silently mixing two runs.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

import lora


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.stem + ".ckpt.st")


def save_checkpoint(path: Path, model: nn.Module, optimizer, step: int, run_id: str, best: dict) -> None:
    """Trainable parameters, their AdamW state and PiSSA's starting point, by name, in safetensors."""
    tensors = {"rng/torch": torch.get_rng_state()}
    for name, p in model.named_parameters():
        if p.requires_grad:
            tensors[f"param/{name}"] = p.detach().cpu().contiguous()
            for k, v in optimizer.state.get(p, {}).items():
                tensors[f"optim/{name}/{k}"] = v.detach().cpu().contiguous()
    for name, b in model.named_buffers():
        if "pissa_" in name:
            tensors[f"buffer/{name}"] = b.cpu().contiguous()
    lora.write_safetensors(tensors, path, {"format": "das-checkpoint", "step": str(step), "run_id": run_id,
                                           "best": json.dumps(best)})


def read_checkpoint(path: Path, run_id: str) -> tuple[int, dict, dict]:
    """(step, tensors, best-validation record) of a checkpoint of this very run."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (run without --resume to start over)")
    meta = lora.read_header(path).get("__metadata__", {})
    if meta.get("run_id") != run_id:
        raise ValueError(f"{path}: checkpoint of a different run (other data, model or settings); "
                         "resume with the same arguments, or delete it to start over")
    with safe_open(path, framework="pt") as f:
        return int(meta["step"]), {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta.get("best", "{}"))


@torch.no_grad()
def restore(model: nn.Module, optimizer, state: dict) -> None:
    for name, layer in lora.lora_layers(model).items():
        if f"buffer/{name}.pissa_A0" in state:  # rebuild W_res from the saved start, not a new SVD
            lora.set_pissa_start(layer, state[f"buffer/{name}.pissa_A0"], state[f"buffer/{name}.pissa_B0"],
                                 layer.base.weight)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.copy_(state[f"param/{name}"])
            prefix = f"optim/{name}/"
            # AdamW keeps its step count on the CPU and the moments beside the parameter.
            optimizer.state[p] = {k[len(prefix):]: v if k.endswith("/step") else v.to(p.device)
                                  for k, v in state.items() if k.startswith(prefix)}
    torch.set_rng_state(state["rng/torch"])
