"""Class prompts, attribute sources and sentence banks -> teacher text embeddings.

Class names come from the dataset (``classes.json`` ``names``, else the folder name with
``_`` -> space). *Attribute sources* decide which text stands for a class. A source is a
small function registered by name (``@register_source``, like ``register_loss``) that maps
the class folders to one **list of prompts per class**; the class embedding is then the
normalised mean of the normalised teacher embeddings of its prompts (CLIP's prompt
ensemble; for Menon & Vondrick's descriptors, the average of cosine scores up to a
per-class scale, normalised because every loss treats text targets as unit vectors).
Shipped sources (``distill.text.source``):

* ``classname``: ``distill.text.template`` with the class name (P1's ``l(y)``; default);
* ``templates``: one prompt per line of the dataset's ``templates.txt`` (or
  ``distill.text.templates_file``), each with ``{}`` where the class name goes;
* ``descriptions`` (P1's LLM semantics): ``"<template with class>. <sentence>"``; with
  several sentences per class, one prompt per sentence and their embeddings averaged
  (exactly P1's single prompt when a class has one sentence; no sentence is privileged,
  and joining them would overflow short text encoders, e.g. the embedded teacher's 20
  tokens);
* ``descriptors`` (Menon & Vondrick): ``"<class>, which has <sentence>"`` per sentence,
  averaged.

Sentences come from ``distill.text.attributes``: ``full`` / ``partial`` / ``noisy`` name
the dataset's ``attributes.json`` / ``attributes_partial.json`` / ``attributes_noisy.json``;
anything else is a path to a JSON file ``{class folder: [sentence, ...]}`` (relative
paths are relative to the data root). The same source builds the base targets used in
training and the base/novel targets used in evaluation.

The vocabulary for ``vlprox`` is the base-class targets plus the dataset's
``vocabulary.txt`` (generic concept prompts that name no novel class), when
``distill.text.vocabulary`` is true. Caption embeddings (``cap``) and the sentence bank
(``vld``) are also built here, once per trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vldistill.trainers.config.schema import ConfigError, TextConfig
from vldistill.trainers.data.folder import DataError, DatasetInfo, read_lines
from vldistill.trainers.strict_files import DuplicateKeyError, read_json
from vldistill.trainers.keys import content_key


@dataclass
class TextTargets:
    """Normalised teacher text embeddings used by losses and evaluation."""

    base: torch.Tensor  # [C_base, D], row i = info.base[i]
    novel: torch.Tensor  # [C_novel, D], row i = info.novel[i]
    vocab: torch.Tensor  # [V, D], base prompts first
    key: str = ""  # content hash of every prompt used (caches of teacher metrics)
    captions: Optional[torch.Tensor] = None  # [N_train, D], row i = caption of training image i
    sentences: Optional[torch.Tensor] = None  # [M, D], the unpaired sentence bank (vld)


Source = Callable[[DatasetInfo, Sequence[str], TextConfig], list[list[str]]]
TEXT_SOURCES: dict[str, Source] = {}
"""Attribute sources by name: ``fn(info, class_folders, cfg) -> prompts per class``."""

ATTRIBUTE_FILES = {"full": "attributes.json", "partial": "attributes_partial.json",
                   "noisy": "attributes_noisy.json"}


def register_source(name: str) -> Callable[[Source], Source]:
    """Function decorator registering an attribute source under ``name`` (must be unused)."""

    def decorator(fn: Source) -> Source:
        if name in TEXT_SOURCES and TEXT_SOURCES[name] is not fn:
            raise ValueError(f"text source {name!r} is already registered")
        TEXT_SOURCES[name] = fn
        return fn

    return decorator


def check_source(name: str) -> Source:
    """The registered source ``name``, or :class:`ConfigError` listing the known ones."""
    if name not in TEXT_SOURCES:
        raise ConfigError(f"distill.text.source: unknown attribute source {name!r}; "
                          f"known: {', '.join(sorted(TEXT_SOURCES))}")
    return TEXT_SOURCES[name]


def data_path(root: Path, value: str) -> Path:
    """A user-given file: ``~`` expanded; relative paths are relative to the data root."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(root) / p


def _sentence(s: str) -> str:
    s = s.strip()
    return s if s.endswith((".", "!", "?")) else s + "."


