"""P2 losses (DIME-FM, Sun et al., ICCV 2023): distilling with unpaired images and sentences.

Registered names: ``vld``, ``pvld``, ``udist`` (see docs/methods.md, P2). None of them
reads a label: DIME-FM trains on unpaired data, so every loss here works with ``batch == {}``
and ignores whatever the batch holds.

Common definitions (as in the DIME-FM paper): logits are ``logit_scale * cos`` (``logit_scale`` =
100 by default), and the per-row distillation term is
``KL(softmax(t / T) || softmax(s / T)) = sum_j p_t[j] (log p_t[j] - log p_s[j])`` with t the
teacher's and s the student's logits of that row and T the temperature; rows are averaged
("batch mean"). The paper gives this formula without the usual Hinton ``T^2`` factor, so
NONE is applied: at T = 7 (``udist``) the gradients are ~49x smaller than with ``T^2``, which
the configured weights must absorb.

Inputs read (B batch, D embedding width, M sentences in the bank):

- ``student["embed"]``: Tensor [B, D], NOT normalised; L2-normalised here.
- ``teacher["image_embed"]``: Tensor [B, D], normalised teacher image embeddings.
- ``teacher["sentence_embed"]``: Tensor [M, D], normalised teacher text embeddings of a
  bank of *unpaired* sentences (``vld`` only). M need not relate to B.

Computation is in float32; teacher tensors are detached targets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vldistill.trainers.losses import register_loss


def _positive(name: str, value: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _student(student: dict) -> Tensor:
    """Normalised student embedding [B, D] in float32."""
    return F.normalize(student["embed"].float(), dim=-1)


def _teacher(teacher: dict, key: str, loss: str, like: Tensor) -> Tensor:
    """``teacher[key]`` as a detached float32 [*, D] tensor on ``like``'s device."""
    if teacher.get(key) is None:
        raise ValueError(f"loss {loss!r} needs teacher[{key!r}]; got keys {sorted(teacher)}")
    t = teacher[key].detach().float().to(like.device)
    if t.dim() != 2 or t.shape[1] != like.shape[1]:
        raise ValueError(
            f"loss {loss!r}: teacher[{key!r}] has shape {tuple(t.shape)}, expected "
            f"[*, {like.shape[1]}] (the student embedding width)"
        )
    return t


def kl_rows(t_logits: Tensor, s_logits: Tensor, temperature: float) -> Tensor:
    """Mean over rows of ``KL(softmax(t / T) || softmax(s / T))`` (softmax over the last dim).

    No ``T^2`` factor. Written with log-softmax for stability.
    """
    log_pt = F.log_softmax(t_logits / temperature, dim=-1)
    log_ps = F.log_softmax(s_logits / temperature, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1).mean()


def _example_inputs(b: int, d: int, m: int, seed: int) -> tuple[dict, dict, dict]:
    g = torch.Generator().manual_seed(seed)
    student = {"embed": torch.randn(b, d, generator=g).requires_grad_(True)}
    teacher = {
        "image_embed": F.normalize(torch.randn(b, d, generator=g), dim=-1),
        "sentence_embed": F.normalize(torch.randn(m, d, generator=g), dim=-1),
    }
    return student, teacher, {}


class _P2Loss(nn.Module):
    """Shared constructor validation and example inputs of the P2 losses."""

    def __init__(self, temperature: float, logit_scale: float) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)
        self.logit_scale = _positive("logit_scale", logit_scale)

    @staticmethod
    def example_inputs(
        b: int = 4, d: int = 8, m: int = 6, seed: int = 0
    ) -> tuple[dict, dict, dict]:
        """Random ``(student, teacher, batch)`` every P2 loss accepts (``batch`` is empty).

        ``student["embed"]`` requires grad; the teacher holds ``image_embed`` [b, d] and
        ``sentence_embed`` [m, d], both normalised.
        """
        return _example_inputs(b, d, m, seed)


