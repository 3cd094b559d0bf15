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
import os
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


@torch.no_grad()
def build_cache(teacher, splits: Splits, augment: AugmentConfig, views: int, folder: Path,
                batch_size: int = 256, progress: bool = True) -> Path:
    """Compute and write the cache (atomically: a partial build is never visible)."""
    n = len(splits.train)
    device = next(teacher.parameters()).device
    out = np.lib.format.open_memmap(folder / "embeds.tmp.npy", mode="w+", dtype=np.float32,
                                    shape=(n, views, teacher.embed_dim))
    jobs = [(v, i) for v in range(views) for i in range(0, n, batch_size)]
    for v, i in tqdm(jobs, desc=f"teacher cache ({n} images x {views} views)", disable=not progress,
                     leave=False):
        idx = torch.arange(i, min(i + batch_size, n))
        x = make_views(splits.train.images[idx], view_seed(idx, v), augment).to(device)
        out[i:i + len(idx), v] = teacher.encode_images(x).cpu().numpy()
    out.flush()
    del out
    (folder / "meta.json").write_text(json.dumps({"images": n, "views": views,
                                                  "dim": teacher.embed_dim, "teacher": teacher.key}))
    os.replace(folder / "embeds.tmp.npy", folder / "embeds.npy")
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