@register_source("classname")
def classname_prompts(info: DatasetInfo, classes: Sequence[str], cfg: TextConfig) -> list[list[str]]:
    return [[cfg.template.format(info.name(c))] for c in classes]


def read_templates(info: DatasetInfo, cfg: TextConfig) -> list[str]:
    """Templates of ``distill.text.templates_file`` or ``<root>/templates.txt``, checked."""
    path = data_path(info.root, cfg.templates_file) if cfg.templates_file else info.root / "templates.txt"
    if not path.is_file():
        key = "distill.text.templates_file" if cfg.templates_file else "distill.text.source=templates"
        raise DataError(f"{key}: templates file not found: {path}")
    lines = read_lines(path)
    if not lines:
        raise DataError(f"{path}: no templates (one per line, '{{}}' where the class name goes)")
    bad = [t for t in lines if "{}" not in t]
    if bad:
        raise DataError(f"{path}: template {bad[0]!r} has no '{{}}' for the class name")
    return lines


@register_source("templates")
def template_prompts(info: DatasetInfo, classes: Sequence[str], cfg: TextConfig) -> list[list[str]]:
    templates = read_templates(info, cfg)
    return [[t.format(info.name(c)) for t in templates] for c in classes]


def _json_object(path: Path, missing: str, shape: str) -> dict:
    """The JSON object in ``path``; a missing file, bad JSON or another type is a DataError."""
    if not path.is_file():
        raise DataError(missing)
    try:
        data = read_json(path)
    except DuplicateKeyError as e:
        raise DataError(str(e)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {shape}")
    return data


def read_attributes(info: DatasetInfo, attributes: str, classes: Sequence[str]) -> dict[str, list[str]]:
    """``{class folder: [sentence, ...]}`` of ``distill.text.attributes`` for ``classes``.

    Raises:
        DataError: the file is missing or not JSON, not a mapping to lists of non-empty
            strings, or has no sentence for one of ``classes`` (named).
    """
    name = ATTRIBUTE_FILES.get(attributes)
    path = info.root / name if name else data_path(info.root, attributes)
    data = _json_object(path, f"distill.text.attributes={attributes!r}: file not found: {path}",
                        "{class folder: [sentence, ...]}")
    out = {}
    for c in classes:
        sents = data.get(c)
        if not sents:
            raise DataError(f"{path}: no sentences for class {c!r} "
                            f"(distill.text.attributes={attributes!r})")
        if not isinstance(sents, list) or not all(isinstance(s, str) and s.strip() for s in sents):
            raise DataError(f"{path}: class {c!r} must map to a list of non-empty strings, got {sents!r}")
        out[c] = [s.strip() for s in sents]
    return out


@register_source("descriptions")
def description_prompts(info: DatasetInfo, classes: Sequence[str], cfg: TextConfig) -> list[list[str]]:
    attrs = read_attributes(info, cfg.attributes, classes)
    return [[f"{cfg.template.format(info.name(c))} {_sentence(s)}" for s in attrs[c]] for c in classes]


@register_source("descriptors")
def descriptor_prompts(info: DatasetInfo, classes: Sequence[str], cfg: TextConfig) -> list[list[str]]:
    attrs = read_attributes(info, cfg.attributes, classes)
    return [[f"{info.name(c)}, which has {s.rstrip('.')}" for s in attrs[c]] for c in classes]


@torch.no_grad()
def embed_prompt_sets(teacher, prompts: list[list[str]]) -> torch.Tensor:
    """Row c: normalised mean of the normalised teacher embeddings of ``prompts[c]``."""
    flat = [p for ps in prompts for p in ps]
    emb = teacher.encode_text(flat).float().cpu()
    owner = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor([len(p) for p in prompts]))
    sums = torch.zeros(len(prompts), emb.shape[1]).index_add_(0, owner, emb)
    return F.normalize(sums, dim=-1)


def class_prompts(info: DatasetInfo, classes: Sequence[str], cfg: TextConfig) -> list[list[str]]:
    """The prompts of the configured source for ``classes`` (checked non-empty)."""
    prompts = check_source(cfg.source)(info, classes, cfg)
    empty = [c for c, p in zip(classes, prompts) if not p]
    if len(prompts) != len(classes) or empty:
        raise DataError(f"distill.text.source={cfg.source!r} gave no prompt for classes {empty}")
    return prompts


