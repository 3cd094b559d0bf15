"""Image-folder datasets with base / novel class lists and domain folders.

The one loader for real data *and* the embedded world (which is written in this layout)::

    root/
      classes.json          {"base": [...], "novel": [...],
                             "novel_kinds": {"compositional": [...], ...},   (optional)
                             "names": {folder: "display name"}}              (optional)
      attributes.json       class folder -> list of sentences                (optional)
      attributes_*.json     other attribute sources (distill.text.attributes) (optional)
      templates.txt         prompt templates with '{}' (source=templates)    (optional)
      vocabulary.txt        extra prompts for vlprox, one per line           (optional)
      captions.json         "<domain>/<class>/<image>" -> caption (cap)      (optional)
      sentences.txt         unpaired sentences, one per line (P2 vld)        (optional)
      <domain>/<class>/*.png|jpg|jpeg|bmp|webp

Images are decoded once, resized to ``data.image_size`` and held in memory as ``uint8``
(``[N, 3, H, W]``): datasets of this platform's demo and of P1's mid-size setting fit;
streaming very large datasets is not supported yet. Every problem with the files raises
:class:`DataError` naming the file or class.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from vldistill.trainers.strict_files import DuplicateKeyError, read_json

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(ValueError):
    """A dataset file or class is missing, empty, inconsistent or unreadable."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset root declares: classes, splits, domains and text files."""

    root: Path
    base: list[str]
    novel: list[str]
    novel_kinds: dict[str, list[str]]
    names: dict[str, str]
    domains: list[str]
    train_domain: str
    attributes: dict = field(default_factory=dict)  # class -> {attr: value}, optional

    def name(self, folder: str) -> str:
        return self.names.get(folder, folder.replace("_", " "))


