"""Class prompts and prompt vocabularies -> teacher text embeddings.

Class names come from the dataset (``classes.json`` ``names``, else the folder name with
``_`` -> space) and are put into ``distill.text.template`` (P1: ``"a photo of a {}."``).
The vocabulary for ``vlprox`` is the base-class prompts plus the dataset's
``vocabulary.txt`` (generic concept prompts that name no novel class), when
``distill.text.vocabulary`` is true. Attribute sources (templates, descriptions,
descriptors) extend this module in the methods issue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vldistill.trainers.config import TextConfig
from vldistill.trainers.data.folder import DatasetInfo, read_lines


@dataclass
class TextTargets:
    """Normalised teacher text embeddings used by losses and evaluation."""

    base: torch.Tensor  # [C_base, D], row i = info.base[i]
    novel: torch.Tensor  # [C_novel, D], row i = info.novel[i]
    vocab: torch.Tensor  # [V, D], base prompts first


def build_text_targets(teacher, info: DatasetInfo, cfg: TextConfig) -> TextTargets:
    base = teacher.class_embeddings([info.name(c) for c in info.base], [cfg.template])
    novel = teacher.class_embeddings([info.name(c) for c in info.novel], [cfg.template])
    extra = read_lines(info.root / "vocabulary.txt") if cfg.vocabulary else []
    vocab = torch.cat([base, teacher.encode_text(extra)]) if extra else base
    return TextTargets(base, novel, vocab)
