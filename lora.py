"""Low-rank adapters (LoRA) on Whisper's decoder, one per domain (DAS paper, Sections III-B and IV).

    h = W0 x + s * B A x        A (r, in), B (out, r); W0 frozen, only A and B train
    s = alpha / sqrt(r)         rsLoRA (Kalajdzievski 2023), the paper's choice; alpha / r without it

Paper defaults: r = 32, alpha = 64, adapters on the query and value projections of the
decoder's self- and cross-attention, encoder untouched, PiSSA initialisation.

PiSSA (Meng et al. 2024) starts A and B from the top-r singular triplets of W0 and freezes the
residual W_res = W0 - s B0 A0 instead of W0. A trained PiSSA layer is therefore W_res + s B A,
which only a model holding W_res can use. So that adapters trained separately share one base
(what ADML needs), an adapter file never stores A and B as trained: it stores the delta
against the original W0 as a pair,

    W0 + B_d A_d = W_res + s B A     with  A_d = [s A; -s A0] (2r, in),  B_d = [B, B0] (out, 2r)

which is exact (no SVD truncation). Standard-initialised adapters store (s A, B), rank r.
Loading returns these fp32 pairs (`Adapter.deltas`), scale folded in: nothing downstream needs
r, alpha or the initialisation to apply them.
"""

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from whisper_min.load import hf_name

FORMAT = "das-lora"
FORMAT_VERSION = 1
# Module names relative to each decoder block (`decoder.blocks.{i}.` + target).
DEFAULT_TARGETS = ("attn.query", "attn.value", "cross_attn.query", "cross_attn.value")


