"""P1 auxiliary caption loss (Li et al., ICCV 2023): align the student to caption embeddings.

Registered name: ``cap`` (see docs/methods.md, P1, "auxiliary captions"). It lives
apart from ``p1`` because it reads an input the other P1 losses do not: one caption per image.

Inputs read (B batch, D embedding width):

- ``student["embed"]``: Tensor [B, D], NOT normalised; L2-normalised here.
- ``teacher["caption_embed"]``: Tensor [B, D], normalised teacher text embeddings of each
  image's own caption (row i belongs to image i). Not re-normalised.

No labels are read. Computation is in float32; teacher tensors are detached targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vldistill.trainers.losses import register_loss


@register_loss("cap")
class CaptionLoss(nn.Module):
    """Symmetric InfoNCE between student image embeddings and their captions' embeddings.

    ``logits[i, j] = cos(S(x_i), C_j) / tau`` with ``C = teacher["caption_embed"]``; the
    targets are the diagonal (each image's own caption); loss
    ``(CE(logits, arange) + CE(logits.T, arange)) / 2``, each CE a batch mean. Two images of
    the batch with the same caption are treated as negatives of each other (as in CLIP).
    Key ``cap_loss``.

    Args:
        tau: Softmax temperature (> 0).

    Raises:
        ValueError: On ``tau <= 0``; in ``forward``, if ``caption_embed`` is missing or its
            shape differs from the student embedding's.
    """

    def __init__(self, tau: float = 0.07) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.tau = float(tau)

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s = F.normalize(student["embed"].float(), dim=-1)
        if teacher.get("caption_embed") is None:
            raise ValueError(
                f"loss 'cap' needs teacher['caption_embed'] (one caption embedding per image); "
                f"got keys {sorted(teacher)}"
            )
        cap = teacher["caption_embed"].detach().float().to(s.device)
        if cap.shape != s.shape:
            raise ValueError(
                f"loss 'cap': caption_embed has shape {tuple(cap.shape)}, expected "
                f"{tuple(s.shape)} (one row per image, same width as the student embedding)"
            )
        logits = s @ cap.T / self.tau  # [B, B]
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return {"cap_loss": loss}

    @staticmethod
    def example_inputs(b: int = 4, d: int = 8, seed: int = 0) -> tuple[dict, dict, dict]:
        """Random ``(student, teacher, batch)`` this loss accepts; ``embed`` requires grad."""
        g = torch.Generator().manual_seed(seed)
        student = {"embed": torch.randn(b, d, generator=g).requires_grad_(True)}
        teacher = {"caption_embed": F.normalize(torch.randn(b, d, generator=g), dim=-1)}
        return student, teacher, {}