@register_loss("vld")
class VLDistillLoss(_P2Loss):
    """Vision-language distillation over a bank of unpaired sentences (DIME-FM ``vld``).

    With ``Z = teacher["sentence_embed"]`` [M, D]:

    - image -> sentence: teacher logits ``scale * T_img @ Z.T`` and student logits
      ``scale * S @ Z.T`` [B, M]; per image ``KL(softmax(t/T) || softmax(s/T))`` over the M
      sentences, mean over the B images.
    - sentence -> image (``both_directions=True``): the same logits transposed [M, B]; per
      sentence the KL between distributions over the B images of the batch, mean over the M
      sentences.

    The loss is the image->sentence term, or the average of the two directions. No ``T^2``
    factor: DIME-FM's formula as the paper gives it has none, so none is applied.
    Key ``vld_loss``.

    Args:
        temperature: Distillation temperature T (> 0); DIME-FM uses 1.0.
        logit_scale: Multiplier of the cosines (> 0); DIME-FM uses 100.
        both_directions: Also distil the sentence->image direction and average the two.
    """

    def __init__(
        self, temperature: float = 1.0, logit_scale: float = 100.0, both_directions: bool = True
    ) -> None:
        super().__init__(temperature, logit_scale)
        if not isinstance(both_directions, bool):
            raise ValueError(f"both_directions must be a bool, got {both_directions!r}")
        self.both_directions = both_directions

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = _student(student)
        t = _teacher(teacher, "image_embed", "vld", like=s)
        z = _teacher(teacher, "sentence_embed", "vld", like=s)
        t_logits = self.logit_scale * t @ z.T  # [B, M]
        s_logits = self.logit_scale * s @ z.T
        loss = kl_rows(t_logits, s_logits, self.temperature)
        if self.both_directions:
            loss = (loss + kl_rows(t_logits.T, s_logits.T, self.temperature)) / 2
        return {"vld_loss": loss}


@register_loss("pvld")
class PseudoVLDistillLoss(_P2Loss):
    """``vld`` with the batch's teacher image embeddings as pseudo-sentences (DIME-FM ``pvld``).

    Teacher logits ``scale * T_img @ T_img.T`` and student logits ``scale * S @ T_img.T``
    [B, B]; per image ``KL(softmax(t/T) || softmax(s/T))`` over the B pseudo-sentences, mean
    over the images. Only this (image -> pseudo-sentence) direction is computed. No ``T^2``
    factor (see the module docstring). Key ``pvld_loss``.

    Args:
        temperature: Distillation temperature T (> 0); DIME-FM uses 3.0.
        logit_scale: Multiplier of the cosines (> 0); DIME-FM uses 100.
    """

    def __init__(self, temperature: float = 3.0, logit_scale: float = 100.0) -> None:
        super().__init__(temperature, logit_scale)

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = _student(student)
        t = _teacher(teacher, "image_embed", "pvld", like=s)
        t_logits = self.logit_scale * t @ t.T  # [B, B]
        s_logits = self.logit_scale * s @ t.T
        return {"pvld_loss": kl_rows(t_logits, s_logits, self.temperature)}


@register_loss("udist")
class UnpairedDistillLoss(_P2Loss):
    """Image-image similarity-structure distillation (DIME-FM ``udist``).

    Teacher logits ``scale * T_img @ T_img.T`` and student logits ``scale * S @ S.T``
    [B, B]. The diagonal (self-similarity, always the largest) is masked out of both, i.e.
    set to -inf before the row-wise softmax at temperature T; this is implemented by
    dropping the diagonal, which gives the same distributions over the B - 1 other images
    and avoids ``0 * log 0`` NaNs. Per image ``KL(softmax(t/T) || softmax(s/T))``, mean over
    the images. With B < 2 there is nothing to compare and the loss is 0 (still attached to
    the graph). No ``T^2`` factor (see the module docstring). Key ``udist_loss``.

    Args:
        temperature: Distillation temperature T (> 0); DIME-FM uses 7.0.
        logit_scale: Multiplier of the cosines (> 0); DIME-FM uses 100.
    """

    def __init__(self, temperature: float = 7.0, logit_scale: float = 100.0) -> None:
        super().__init__(temperature, logit_scale)

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = _student(student)
        t = _teacher(teacher, "image_embed", "udist", like=s)
        b = s.shape[0]
        t_logits = self.logit_scale * t @ t.T  # [B, B]
        s_logits = self.logit_scale * s @ s.T
        if b < 2:
            return {"udist_loss": s_logits.sum() * 0.0}
        off = ~torch.eye(b, dtype=torch.bool, device=s.device)
        t_off = t_logits[off].view(b, b - 1)  # row i: similarities to the other images
        s_off = s_logits[off].view(b, b - 1)
        return {"udist_loss": kl_rows(t_off, s_off, self.temperature)}
