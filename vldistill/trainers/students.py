"""Students: any timm image model plus a projection head to the teacher's embedding.

The student owns its preprocessing (resolution and normalisation statistics), separate
from the teacher's: images arrive as floats in ``[0, 1]`` at the data resolution and
:meth:`Student.preprocess` resizes them to ``student.image_size`` and normalises with the
student's mean/std (``student.mean``/``student.std``, else timm's defaults for the model).

For the P4 token losses (``attn``, ``token_nce``) a timm ViT student can also return its
per-block hidden states and attention maps: ``student(images, with_tokens=True)`` adds
``"tokens"`` and ``"attn"`` (see ``trainers/tokens.py``); :func:`check_token_student` refuses
a configuration whose weighted token losses the student cannot feed, before training.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vldistill.trainers.config.schema import ConfigError, StudentConfig, TrainConfig
from vldistill.trainers.tokens import TokenTap, check_timm_vit, tap_timm_vit

TOKEN_LOSSES = ("attn", "token_nce")  # losses that read student["tokens"] / student["attn"]

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
        # what forward() returns: timm's pre-logits width (MobileNetV3: a 1,024-wide conv head
        # over 576 features), which is num_features for most models
        feat = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
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
        self.name = cfg.name
        self._tap: TokenTap | None = None  # built by enable_tokens (hooks on the backbone)
        self._tap_what: tuple[str, ...] = ("tokens", "attn")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size),
                                   mode="bilinear", antialias=True, align_corners=False)
        return (images - self.mean) / self.std

    def enable_tokens(self, layers: Sequence[int] | None = None,
                      what: Sequence[str] = ("tokens", "attn")) -> TokenTap:
        """Install the token tap on the backbone's blocks ``layers`` (None: all).

        Args:
            layers: block indices of the timm ViT (negative from the end).
            what: which of ``"tokens"``/``"attn"`` ``forward(..., with_tokens=True)`` returns
                (leave out ``"attn"`` when only ``token_nce`` is weighted: saves its maps).

        Returns:
            The tap (``tap.width`` is the token width ``token_nce`` needs as ``student_dim``).

        Raises:
            ConfigError: naming ``student.name`` if the backbone is not a tappable ViT.
        """
        if self._tap is not None:
            self._tap.remove()
        self._tap = tap_timm_vit(self.backbone, layers, name=self.name, key="student.name")
        self._tap_what = tuple(what)
        return self._tap

    def forward(self, images: torch.Tensor, with_tokens: bool = False) -> dict:
        """``[B, 3, H, W]`` floats in ``[0, 1]`` -> ``{"embed": [B, D], "features": [B, F]}``.

        With ``with_tokens=True`` also ``"tokens"`` (list of ``[B, N, W]``) and ``"attn"``
        (list of ``[B, H, N, N]``) of the tapped blocks, differentiable (the tap is installed
        with all blocks on first use unless :meth:`enable_tokens` chose them).
        """
        if not with_tokens:
            feats = self.backbone(self.preprocess(images))
            return {"embed": self.head(feats), "features": feats}
        if self._tap is None:
            self.enable_tokens()
        with self._tap.record(self._tap_what) as taps:
            feats = self.backbone(self.preprocess(images))
        return {"embed": self.head(feats), "features": feats, **taps}


def build_student(cfg: StudentConfig, embed_dim: int) -> Student:
    return Student(cfg, embed_dim)


def check_token_student(cfg: TrainConfig) -> None:
    """Refuse, before training, weighted token losses that the student cannot feed.

    With ``distill.weights.attn`` or ``distill.weights.token_nce`` > 0 the student must be a
    timm ViT with one CLS token, no register/distillation tokens and a square patch grid
    (checked on a meta-device copy: nothing is allocated). A no-op otherwise.

    Raises:
        ConfigError: naming ``student.name`` and the loss.
    """
    losses = [n for n in TOKEN_LOSSES if cfg.distill.weights.get(n, 0.0) > 0]
    if not losses:
        return
    check_student_name(cfg.student.name)
    try:
        with torch.device("meta"):
            backbone = timm.create_model(cfg.student.name, pretrained=False, num_classes=0,
                                         **cfg.student.kwargs)
    except TypeError as e:
        raise ConfigError(f"student.kwargs: {cfg.student.kwargs} rejected by timm model "
                          f"{cfg.student.name} (student.name): {e}") from e
    try:
        check_timm_vit(backbone, cfg.student.name, key="student.name")
    except ConfigError as e:
        raise ConfigError(f"{e} (needed by distill.weights.{losses[0]} > 0; "
                          f"weighted token losses: {', '.join(losses)})") from e