def _read_json(path: Path) -> dict:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise DataError(f"missing file: {path}") from None
    except DuplicateKeyError as e:
        raise DataError(str(e)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_dataset(root: str | Path, train_domain: str) -> DatasetInfo:
    """Read and check ``classes.json`` against the folders of ``root``.

    Raises:
        DataError: missing/invalid ``classes.json``, overlapping base and novel lists, a
            listed class with no folder or no image in the training domain.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.root: not a directory: {root}")
    spec = _read_json(root / "classes.json")
    for key in ("base", "novel"):
        if not isinstance(spec.get(key), list) or not spec[key]:
            raise DataError(f"{root / 'classes.json'}: '{key}' must be a non-empty list of class folders")
    base, novel = list(spec["base"]), list(spec["novel"])
    both = sorted(set(base) & set(novel))
    if both:
        raise DataError(f"{root / 'classes.json'}: classes in both base and novel: {both}")
    domains = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if train_domain not in domains:
        raise DataError(f"data.train_domain={train_domain!r}: no folder {root / train_domain} "
                        f"(domain folders: {domains})")
    folders = {p.name for p in (root / train_domain).iterdir() if p.is_dir()}
    for cls in base + novel:
        if cls not in folders:
            raise DataError(f"class {cls!r} is listed in {root / 'classes.json'} but "
                            f"{root / train_domain / cls} does not exist")
        if not list_images(root / train_domain / cls):
            raise DataError(f"class folder {root / train_domain / cls} has no images")
    kinds = spec.get("novel_kinds") or {}
    for kind, members in kinds.items():
        extra = sorted(set(members) - set(novel))
        if extra:
            raise DataError(f"{root / 'classes.json'}: novel_kinds.{kind} lists non-novel classes {extra}")
    classes = base + novel
    attributes = spec.get("attributes") or {}
    if attributes:
        missing = [c for c in classes if not isinstance(attributes.get(c), dict)]
        if missing:
            raise DataError(f"{root / 'classes.json'}: attributes has no entry for classes {missing}; "
                            "every base and novel class needs {attribute: value}")
        names = sorted(attributes[classes[0]])
        for c in classes:
            if sorted(attributes[c]) != names:
                raise DataError(f"{root / 'classes.json'}: attributes of {c!r} are {sorted(attributes[c])}, "
                                f"expected {names}")
    if (root / "attributes.json").is_file():
        sentences = _read_json(root / "attributes.json")
        missing = [c for c in classes if not sentences.get(c)] if isinstance(sentences, dict) else classes
        if missing:
            raise DataError(f"{root / 'attributes.json'}: no sentences for classes {missing}")
    return DatasetInfo(root, base, novel, {k: list(v) for k, v in kinds.items()},
                       dict(spec.get("names") or {}), domains, train_domain,
                       dict(spec.get("attributes") or {}))


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_images(paths: Sequence[Path], size: int, progress: bool = False,
                desc: str = "loading images") -> torch.Tensor:
    """Decode, convert to RGB and resize (bicubic) to ``size`` x ``size``.

    Returns:
        ``uint8 [N, 3, size, size]``.

    Raises:
        DataError: naming the first file that cannot be decoded.
    """
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, disable=not progress, leave=False)):
        out[i] = decode_image(p, size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as ``uint8 [size, size, 3]`` (RGB, bicubic resize); numpy only, so that
    forked decoders never touch torch's thread pool (an OpenMP pool inherited across
    ``fork`` deadlocks). Raises :class:`DataError` naming the file."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


@dataclass
class LabelledImages:
    """Images (``uint8 [N, 3, H, W]``) with labels indexing a class list."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class UnlabelledImages:
    """Images only (``uint8 [N, 3, H, W]``): the training set of label-free runs (P2).

    Built from a :class:`LabelledImages` by :meth:`of`, which keeps the image tensor and
    nothing else, so no code path of a label-free trial can reach a training label.
    """

    images: torch.Tensor

    @classmethod
    def of(cls, data: LabelledImages) -> "UnlabelledImages":
        return cls(data.images)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Splits:
    """Everything a trial trains and evaluates on."""

    info: DatasetInfo
    train: LabelledImages  # base classes, training domain, <= images_per_class each
    val_base: LabelledImages  # held-out base images, training domain
    novel: LabelledImages  # every novel image, training domain
    shift: dict[str, LabelledImages]  # base classes in each shifted domain
    train_paths: list[Path] = field(default_factory=list)
    # identity of a training set that is not files (P3's synthetic set): its cache key
    train_key: str = ""


def _cap(paths: list[Path], n: int) -> list[Path]:
    return paths if n <= 0 else paths[:n]


def split_paths(info: DatasetInfo, train_fraction: float, images_per_class: int, split_seed: int,
                max_eval_per_class: int = 0) -> tuple[list[Path], list[int], list[Path], list[int]]:
    """Train and val image paths and labels of the base classes (no image is opened): a
    seeded shuffle per class, ``split_seed``, then ``train_fraction`` of it for training."""
    train_p, train_y, val_p, val_y = [], [], [], []
    for k, cls in enumerate(info.base):
        paths = list_images(info.root / info.train_domain / cls)
        order = np.random.default_rng([split_seed, k]).permutation(len(paths))
        paths = [paths[i] for i in order]
        n_train = int(round(len(paths) * train_fraction))
        if n_train < 1 or n_train >= len(paths):
            raise DataError(f"class folder {info.root / info.train_domain / cls} has {len(paths)} images: "
                            "too few to split into train and val")
        tp = _cap(paths[:n_train], images_per_class)
        vp = _cap(paths[n_train:], max_eval_per_class)
        train_p += tp
        train_y += [k] * len(tp)
        val_p += vp
        val_y += [k] * len(vp)
    return train_p, train_y, val_p, val_y


def split_sets(info: DatasetInfo, train_fraction: float, images_per_class: int, split_seed: int,
               shift_domains: Sequence[str] | None, max_eval_per_class: int = 0,
               load_train: bool = True) -> dict[str, tuple[list[Path], list[int], list[str]]]:
    """Every image set of a run, as ``name -> (paths, labels, classes)`` (no image opened):
    ``train`` (unless ``load_train`` is False), ``val``, ``novel``, ``shift-<domain>``.

    The one place the split recipe lives: :func:`build_splits` decodes these sets into
    memory, the image store (``store.py``) into memory-mapped files.
    """
    train_domain = info.train_domain
    domains = list(shift_domains) if shift_domains is not None else [
        d for d in info.domains if d != train_domain]
    for d in domains:
        if d not in info.domains:
            raise DataError(f"data.shift_domains: no folder {info.root / d} (domain folders: {info.domains})")
    train_p, train_y, val_p, val_y = split_paths(info, train_fraction, images_per_class, split_seed,
                                                 max_eval_per_class)
    sets = {"train": (train_p, train_y, list(info.base))} if load_train else {}
    sets["val"] = (val_p, val_y, list(info.base))
    novel_p, novel_y = [], []
    for k, cls in enumerate(info.novel):
        ps = _cap(list_images(info.root / train_domain / cls), max_eval_per_class)
        novel_p += ps
        novel_y += [k] * len(ps)
    sets["novel"] = (novel_p, novel_y, list(info.novel))
    for d in domains:
        ps, ys = [], []
        for k, cls in enumerate(info.base):
            cp = _cap(list_images(info.root / d / cls), max_eval_per_class)
            if not cp:
                raise DataError(f"shift domain {d!r}: class folder {info.root / d / cls} is missing or empty")
            ps += cp
            ys += [k] * len(cp)
        sets[f"shift-{d}"] = (ps, ys, list(info.base))
    return sets


def build_splits(info: DatasetInfo, image_size: int, train_fraction: float,
                 images_per_class: int, split_seed: int, shift_domains: Sequence[str] | None,
                 max_eval_per_class: int = 0, progress: bool = True, load_train: bool = True) -> Splits:
    """Split base-class images of the training domain into train/val and load every set
    into memory (the sweep and ``vldistill train`` map them from the image store instead).

    The split is a seeded shuffle per class (``split_seed``), independent of the trial seed,
    so every trial of a sweep sees the same held-out images. ``load_train=False`` (P3's
    data-free training) opens no training image: ``train`` is empty and ``train_paths`` too.
    """
    sets = split_sets(info, train_fraction, images_per_class, split_seed, shift_domains,
                      max_eval_per_class, load_train)

    def load(name: str) -> LabelledImages:
        paths, labels, classes = sets[name]
        return LabelledImages(load_images(paths, image_size, progress, f"loading {name}"),
                              torch.tensor(labels, dtype=torch.long), list(classes))

    shift = {n[len("shift-"):]: load(n) for n in sets if n.startswith("shift-")}
    train = load("train") if sets.get("train", ([],))[0] else LabelledImages(
        torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), torch.empty(0, dtype=torch.long),
        list(info.base))
    return Splits(info, train, load("val"), load("novel"), shift, sets["train"][0] if load_train else [])


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file, or [] when it does not exist."""
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