class LoRALinear(nn.Module):
    """Wraps a frozen `nn.Linear` (wrap, don't inherit): forward(x) = base(x) + s B A x."""

    def __init__(self, base: nn.Linear, r: int = 32, alpha: float = 64, rslora: bool = True):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, not {r}")
        self.base, self.r, self.alpha, self.rslora = base, r, alpha, rslora
        self.scale = alpha / math.sqrt(r) if rslora else alpha / r
        self.lora_A = nn.Parameter(torch.zeros(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        # PiSSA's starting A0, B0 (None for standard init): the delta to the original W0 needs them.
        self.register_buffer("pissa_A0", None)
        self.register_buffer("pissa_B0", None)
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.base(x)
        if self.merged:
            return h
        lora = (x.to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T  # (..., in) -> (..., r) -> (..., out)
        return h + (self.scale * lora).to(h.dtype)

    def weight_update(self) -> Tensor:
        return self.scale * self.lora_B @ self.lora_A  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold s B A into the base weight, for plain-Linear speed. A second call does nothing."""
        if not self.merged:
            self.base.weight += self.weight_update().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge` (exact up to rounding in the base weight's dtype). Safe to call twice."""
        if self.merged:
            self.base.weight -= self.weight_update().to(self.base.weight.dtype)
            self.merged = False

    def delta(self) -> tuple[Tensor, Tensor]:
        """(A_d, B_d), fp32, with W0 + B_d A_d = this layer's current weight; see the module docstring."""
        A, B = self.scale * self.lora_A.detach().float(), self.lora_B.detach().float()
        if self.pissa_A0 is None:
            return A.clone(), B.clone()
        A0, B0 = self.pissa_A0.float(), self.pissa_B0.float()
        return torch.cat([A, -self.scale * A0]), torch.cat([B, B0], dim=1)  # (2r, in), (out, 2r)

    def extra_repr(self) -> str:  # what print(model) shows for the layer
        return f"r={self.r}, alpha={self.alpha}, scale={self.scale:.4g}, pissa={self.pissa_A0 is not None}"


@torch.no_grad()
def init_standard(layer: LoRALinear, generator: torch.Generator | None = None) -> None:
    """Hu et al. 2022: A Kaiming-uniform, B zero, so s B A = 0 and the model starts as the base."""
    A = torch.empty_like(layer.lora_A, device="cpu")
    nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    layer.lora_A.copy_(A)
    layer.lora_B.zero_()


@torch.no_grad()
def init_pissa(layer: LoRALinear, generator: torch.Generator | None = None) -> None:
    """PiSSA: W0 = U S V^T; B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T, each divided by sqrt(s)
    so that s B A is the principal part; the frozen weight becomes the residual W0 - s B A."""
    W0 = layer.base.weight.float()
    if layer.r > min(W0.shape):
        raise ValueError(f"PiSSA rank r={layer.r} exceeds the layer's rank bound {min(W0.shape)}")
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)  # (out, k), (k,), (k, in)
    root = (S[: layer.r] / layer.scale).sqrt()  # (r,)
    B, A = U[:, : layer.r] * root, root[:, None] * Vh[: layer.r]  # (out, r), (r, in)
    set_pissa_start(layer, A, B, W0)


@torch.no_grad()
def set_pissa_start(layer: LoRALinear, A0: Tensor, B0: Tensor, W0: Tensor) -> None:
    """Start a PiSSA layer from given (A0, B0): resuming a run restores them from its checkpoint
    rather than trusting a fresh SVD to come out bit-identical."""
    device = layer.base.weight.device
    A0, B0 = A0.to(device, torch.float32).clone(), B0.to(device, torch.float32).clone()
    layer.lora_A.copy_(A0)
    layer.lora_B.copy_(B0)
    layer.pissa_A0, layer.pissa_B0 = A0, B0
    residual = W0.float() - layer.scale * B0 @ A0
    layer.base.weight.copy_(residual.to(layer.base.weight.dtype))


INITS = {"pissa": init_pissa, "standard": init_standard}


def add_lora(model: nn.Module, targets=DEFAULT_TARGETS, r: int = 32, alpha: float = 64, rslora: bool = True,
             init=init_pissa, generator: torch.Generator | None = None) -> list[str]:
    """Replace each targeted decoder Linear (`targets` relative to a decoder block) by a
    `LoRALinear` around it, initialised by `init` (`init_pissa` or `init_standard`).
    Returns the wrapped modules' names, in model order."""
    names = [f"decoder.blocks.{i}.{t}" for i in range(len(model.decoder.blocks)) for t in targets]
    missing = [n for n in names if n not in dict(model.named_modules())]
    if missing:
        raise ValueError(f"LoRA targets {list(targets)} name no module at {missing[:3]} "
                         "(targets are relative to a decoder block, e.g. 'attn.query', 'cross_attn.value', 'mlp.0')")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise ValueError(f"{name} is a {type(base).__name__}, not an nn.Linear (already has LoRA?)")
        layer = LoRALinear(base, r, alpha, rslora)
        init(layer, generator=generator)
        setattr(parent, child, layer)
    model.lora_config = {"r": r, "alpha": alpha, "rslora": rslora, "targets": list(targets),
                         "init": next((k for k, f in INITS.items() if f is init), getattr(init, "__name__", "custom"))}
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def mark_only_lora_trainable(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = name.endswith(("lora_A", "lora_B"))


# --- adapter files -------------------------------------------------------------------------

class AdapterError(ValueError):
    """An adapter file that cannot be used with this model; the message names the file and why."""


@dataclass
class Adapter:
    name: str  # the domain
    metadata: dict
    deltas: dict[str, tuple[Tensor, Tensor]]  # module name -> (A (r', in), B (out, r')), W = W0 + B @ A


def base_linear(module: nn.Module) -> nn.Linear:
    return module.base if isinstance(module, LoRALinear) else module


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the dims and tensors that neither LoRA nor PiSSA ever changes (layer norms,
    the first conv, every 64th token embedding), cast to fp16 so fp32 and fp16 copies of the
    same weights agree. Cheap: about 1/60 of the model's bytes."""
    h = hashlib.sha256(json.dumps(vars(model.dims), sort_keys=True).encode())
    state = model.state_dict()
    names = sorted(n for n in state if "ln" in n.split(".")[-2] or n.startswith("encoder.conv1."))
    for name in names + ["decoder.token_embedding.weight"]:
        t = state[name]
        t = t[::64] if name == "decoder.token_embedding.weight" else t
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def save_adapter(model: nn.Module, path: str | Path, *, domain: str, base_model: str,
                 data_sha256: str = "", extra: dict | None = None) -> Path:
    """Write the model's LoRA layers as deltas against the original base (`<name>.A`, `<name>.B`)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save (call add_lora first)")
    tensors = {}
    for name, layer in layers.items():
        A, B = layer.delta()
        tensors[f"{name}.A"], tensors[f"{name}.B"] = A.contiguous(), B.contiguous()
    config = getattr(model, "lora_config", {})
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "domain": domain,
                "base_model": base_model, "base_fingerprint": model_fingerprint(model),
                "r": str(config.get("r", "")), "alpha": str(config.get("alpha", "")),
                "rslora": str(config.get("rslora", "")), "targets": json.dumps(config.get("targets", [])),
                "init": config.get("init", ""), "data_sha256": data_sha256, "scale_folded": "true",
                "modules": json.dumps(list(layers))}
    metadata.update({k: str(v) for k, v in (extra or {}).items()})
    return write_safetensors(tensors, path, metadata)


def write_safetensors(tensors: dict, path: str | Path, metadata: dict) -> Path:
    """Write to a temporary name, then rename: an interrupted save never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp, metadata=metadata)
    tmp.replace(path)
    return path


def read_header(path: Path) -> dict:
    """The safetensors JSON header, after checking the file holds every byte it promises."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterError(f"{path}: truncated ({size} bytes; not even a safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise AdapterError(f"{path}: truncated ({size} bytes, the header needs {8 + n}) or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AdapterError(f"{path}: not a safetensors file (unreadable header)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise AdapterError(f"{path}: truncated: {size} bytes on disk, the header describes {8 + n + end}")
    return header


def load_adapter(path: str | Path, model: nn.Module) -> Adapter:
    """Read an adapter file and check it against `model` (dims, weights, modules, shapes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such adapter file")
    meta = read_header(path).get("__metadata__", {})
    if meta.get("format") != FORMAT:
        raise AdapterError(f"{path}: not a das LoRA adapter (metadata format={meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise AdapterError(f"{path}: format version {meta['format_version']} is newer than this das "
                           f"({FORMAT_VERSION}); upgrade das")
    fingerprint = model_fingerprint(model)
    if meta.get("base_fingerprint") != fingerprint:
        raise AdapterError(f"{path}: trained on a different base model ({meta.get('base_model')!r}, "
                           f"fingerprint {meta.get('base_fingerprint')}) than this one ({fingerprint}); "
                           "load it with the model it was trained on")
    modules = dict(model.named_modules())
    deltas = {}
    with safe_open(path, framework="pt") as f:
        present = set(f.keys())
        expected = json.loads(meta.get("modules", "[]"))
        missing = [f"{m}.{x}" for m in expected for x in ("A", "B") if f"{m}.{x}" not in present]
        if missing:
            raise AdapterError(f"{path}: missing tensors: {', '.join(missing[:6])}"
                               + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
        for name in expected:
            if name not in modules:
                raise AdapterError(f"{path}: names module {name}, which this model does not have")
            base = base_linear(modules[name])
            A, B = f.get_tensor(f"{name}.A").float(), f.get_tensor(f"{name}.B").float()
            if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or A.shape[1] != base.in_features \
                    or B.shape[0] != base.out_features:
                raise AdapterError(f"{path}: {name} has A {tuple(A.shape)}, B {tuple(B.shape)}; the model's "
                                   f"layer is ({base.out_features}, {base.in_features})")
            if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
                raise AdapterError(f"{path}: {name} holds NaN or infinite values")
            deltas[name] = (A, B)
    return Adapter(name=meta.get("domain", path.stem), metadata=meta, deltas=deltas)


@torch.no_grad()
def apply_adapter(model: nn.Module, adapter: Adapter, sign: float = 1.0) -> None:
    """W += sign * B @ A for every delta: one adapter merged into a plain model (sign=-1 undoes it)."""
    modules = dict(model.named_modules())
    for name, (A, B) in adapter.deltas.items():
        w = base_linear(modules[name]).weight
        w += (sign * B.to(w.device) @ A.to(w.device)).to(w.dtype)


# --- peft interchange ------------------------------------------------------------------------

PEFT_PREFIX = "base_model.model."


def export_peft(adapter: Adapter, out_dir: str | Path, base_model_name: str = "openai/whisper-base") -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` as peft saves a LoRA on a
    transformers WhisperForConditionalGeneration. The deltas already hold the scale, so the
    config sets lora_alpha = r without rsLoRA: peft's scale alpha / r is then exactly 1."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = {A.shape[0] for A, _ in adapter.deltas.values()}
    if len(ranks) != 1:
        raise ValueError(f"peft needs one rank per adapter; this one has ranks {sorted(ranks)}")
    r = ranks.pop()
    tensors = {}
    for name, (A, B) in adapter.deltas.items():
        key = PEFT_PREFIX + hf_name(name)
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = A.contiguous(), B.contiguous()
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name,
              "r": r, "lora_alpha": r, "use_rslora": False, "lora_dropout": 0.0, "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
              # full module names, so the encoder's q_proj/v_proj stay untouched
              "target_modules": sorted(hf_name(n) for n in adapter.deltas),
              "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}}
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    write_safetensors(tensors, out_dir / "adapter_model.safetensors", {"format": "pt"})
    return out_dir


def import_peft(in_dir: str | Path, model: nn.Module, name: str = "") -> Adapter:
    """Read a peft LoRA directory (any r, alpha, rsLoRA) into an `Adapter` for `model`."""
    in_dir = Path(in_dir)
    config = json.loads((in_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{in_dir}: peft_type {config.get('peft_type')!r} is not LORA")
    read_header(in_dir / "adapter_model.safetensors")
    to_openai = {hf_name(n): n for n, m in model.named_modules() if isinstance(base_linear(m), nn.Linear)}
    deltas = {}
    with safe_open(in_dir / "adapter_model.safetensors", framework="pt") as f:
        for key in sorted(k for k in f.keys() if k.endswith(".lora_A.weight")):
            hf = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
            if hf not in to_openai:
                raise AdapterError(f"{in_dir}: {key} names no Linear layer of this model")
            A = f.get_tensor(key).float()
            B = f.get_tensor(key.replace(".lora_A.", ".lora_B.")).float()
            r = A.shape[0]
            alpha = config.get("alpha_pattern", {}).get(hf, config["lora_alpha"])
            scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            deltas[to_openai[hf]] = (scale * A, B)
    if not deltas:
        raise AdapterError(f"{in_dir}: adapter_model.safetensors holds no lora_A tensors")
    return Adapter(name=name or in_dir.name, metadata={"source": "peft", **{k: str(v) for k, v in config.items()}},
                   deltas=deltas)
