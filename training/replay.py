"""Replay: keep a domain model close to the base model outside its domain (`train --replay`).

ADML prefers an adapter wherever that adapter is surer than the base: its whole transcript
under routing (decoders/route.py), its token under Eq. (3) (decoders/rules.py). An adapter
trained only on its domain also grows surer outside it: on real speech, adapters trained
without replay turned prompts into requests where the base was unsure (RESULTS.md). With
`--replay MANIFEST`, every training step also decodes a batch of out-of-domain utterances
(teacher-forced on their reference text) and pulls the trained model's next-token
distribution there toward the frozen base model's:

    loss = CE(domain batch) + weight * KL(p_base || p_trained) on the replay batch

each term a mean over its target tokens. The teacher is the base's distribution, not the
reference text, so the adapter learns nothing new out of domain: it keeps the base's words
and its confidence, which is what ADML compares. This is distillation from the base (as in
learning-without-forgetting); the DAS paper does not use it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def frozen_teacher(load_model, name: str, device) -> nn.Module:
    """A second, untouched copy of the base model: the replay targets' source."""
    teacher = load_model(name, device=device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def kl_sum(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> Tensor:
    """sum over the masked positions of KL(teacher || student):
    logits (B, T, V), mask (B, T) -> scalar."""
    s = F.log_softmax(student_logits[mask].float(), dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits[mask].float(), dim=-1)  # (N, V)
    return F.kl_div(s, t, log_target=True, reduction="sum")


@torch.no_grad()
def teacher_logits(teacher: nn.Module, tokens: Tensor, audio: Tensor, encoded: bool) -> Tensor:
    """The base's logits (B, T, V) for tokens (B, T) on audio features (B, n_audio_ctx, D), or
    on log-mel spectrograms (B, n_mels, 3000) when the encoder cache is off (`encoded` False)."""
    return teacher.logits(tokens, audio if encoded else teacher.embed_audio(audio))
