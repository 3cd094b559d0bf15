"""Students: any timm image model plus a projection head to the teacher's embedding.

The student owns its preprocessing (resolution and normalisation statistics), separate
from the teacher's: images arrive as floats in ``[0, 1]`` at the data resolution and
:meth:`Student.preprocess` resizes them to ``student.image_size`` and normalises with the
student's mean/std (``student.mean``/``student.std``, else timm's defaults for the model).
"""

from __future__ import annotations

import difflib
import logging

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vldistill.trainers.config import ConfigError, StudentConfig

log = logging.getLogger(__name__)


def check_student_name(name: str) -> None:
    """Raise :class:`ConfigError` with close matches when timm has no model ``name``."""
    known = timm.list_models()
    if name not in known and name.split(".")[0] not in known:
        close = difflib.get_close_matches(name, known, n=8, cutoff=0.6)
        raise ConfigError(f"student.name: unknown timm model {name!r}; close matches: "
                          f"{', '.join(close) or 'none'} (see timm.list_models())")


class Student(nn.Module):
    """timm backbone (classifier removed) -> projection head -> ``embed`` (unnormalised)."""

    def __init__(self, cfg: StudentConfig, embed_dim: int):
        super().__init__()
        check_student_name(cfg.name)
        try:
            self.backbone = timm.create_model(cfg.name, pretrained=cfg.pretrained, num_classes=0,
                                              **cfg.kwargs)
        except TypeError as e:
            raise ConfigError(f"student.kwargs: {cfg.kwargs} rejected by timm model {cfg.name}: {e}") from e
        feat = self.backbone.num_features
        if cfg.head == "linear":
            self.head = nn.Linear(feat, embed_dim)
        else:
            self.head = nn.Sequential(nn.Linear(feat, feat), nn.GELU(), nn.Linear(feat, embed_dim))
        pcfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        mean = cfg.mean or list(pcfg.get("mean", (0.485, 0.456, 0.406)))
        std = cfg.std or list(pcfg.get("std", (0.229, 0.224, 0.225)))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.image_size = cfg.image_size
        self.embed_dim = embed_dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size),
                                   mode="bilinear", antialias=True, align_corners=False)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, 3, H, W]`` floats in ``[0, 1]`` -> ``{"embed": [B, D], "features": [B, F]}``."""
        feats = self.backbone(self.preprocess(images))
        return {"embed": self.head(feats), "features": feats}


def build_student(cfg: StudentConfig, embed_dim: int) -> Student:
    return Student(cfg, embed_dim)
