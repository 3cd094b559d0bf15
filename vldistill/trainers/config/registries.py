"""Registry and compatibility rules of a whole config: cheap, nothing built or loaded.

``values.py`` checks each value (ranges, the world's recipe); this module checks what needs
the registries and the relations between values: loss names and which losses the loop
feeds, label-free training against losses that read labels, the text source, timm student
and open_clip teacher names, token losses against a ViT student and teacher (read from the
model configs, a meta-device model at most), captions against synthetic images, and the
files a config points at. ``check.check`` runs :func:`registry_rules` after the value rules,
for one trial and for every point of a search space; the results of the slow leaf checks
are memoised, so checking thousands of points costs milliseconds each.

No Ray. torch, timm and open_clip (and the trainers' modules that hold the registries) are
imported inside the rules that need them, so importing the config package stays light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from vldistill.trainers.config.schema import ConfigError, TrainConfig

# Losses whose inputs the loop provides (student embed, teacher image embed, class and
# vocabulary text, captions, the sentence bank, ViT token grids and attention maps).
FED_LOSSES = frozenset({"cls", "mse", "im_cst", "vlprox", "cap", "vld", "pvld", "udist", "attn",
                        "token_nce"})


def label_losses(cfg: TrainConfig) -> list[str]:
    """Weighted losses that read ``batch["label"]`` (cls; vlprox with its teacher filter)."""
    d = cfg.distill
    reads = {"cls": True, "vlprox": d.vlprox.filter}
    return [n for n, w in d.weights.items() if w > 0 and reads.get(n, False)]


_outcomes: dict[str, str | None] = {}  # a leaf check's inputs (JSON) -> its error, or None


def _once(inputs: list[Any], check: Callable[[], None]) -> None:
    """Run ``check()`` once per distinct ``inputs`` (what it reads); re-raise its error."""
    key = json.dumps(inputs, sort_keys=True, default=str)
    if key not in _outcomes:
        try:
            check()
            _outcomes[key] = None
        except ConfigError as e:
            _outcomes[key] = str(e)
    if _outcomes[key] is not None:
        raise ConfigError(_outcomes[key])


def _loss_names(names: list[str], weighted: list[str]) -> None:
    from vldistill.trainers.losses import LOSSES

    for name in names:
        if name not in LOSSES:
            raise ConfigError(f"distill.weights.{name}: unknown loss; known: {', '.join(sorted(LOSSES))}")
    for name in weighted:
        if name not in FED_LOSSES:
            raise ConfigError(f"distill.weights.{name}: the loss is registered but this training loop "
                              f"does not feed its inputs yet; usable now: {', '.join(sorted(FED_LOSSES))}")


def _teacher_name(name: str) -> None:
    import open_clip

    import vldistill.trainers.teachers  # noqa: F401  (registers the shipped model configs)

    if name != "embedded" and name not in open_clip.list_models():
        raise ConfigError(f"teacher.name: unknown open_clip model {name!r}; use 'embedded' or one of "
                          "open_clip.list_models()")


def _token_models(cfg: TrainConfig, weighted: list[str]) -> None:
    """Token losses need a ViT student (meta-device copy) and a ViT teacher (model config)."""
    from dataclasses import asdict

    from vldistill.trainers.students import check_token_student
    from vldistill.trainers.teachers import check_token_teacher

    _once(["token student", cfg.student.name, cfg.student.kwargs, weighted],
          lambda: check_token_student(cfg))
    _once(["token teacher", asdict(cfg.teacher)], lambda: check_token_teacher(cfg.teacher))
    if cfg.compile:  # the taps are Python hooks toggled per step; dynamo would guard on them
        raise ConfigError("compile: torch.compile is not supported with distill.weights.attn/token_nce > 0")


def registry_rules(cfg: TrainConfig) -> None:
    """Names and files the config points at exist, and its losses fit its data and models.

    Raises:
        ConfigError: naming the key and the rule (the first problem found).
    """
    from vldistill.trainers.students import TOKEN_LOSSES, check_student_name
    from vldistill.trainers.text import check_source

    w = cfg.distill.weights
    weighted = [n for n, v in w.items() if v > 0]
    _once(["losses", list(w), weighted], lambda: _loss_names(list(w), weighted))
    if not cfg.distill.labels and label_losses(cfg):
        bad = label_losses(cfg)
        raise ConfigError(f"distill.labels=false (label-free training) but distill.weights.{bad[0]} > 0 "
                          f"and loss {bad[0]!r} reads labels"
                          + (" (vlprox filters on the label: set distill.vlprox.filter=false)"
                             if bad[0] == "vlprox" else "") + "; set its weight to 0")
    _once(["text source", cfg.distill.text.source], lambda: check_source(cfg.distill.text.source))
    _once(["student", cfg.student.name], lambda: check_student_name(cfg.student.name))
    weighted_tokens = [n for n in TOKEN_LOSSES if w.get(n, 0.0) > 0]
    if weighted_tokens:
        _token_models(cfg, weighted_tokens)
    if cfg.data.train_source == "synthetic" and w.get("cap", 0) > 0:
        raise ConfigError("distill.weights.cap > 0 needs a caption per training image; synthetic "
                          "training images (data.train_source=synthetic) have none")
    _once(["teacher", cfg.teacher.name], lambda: _teacher_name(cfg.teacher.name))
    _check_files(cfg)


def _check_files(cfg: TrainConfig) -> None:
    from vldistill.trainers.teachers import _CKPT_SUFFIXES  # one list: what the loader reads as a file

    t = cfg.teacher
    if t.pretrained and (os.sep in t.pretrained or t.pretrained.endswith(_CKPT_SUFFIXES)):
        if not Path(t.pretrained).expanduser().is_file():
            raise ConfigError(f"teacher.pretrained: checkpoint file not found: {t.pretrained}")
    if cfg.data.source == "folder" and not Path(cfg.data.root).expanduser().is_dir():
        raise ConfigError(f"data.root: not a directory: {cfg.data.root}")
    if cfg.data.source == "folder":  # the world writes both; a folder must bring them
        root, w = Path(cfg.data.root).expanduser(), cfg.distill.weights
        if w.get("cap", 0) > 0 and not (root / "captions.json").is_file():
            raise ConfigError(f"distill.weights.cap > 0 needs image captions: file not found: "
                              f"{root / 'captions.json'}")
        if w.get("vld", 0) > 0 and cfg.distill.vld.sentences_file is None \
                and not (root / "sentences.txt").is_file():
            raise ConfigError(f"distill.weights.vld > 0 needs unpaired sentences: file not found: "
                              f"{root / 'sentences.txt'} (or set distill.vld.sentences_file)")
