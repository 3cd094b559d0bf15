"""The image store: each split of a dataset decoded once into a packed, memory-mapped file.

Before, every process (each trial, each DDP rank) decoded the whole train and evaluation
sets into private RAM: ~39 GB per process for 130k images at 224 px. Now the sets of a
run are decoded once into the content-addressed cache and every reader maps them::

    <cache>/images/<key>/
        index.json          per set: its file, rows, labels, classes and image paths
        <set>.npy           uint8 [N, 3, H, W] (train, val, novel, shift-<domain>)
        done/<set>-<i>      shard i of that set is decoded and flushed
        meta.json           written last: the store is complete

A reader gets ``torch.from_numpy(np.load(path, mmap_mode="c"))``: the same ``uint8
[N, 3, H, W]`` tensor the trainers always indexed (``images[idx]`` gathers a batch), but
its pages are page cache -- shared by every trial on a node, reclaimable, and not the
process's private memory. ``"c"`` (copy-on-write) keeps an accidental in-place write
private instead of crashing on a read-only mapping.

Builders write shards of :data:`SHARD` images into the preallocated file (disjoint
slices), flush, then mark the shard done; a killed build resumes at the missing shards.
:func:`build_local` decodes in forked processes of this machine (``vldistill train``);
``platform/assets.py`` runs the same :func:`decode_shard` as a Ray Data job over the
cluster's CPUs. A corrupt image is a :class:`~vldistill.trainers.data.folder.DataError`
naming the file, raised by the builder before any trial starts.

Key: the root, every image's relative path and size (as the view cache keys them), the
resolution and the split recipe (fraction, cap per class, seed, eval cap, shift domains).
Memory per reader: O(batch) private; the labels (8 bytes per image) and the paths of the
training set (for the view cache's key) are the only per-image Python state left.
This module never imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vldistill.trainers.data.folder import DatasetInfo, LabelledImages, Splits, decode_image, split_sets
from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)
SHARD = 1024  # images per unit of decoding work
INDEX, META, DONE = "index.json", "meta.json", "done"


@dataclass
class StorePlan:
    """What a store holds and where: one entry per set, rows in file order."""

    folder: str
    key: str
    root: str
    image_size: int
    sets: dict[str, dict] = field(default_factory=dict)  # name -> {paths, labels, classes}

    def shards(self) -> list[tuple[str, int]]:
        return [(name, i) for name, s in self.sets.items() for i in range(math.ceil(len(s["paths"]) / SHARD))]

    def images(self) -> int:
        return sum(len(s["paths"]) for s in self.sets.values())


def _set_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.npy"


def plan_store(info: DatasetInfo, image_size: int, train_fraction: float, images_per_class: int,
               split_seed: int, shift_domains: Sequence[str] | None, max_eval_per_class: int,
               cache_root: Path, load_train: bool = True) -> StorePlan:
    """The sets of a run (``folder.split_sets``: the same split as in-memory loading)."""
    sets = split_sets(info, train_fraction, images_per_class, split_seed, shift_domains, max_eval_per_class,
                      load_train)
    root = info.root
    rel = {name: [str(p.relative_to(root)) for p in ps] for name, (ps, _, _) in sets.items()}
    sizes = hashlib.sha256()
    for name in sorted(rel):
        for r, p in zip(rel[name], sets[name][0]):
            sizes.update(f"{name}/{r}:{p.stat().st_size}\n".encode())
    key = content_key({"v": 1, "root": str(root), "size": image_size, "files": sizes.hexdigest()})
    return StorePlan(folder=str(cache_root / "images" / key), key=key, root=str(root), image_size=image_size,
                     sets={name: {"paths": rel[name], "labels": [int(y) for y in ys], "classes": cls}
                           for name, (_, ys, cls) in sets.items()})


def is_complete(plan: StorePlan) -> bool:
    return (Path(plan.folder) / META).is_file()


def allocate(plan: StorePlan) -> list[tuple[str, int]]:
    """Create the folder, the index and the (sparse) set files; the shards still to decode."""
    folder = Path(plan.folder)
    (folder / DONE).mkdir(parents=True, exist_ok=True)
    s = plan.image_size
    for name, st in plan.sets.items():
        path = _set_file(folder, name)
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
            shape = (len(st["paths"]), 3, s, s)
            if shape[0]:
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
            else:
                np.save(tmp, np.empty(shape, dtype=np.uint8))
            os.replace(tmp, path)
    index = folder / INDEX
    if not index.is_file():
        tmp = folder / f".{INDEX}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"root": plan.root, "image_size": s, "sets": plan.sets}))
        os.replace(tmp, index)
    done = {p.name for p in (folder / DONE).iterdir()}
    return [(n, i) for n, i in plan.shards() if f"{n}-{i}" not in done]


def shard_paths(plan: StorePlan, name: str, shard: int) -> list[str]:
    return plan.sets[name]["paths"][shard * SHARD:(shard + 1) * SHARD]


def decode_shard(folder: str, root: str, image_size: int, name: str, shard: int, chunk: Sequence[str]) -> dict:
    """Decode ``chunk`` (the paths of shard ``shard`` of set ``name``) into rows
    ``[shard*SHARD, ...)`` of its file, flush, and mark the shard done."""
    t0 = time.time()
    out = np.load(_set_file(Path(folder), name), mmap_mode="r+")
    start = shard * SHARD
    for i, p in enumerate(chunk):  # numpy only: safe in forked processes
        out[start + i] = decode_image(Path(root) / p, image_size).transpose(2, 0, 1)
    out.flush()
    del out
    (Path(folder) / DONE / f"{name}-{shard}").write_text("")
    return {"set": name, "shard": shard, "images": len(chunk), "seconds": round(time.time() - t0, 3),
            "host": os.uname().nodename}


def write_meta(plan: StorePlan, records: Sequence[dict], seconds: float, where: dict) -> None:
    meta = {"images": plan.images(), "sets": {n: len(s["paths"]) for n, s in plan.sets.items()},
            "image_size": plan.image_size, "seconds": round(seconds, 2),
            "images_per_s": round(sum(r["images"] for r in records) / max(seconds, 1e-9), 1), **where}
    tmp = Path(plan.folder) / f".{META}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, Path(plan.folder) / META)


def build_local(plan: StorePlan, progress: bool = True, workers: int | None = None) -> None:
    """Decode the missing shards here: forked processes (one per core by default), or in
    this process when inside Ray (no forking in a Ray worker) or for a single shard."""
    from functools import partial

    from vldistill.trainers.forked import forked_map

    t0 = time.time()
    todo = allocate(plan)
    workers = workers or os.cpu_count() or 1
    records = forked_map(partial(_decode, plan), todo, workers, f"image store ({plan.images()} images)", progress)
    write_meta(plan, records, time.time() - t0, {"built_by": "local", "workers": max(min(workers, len(todo)), 1)})


def _decode(plan: StorePlan, job: tuple[str, int]) -> dict:
    return decode_shard(plan.folder, plan.root, plan.image_size, job[0], job[1], shard_paths(plan, *job))


def _mapped(folder: Path, name: str) -> torch.Tensor:
    path = _set_file(folder, name)
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape = np.lib.format.read_array_header_1_0(f)[0]
    if shape[0] == 0:  # nothing to map
        return torch.empty(shape, dtype=torch.uint8)
    arr = np.load(path, mmap_mode="c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(arr)


def open_splits(plan: StorePlan, info: DatasetInfo) -> Splits:
    """The run's :class:`Splits`, every image set memory-mapped from the complete store."""
    folder = Path(plan.folder)

    def labelled(name: str) -> LabelledImages:
        st = plan.sets[name]
        return LabelledImages(_mapped(folder, name), torch.tensor(st["labels"], dtype=torch.long), list(st["classes"]))

    s = plan.image_size
    train = labelled("train") if "train" in plan.sets else LabelledImages(
        torch.empty(0, 3, s, s, dtype=torch.uint8), torch.empty(0, dtype=torch.long), list(info.base))
    train_paths = [info.root / p for p in plan.sets["train"]["paths"]] if "train" in plan.sets else []
    shift = {n[len("shift-"):]: labelled(n) for n in plan.sets if n.startswith("shift-")}
    return Splits(info, train, labelled("val"), labelled("novel"), shift, train_paths)