def build_text_targets(teacher, info: DatasetInfo, cfg: TextConfig, cache: Path | None = None) -> TextTargets:
    """Base / novel class embeddings of the configured source and the vlprox vocabulary.

    With ``cache`` (the vldistill cache root) the embeddings are stored under
    ``cache/text/<hash of the teacher key and every prompt>.pt`` and read back by later
    trials: a trial's process need not run the teacher's text tower (seconds at 1 thread for
    a ViT-B teacher, per actor).
    """
    import os

    base_p = class_prompts(info, info.base, cfg)
    novel_p = class_prompts(info, info.novel, cfg)
    extra = read_lines(info.root / "vocabulary.txt") if cfg.vocabulary else []
    key = content_key(json.dumps([base_p, novel_p, extra]))
    path = None
    if cache is not None:
        blob = json.dumps({"teacher": teacher.key, "prompts": key, "v": 1}).encode()
        path = Path(cache) / "text" / (content_key(blob) + ".pt")
        if path.is_file():
            t = torch.load(path, map_location="cpu", weights_only=True)
            return TextTargets(t["base"], t["novel"], t["vocab"], key)
    base = embed_prompt_sets(teacher, base_p)
    novel = embed_prompt_sets(teacher, novel_p)
    vocab = torch.cat([base, teacher.encode_text(extra).float().cpu()]) if extra else base
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"base": base, "novel": novel, "vocab": vocab}, tmp)
        os.replace(tmp, path)
    return TextTargets(base, novel, vocab, key)


# ----- captions (cap) and the unpaired sentence bank (vld) ---------------------------------


def read_captions(root: Path, paths: Sequence[Path], file: str = "captions.json") -> list[str]:
    """The caption of every image of ``paths`` from ``root/<file>`` (keyed by relative path).

    Raises:
        DataError: naming the file when it is missing or malformed, or the first image
            without a caption.
    """
    path = Path(root) / file
    data = _json_object(path, f"distill.weights.cap > 0 needs image captions: file not found: {path} "
                              "(JSON {\"<domain>/<class>/<image>\": \"caption\"})",
                        "{relative image path: caption}")
    out = []
    for p in paths:
        rel = Path(p).relative_to(root).as_posix()
        cap = data.get(rel)
        if not isinstance(cap, str) or not cap.strip():
            raise DataError(f"{path}: no caption for training image {rel!r}")
        out.append(cap)
    return out


def caption_embeddings(teacher, root: Path, paths: Sequence[Path]) -> torch.Tensor:
    """``[N, D]`` normalised teacher embeddings of the captions of ``paths`` (in order)."""
    return teacher.encode_text(read_captions(root, paths)).float().cpu()


def sentence_bank(root: Path, sentences_file: str | None, bank_size: int, bank_seed: int,
                  world=None) -> list[str]:
    """The unpaired sentences of P2's ``vld``.

    ``sentences_file`` (relative to the data root) if given; else the embedded world's
    generated bank (``World.sentence_bank(bank_size, bank_seed)``) when ``world`` is given;
    else ``<root>/sentences.txt``. A file with more than ``bank_size`` (> 0) sentences is
    subsampled with a seeded permutation (``bank_seed``), kept in file order.

    Raises:
        DataError: naming the sentences file when it is missing or empty.
    """
    if sentences_file is None and world is not None:
        return world.sentence_bank(bank_size, bank_seed)
    path = data_path(root, sentences_file) if sentences_file else Path(root) / "sentences.txt"
    key = "distill.vld.sentences_file" if sentences_file else "distill.weights.vld > 0"
    if not path.is_file():
        raise DataError(f"{key}: sentence bank not found: {path} (one unpaired sentence per line)")
    lines = read_lines(path)
    if not lines:
        raise DataError(f"{path}: no sentences (one unpaired sentence per line)")
    if 0 < bank_size < len(lines):
        keep = np.sort(np.random.default_rng([bank_seed, 7]).permutation(len(lines))[:bank_size])
        lines = [lines[i] for i in keep]
    return lines
