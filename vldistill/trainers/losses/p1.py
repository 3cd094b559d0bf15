"""P1 losses (Li et al., ICCV 2023): distilling a CLIP teacher for OOD generalisation.

Registered names: ``cls``, ``mse``, ``im_cst``, ``vlprox`` (see docs/methods.md, P1).
Every loss is an ``nn.Module`` whose ``forward(student, teacher, batch)`` returns a dict
with one key ending in ``_loss`` (a scalar tensor).

Inputs read (shapes: B batch, D embedding width, C base classes, V vocabulary size):

- ``student["embed"]``: Tensor [B, D], the student's projection-head output, NOT
  normalised; every loss L2-normalises it itself with ``F.normalize(..., dim=-1)``.
- ``teacher["image_embed"]``: Tensor [B, D], teacher image embeddings, already
  L2-normalised (not re-normalised here).
- ``teacher["text_embed"]``: Tensor [C, D], normalised teacher text embeddings of the
  training (base) class prompts; row i is class i.
- ``teacher["vocab_embed"]``: Tensor [V, D], normalised teacher text embeddings of a prompt
  vocabulary for ``vlprox``; optional, ``vlprox`` falls back to ``text_embed``.
- ``batch["label"]``: LongTensor [B], index into the rows of ``text_embed``.

All computations run in float32 (inputs are cast), so cached fp16 teacher targets and a
bf16 student under autocast give the same loss. Teacher tensors are targets: no gradient is
meant to flow into them (they come from a frozen, cached teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vldistill.trainers.losses import register_loss


def _student(student: dict) -> Tensor:
    """Normalised student embedding [B, D] in float32."""
    return F.normalize(student["embed"].float(), dim=-1)


def _teacher(teacher: dict, key: str, loss: str) -> Tensor:
    if key not in teacher:
        raise ValueError(f"loss {loss!r} needs teacher[{key!r}]; got keys {sorted(teacher)}")
    return teacher[key].float()


def _labels(batch: dict, loss: str) -> Tensor:
    if "label" not in batch:
        raise ValueError(f"loss {loss!r} needs batch['label']; got keys {sorted(batch)}")
    return batch["label"].long()


def _check_tau(tau: float) -> float:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    return float(tau)


@register_loss("cls")
class ClsLoss(nn.Module):
    """Cross-entropy over base classes with the teacher's text embeddings as classifier.

    ``CE(cos(S(x), T_txt(c)) / tau, label)``, mean over the batch. Key ``cls_loss``.

    Args:
        tau: Softmax temperature (> 0).
    """

    def __init__(self, tau: float = 0.07) -> None:
        super().__init__()
        self.tau = _check_tau(tau)

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = _student(student)
        text = _teacher(teacher, "text_embed", "cls").to(s.device)
        logits = s @ text.T / self.tau  # [B, C]
        return {"cls_loss": F.cross_entropy(logits, _labels(batch, "cls").to(s.device))}


@register_loss("mse")
class FeatureMSELoss(nn.Module):
    """Visual-space imitation ``||S(x) - T_img(x)||^2`` on normalised embeddings.

    Squared error summed over the embedding dimension, mean over the batch (so it lies in
    [0, 4]). Key ``mse_loss``.
    """

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = _student(student)
        t = _teacher(teacher, "image_embed", "mse").to(s.device)
        return {"mse_loss": (s - t).pow(2).sum(dim=-1).mean()}


@register_loss("im_cst")
class ImageContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between student and teacher image embeddings over the batch.

    ``logits[i, j] = cos(S(x_i), T_img(x_j)) / tau``; targets are the diagonal;
    loss ``(CE(logits, arange) + CE(logits.T, arange)) / 2``. Key ``im_cst_loss``.

    Args:
        tau: Softmax temperature (> 0).
    """

    def __init__(self, tau: float = 0.07) -> None:
        super().__init__()
        self.tau = _check_tau(tau)

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = _student(student)
        t = _teacher(teacher, "image_embed", "im_cst").to(s.device)
        logits = s @ t.T / self.tau  # [B, B]
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return {"im_cst_loss": loss}


@register_loss("vlprox")
class VLProximityLoss(nn.Module):
    """Vision-language proximity: match the teacher's distribution over its top-k prompts.

    Teacher logits ``T_img @ V.T / tau`` over the vocabulary ``V`` (``vocab_embed``, or
    ``text_embed`` if absent). Per image, take the teacher's top-k indices (k capped at
    |V|); ``P_T`` and ``P_S`` are the softmaxes of the teacher's and the student's
    (``cos(S, V) / tau``) logits restricted to those indices; per-image
    ``KL(P_T || P_S) = sum P_T (log P_T - log P_S)`` (computed with log-softmax).

    With ``filter=True`` only images the teacher classifies correctly count, "correct"
    meaning ``argmax(T_img @ text_embed.T) == label``. Reduction: the sum over kept images
    divided by the full batch size B, i.e. the literal batch mean of
    ``1[teacher correct] * KL`` (not a mean over kept images only), so a batch where the
    teacher is often wrong contributes less. Key ``vlprox_loss``.

    Args:
        k: Number of teacher top prompts (>= 1; capped at the vocabulary size).
        tau: Softmax temperature (> 0), shared by teacher and student.
        filter: Drop images the teacher misclassifies (needs ``batch["label"]``).
    """

    def __init__(self, k: int = 256, tau: float = 0.07, filter: bool = True) -> None:  # noqa: A002
        super().__init__()
        if int(k) != k or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = int(k)
        self.tau = _check_tau(tau)
        self.filter = bool(filter)

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = _student(student)
        t = _teacher(teacher, "image_embed", "vlprox").to(s.device)
        key = "vocab_embed" if teacher.get("vocab_embed") is not None else "text_embed"
        vocab = _teacher(teacher, key, "vlprox").to(s.device)  # [V, D]

        t_logits = t @ vocab.T / self.tau  # [B, V]
        s_logits = s @ vocab.T / self.tau
        k = min(self.k, vocab.shape[0])
        idx = t_logits.topk(k, dim=-1).indices  # [B, k]
        log_pt = F.log_softmax(t_logits.gather(1, idx), dim=-1)
        log_ps = F.log_softmax(s_logits.gather(1, idx), dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # [B]

        if self.filter:
            if "label" not in batch:
                raise ValueError("vlprox with filter=True needs batch['label'] to filter on")
            text = _teacher(teacher, "text_embed", "vlprox").to(s.device)
            correct = (t @ text.T).argmax(dim=-1) == batch["label"].to(s.device)
            kl = kl * correct.to(kl.dtype)
        return {"vlprox_loss": kl.sum() / kl.shape[0]}
