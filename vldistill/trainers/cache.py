"""Teacher-output cache: image embeddings of K replayable views per training image.

The teacher is frozen and usually 10-100x the student's cost, so a sweep computes its
outputs once (MobileCLIP-style dataset reinforcement) and every trial reads them:
``embeds.npy`` holds ``float32 [N_train, K, D]`` for view ``v`` of image ``i`` rendered by
``views.make_views(image, view_seed(i, v))`` -- the student replays exactly that view, so
its target is the teacher's output on the very pixels it sees. Trials open the file
memory-mapped (read-only, shared by the page cache across trial processes).

Content key: the teacher's key (model + weights hash), the training images (relative
paths and sizes), the data resolution, the view recipe and K. A second sweep with the
same teacher and data reuses the entry; anything else gets a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vldistill.trainers.config import AugmentConfig
from vldistill.trainers.data.folder import Splits
from vldistill.trainers.data.views import make_views, view_seed

log = logging.getLogger(__name__)


def cache_key(teacher_key: str, splits: Splits, image_size: int, augment: AugmentConfig,
              views: int) -> str:
    root = splits.info.root
    files = "\n".join(f"{p.relative_to(root)}:{p.stat().st_size}" for p in splits.train_paths)
    data = splits.train_key or hashlib.sha256(files.encode()).hexdigest()
    blob = json.dumps({"v": 1, "teacher": teacher_key, "files": data,
                       "size": image_size, "augment": asdict(augment), "views": views}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TeacherCache:
    """Read-only view of a built cache: ``lookup(indices, view) -> [B, D]`` float tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.embeds = np.load(self.path / "embeds.npy", mmap_mode="r")
        self.meta = json.loads((self.path / "meta.json").read_text())

    @property
    def views(self) -> int:
        return int(self.embeds.shape[1])

    def lookup(self, indices: torch.Tensor, view: int) -> torch.Tensor:
        rows = np.asarray(self.embeds[indices.numpy(), view % self.views])
        return torch.from_numpy(rows.astype(np.float32, copy=True))


_FORKED: dict = {}  # what forked build workers inherit (teacher, images, memmap path...)


@torch.no_grad()
def _encode_job(job: tuple[int, int]) -> tuple[int, int]:
    """One (view, first index) batch of a build, in a forked worker with 1 torch thread."""
    teacher, images, augment, path, batch_size = _FORKED["args"]
    torch.set_num_threads(1)
    v, i = job
    idx = torch.arange(i, min(i + batch_size, len(images)))
    out = np.load(path, mmap_mode="r+")
    out[i:i + len(idx), v] = teacher.encode_images(make_views(images[idx], view_seed(idx, v), augment)).numpy()
    out.flush()
    return job


@torch.no_grad()
def build_cache(teacher, splits: Splits, augment: AugmentConfig, views: int, folder: Path,
                batch_size: int | None = None, progress: bool = True, workers: int | None = None) -> Path:
    """Compute and write the cache (atomically: a partial build is never visible).

    On the CPU the batches are spread over ``workers`` forked processes of one torch thread
    each (default: this process's torch thread count), every one writing its rows of the
    memory-mapped file: one single-thread process per core keeps the cores busier than one
    multi-thread process (measured in docs/benchmarks.md), and the result is the same bytes
    (each row is one teacher forward on one replayed view, whoever computes it).
    """
    n = len(splits.train)
    device = next(teacher.parameters()).device
    path = folder / "embeds.tmp.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, views, teacher.embed_dim))
    # Batches: 256 on a GPU; 32 on the CPU, where a ViT-B/32 ran 13% faster per image than
    # at 96 (activations stay in cache; docs/benchmarks.md). At least ~16 batches, so that
    # no worker idles while another finishes a big last one (864 images in 256-image
    # batches on 2 workers: 512 vs 352 images). Independent of ``workers``: the serial and
    # the parallel build run the same batches, so they write the same bytes.
    batch_size = batch_size or (256 if device.type == "cuda" else 32)
    batch_size = max(8, min(batch_size, math.ceil(n * views / 16)))
    jobs = [(v, i) for v in range(views) for i in range(0, n, batch_size)]
    workers = min(workers or torch.get_num_threads(), len(jobs))
    bar = tqdm(total=len(jobs), desc=f"teacher cache ({n} images x {views} views, {max(workers, 1)} proc)",
               disable=not progress, leave=False)
    ray = sys.modules.get("ray")  # never fork a Ray worker or driver process (sockets, threads)
    if workers > 1 and device.type == "cpu" and not (ray is not None and ray.is_initialized()):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        out.flush()
        del out
        _FORKED["args"] = (teacher, splits.train.images, augment, path, batch_size)
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for _ in pool.map(_encode_job, jobs):
                    bar.update(1)
        finally:
            _FORKED.clear()
    else:
        for v, i in jobs:
            idx = torch.arange(i, min(i + batch_size, n))
            x = make_views(splits.train.images[idx], view_seed(idx, v), augment).to(device)
            out[i:i + len(idx), v] = teacher.encode_images(x).cpu().numpy()
            bar.update(1)
        out.flush()
        del out
    bar.close()
    (folder / "meta.json").write_text(json.dumps({"images": n, "views": views,
                                                  "dim": teacher.embed_dim, "teacher": teacher.key}))
    os.replace(path, folder / "embeds.npy")
    return folder


def ensure_cache(teacher, splits: Splits, image_size: int, augment: AugmentConfig, views: int,
                 root: Path, progress: bool = True) -> TeacherCache:
    """Open the cache for this teacher/data/views, building it first if needed.

    Concurrent callers (trials started together) wait on a file lock; one builds.
    """
    key = cache_key(teacher.key, splits, image_size, augment, views)
    folder = Path(root) / "teacher_cache" / key
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "embeds.npy").is_file():
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "embeds.npy").is_file():
                log.info("building the teacher cache %s", folder)
                build_cache(teacher, splits, augment, views, folder, progress=progress)
            fcntl.flock(lock, fcntl.LOCK_UN)
    return TeacherCache(folder)
