"""Whisper's encoder output, computed once per utterance and kept on disk for training.

While only the decoder trains, the encoder maps each utterance to the same features in every
epoch, and it is most of the compute. Each utterance's features (n_audio_ctx, D) are stored
in fp16 as `<root>/<model fingerprint>-v<FEATURES_VERSION>/<sha256 of the audio bytes>.st`: keyed by content, so a
renamed file hits and an edited one misses, and by model, so features never leak between
base models. Writes go to a temporary name and are renamed, so parallel ranks or an
interrupted run never leave a half file.
"""

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import lora
from whisper_min.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim


# Bumped whenever load_mel changes, so features made the old way are never read back.
FEATURES_VERSION = 2


def load_mel(path: Path, n_mels: int) -> Tensor:
    """An utterance as Whisper's 30 s log-mel window (n_mels, 3000), exactly as
    `whisper_min.transcribe` builds its first window: the mel of the speech frames only,
    then zero-padded. (Padding the *audio* with silence instead gives different padding
    frames, and an adapter trained on those would see other features at inference.)"""
    mel = log_mel_spectrogram(load_audio(str(path)), n_mels, padding=N_SAMPLES)  # (M, n + 3000)
    return pad_or_trim(mel[:, : mel.shape[-1] - N_FRAMES], N_FRAMES)  # (M, 3000)


def default_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "das" / "encoder"


class EncoderCache:
    def __init__(self, root: str | Path | None, model):
        self.model = model
        self.dir = Path(root or default_root()) / f"{lora.model_fingerprint(model)}-v{FEATURES_VERSION}"
        self.keys: dict[Path, str] = {}

    def key(self, audio: Path) -> str:
        if audio not in self.keys:
            self.keys[audio] = hashlib.sha256(Path(audio).read_bytes()).hexdigest()
        return self.keys[audio]

    def path(self, audio: Path) -> Path:
        k = self.key(audio)
        return self.dir / k[:2] / f"{k}.st"

    @torch.inference_mode()
    def fill(self, audios: list[Path], batch: int = 8, log=print) -> int:
        """Encode every file not yet cached; returns how many were encoded."""
        todo = sorted({a for a in audios if not self.path(a).is_file()}, key=str)
        device, dtype = self.model.device, self.model.decoder.token_embedding.weight.dtype
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            mel = torch.stack([load_mel(a, self.model.dims.n_mels) for a in chunk])  # (b, M, 3000)
            features = self.model.embed_audio(mel.to(device, dtype))  # (b, n_audio_ctx, D)
            for a, f in zip(chunk, features):
                path = self.path(a)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                save_file({"features": f.to("cpu", torch.float16).contiguous()}, tmp)
                tmp.replace(path)
            if log and len(todo) > batch:
                log(f"encoder cache: {min(start + batch, len(todo))}/{len(todo)} utterances encoded")
        return len(todo)

    def get(self, audios: list[Path]) -> Tensor:
        """Cached features of each file, stacked: (B, n_audio_ctx, D) fp16 on the CPU."""
        return torch.stack([load_file(self.path(a))["features"] for a in audios])
