"""Teacher-output cache ("view cache"): image embeddings of K replayable views per image.

The teacher is frozen and usually 10-100x the student's cost, so a sweep computes its
outputs once (MobileCLIP-style dataset reinforcement) and every trial reads them: the
target of view ``v`` of training image ``i`` is the teacher's embedding of
``views.make_views(image, view_seed(i, v))`` -- the student replays exactly that view, so
its target is the teacher's output on the very pixels it sees.

Layout of an entry ``<cache>/teacher_cache/<key>/``::

    manifest.txt        the training images, one path per line, relative to the data root
                        (or ``synthetic:<file>`` for P3's generated sets)
    shards/s<i>.npy     float16 [S, K, D]: views 0..K-1 of images [i*S, (i+1)*S)
    builds/<host>-<pid>.jsonl   one line per shard that builder process finished
    meta.json           written last: its presence means the entry is complete

Shards are the unit of work, of resume and of placement: whoever builds the cache (the
Ray Data pipeline of ``platform/assets.py`` on the teacher's GPUs, or
:func:`build_local` in one process) computes only the shards that are missing, each
written to a temporary name and renamed, so a killed build resumes at the first missing
shard and no finished one is recomputed. Trials open the shards memory-mapped (read-only,
shared through the page cache by every trial on a node). fp16 halves the disk and page
cache of float32; a target differs from the teacher's float32 output by at most fp16
rounding (~5e-4 relative), far below the views' own variation.

Content key (unchanged since the first version): the teacher's key (model + weights hash),
the training images (relative paths and sizes), the data resolution, the view recipe and
K. An entry written by the first version (``embeds.npy``, float32) is still read.

This module is the per-shard work and the reader; it never imports Ray.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vldistill.trainers.config import AugmentConfig
from vldistill.trainers.data.folder import Splits, load_images
from vldistill.trainers.data.views import make_views, view_seed
from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)
MANIFEST, META, SHARDS, BUILDS = "manifest.txt", "meta.json", "shards", "builds"
SYNTHETIC = "synthetic:"  # manifest line of a training set that is a tensor file, not images


def cache_key(teacher_key: str, splits: Splits, image_size: int, augment: AugmentConfig,
              views: int) -> str:
    root = splits.info.root
    files = "\n".join(f"{p.relative_to(root)}:{p.stat().st_size}" for p in splits.train_paths)
    data = splits.train_key or content_key(files, 64)
    blob = json.dumps({"v": 1, "teacher": teacher_key, "files": data,
                       "size": image_size, "augment": asdict(augment), "views": views}, sort_keys=True)
    return content_key(blob)


def shard_images(n: int) -> int:
    """Images per shard: at least ~16 shards (no worker idles on a big last one; a small
    demo set still spreads over every actor), at most 4,096 images (a ViT-L/14 shard of
    10 views is ~40k forwards, under a minute on one H100: the most a kill can lose)."""
    return max(8, min(4096, math.ceil(n / 16)))


def shard_name(index: int) -> str:
    return f"s{index:06d}.npy"


@dataclass(frozen=True)
class ViewCachePlan:
    """What a build needs to know, as plain data (it crosses into Ray as a dict).

    ``folder`` is the entry on the builder's cache (a local path, the same on every node
    with a shared file system); ``uri`` the entry at a storage URI when the cache is one
    (shards are uploaded there; each node then reads its own local copy).
    """

    key: str
    folder: str
    images: int
    views: int
    dim: int
    shard_size: int
    image_size: int
    augment: dict
    teacher_key: str
    uri: str | None = None

    @property
    def shards(self) -> int:
        return math.ceil(self.images / self.shard_size)

    def rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.images)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViewCachePlan":
        return cls(**d)


def is_complete(folder: Path) -> bool:
    return (Path(folder) / META).is_file() and (
        (Path(folder) / SHARDS).is_dir() or (Path(folder) / "embeds.npy").is_file())


def plan_view_cache(teacher, splits: Splits, image_size: int, augment: AugmentConfig, views: int,
                    root: Path, uri: str | None = None) -> ViewCachePlan:
    """The entry for this teacher / training set / view recipe, with its manifest written
    (an incomplete entry holds only the manifest and finished shards: never read).

    A synthetic training set (P3, ``splits.train_key == "synthetic/<key>"``) is listed as
    its cache file ``synthetic/<key>/data.pt``, relative to the cache root."""
    key = cache_key(teacher.key, splits, image_size, augment, views)
    folder = Path(root) / "teacher_cache" / key
    synthetic = f"{splits.train_key}/data.pt" if splits.train_key.startswith("synthetic/") else None
    n = len(splits.train_paths) if synthetic is None else len(splits.train)
    plan = ViewCachePlan(key, str(folder), n, views, int(teacher.embed_dim), shard_images(n), image_size,
                         asdict(augment), teacher.key, f"{uri}/teacher_cache/{key}" if uri else None)
    if not is_complete(folder) and not (folder / MANIFEST).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        lines = ([f"{SYNTHETIC}{synthetic}"] if synthetic is not None else
                 [str(p.relative_to(splits.info.root)) for p in splits.train_paths])
        _atomic_write(folder / MANIFEST, ("\n".join(lines) + "\n").encode())
        if plan.uri:  # the builders on other nodes read the manifest from the URI
            _remote(plan).put(folder / MANIFEST, MANIFEST)
    return plan


def _remote(plan: ViewCachePlan):
    from vldistill.trainers.storage import Remote

    return Remote(plan.uri)


def done_shards(plan: ViewCachePlan) -> set[int]:
    """Indices of the shards already written (at the URI when the cache is one)."""
    if plan.uri:
        names = _remote(plan).children(SHARDS)
    else:
        folder = Path(plan.folder) / SHARDS
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return {int(n[1:-4]) for n in names if n.startswith("s") and n.endswith(".npy") and ".tmp" not in n}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_shard(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ShardEncoder:
    """The per-shard work of a build: decode the shard's images, replay its K views, encode.

    Holds the teacher on ``device`` (bf16 autocast there when ``bf16``); used the same way by
    a Ray Data actor (one per GPU, or per CPU slot) and by :func:`build_local`. ``images``
    loads the training images ``[start, end)`` (decoding only those: a shard never needs
    the whole training set in memory).
    """

    def __init__(self, plan: ViewCachePlan, teacher, images: Callable[[int, int], torch.Tensor],
                 device: torch.device | str = "cpu", bf16: bool = False, batch_size: int | None = None):
        self.plan, self.images = plan, images
        self.device = torch.device(device)
        self.teacher = teacher.to(self.device)
        self.bf16 = bf16 and self.device.type == "cuda"
        # 32 on the CPU (a ViT-B/32 ran 13% faster per image than at 96: activations stay in
        # cache; docs/benchmarks.md), 256 on a GPU.
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 32)
        self.augment = AugmentConfig(**plan.augment)
        self.forwards = 0  # images x views encoded by this encoder (tests count them)

    @torch.no_grad()
    def encode(self, shard: int) -> np.ndarray:
        """``float16 [S, K, D]`` targets of one shard."""
        start, end = self.plan.rows(shard)
        images = self.images(start, end)
        out = np.empty((end - start, self.plan.views, self.plan.dim), dtype=np.float16)
        cast = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()
        for v in range(self.plan.views):
            for i in range(0, end - start, self.batch_size):
                idx = torch.arange(start + i, min(start + i + self.batch_size, end))
                x = make_views(images[idx - start].to(self.device), view_seed(idx, v), self.augment)
                with cast:
                    emb = self.teacher.encode_images(x)
                out[i:i + len(idx), v] = emb.float().cpu().numpy()
                self.forwards += len(idx)
        return out

    def __call__(self, shard: int) -> dict:
        """Encode and write one shard; returns its record (where, how long, how many)."""
        t0 = time.time()
        array = self.encode(shard)
        folder = Path(self.plan.folder) / SHARDS
        folder.mkdir(parents=True, exist_ok=True)
        _save_shard(folder / shard_name(shard), array)
        if self.plan.uri:
            _remote(self.plan).put(folder / shard_name(shard), f"{SHARDS}/{shard_name(shard)}")
        start, end = self.plan.rows(shard)
        record = {"shard": shard, "images": end - start, "forwards": (end - start) * self.plan.views,
                  "seconds": time.time() - t0, "pid": os.getpid(), "host": socket.gethostname(),
                  "device": str(self.device)}
        # The build log: one file per builder process (no concurrent writers), one line per
        # shard it finished -- which process built what, and proof that no shard ran twice.
        log_dir = Path(self.plan.folder) / BUILDS
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{record['host']}-{record['pid']}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return record


def image_loader(plan: ViewCachePlan, data_root: Path | None, cache_root: Path) -> Callable[[int, int], torch.Tensor]:
    """Images ``[start, end)`` of the manifest: decoded from the data root (resized to the
    plan's resolution), or sliced from a synthetic set's cache file (loaded once)."""
    folder = Path(plan.folder)
    if not (folder / MANIFEST).is_file() and plan.uri:
        _remote(plan).get(MANIFEST, folder / MANIFEST)
    lines = (folder / MANIFEST).read_text().splitlines()
    if lines and lines[0].startswith(SYNTHETIC):
        held = torch.load(Path(cache_root) / lines[0][len(SYNTHETIC):], map_location="cpu",
                          weights_only=True)["images"]
        return lambda start, end: held[start:end]
    if data_root is None:
        raise ValueError(f"view cache {plan.key}: its manifest lists image files, but no data root was given")
    paths = [Path(data_root) / rel for rel in lines]
    return lambda start, end: load_images(paths[start:end], plan.image_size)


def write_meta(plan: ViewCachePlan, records: Sequence[dict], seconds: float, where: dict) -> dict:
    """Mark the entry complete: ``meta.json`` with how it was built (after every shard)."""
    meta = {"images": plan.images, "views": plan.views, "dim": plan.dim, "teacher": plan.teacher_key,
            "layout": "shards-fp16", "shard_size": plan.shard_size, "shards": plan.shards,
            "seconds": round(seconds, 2),
            "forwards": int(sum(r["forwards"] for r in records)),
            "images_per_s": round(sum(r["forwards"] for r in records) / max(seconds, 1e-9), 1),
            **where}
    folder = Path(plan.folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / META, json.dumps(meta, indent=1).encode())
    if plan.uri:  # meta, then the entry's marker: nodes download only marked entries
        remote = _remote(plan)
        remote.put(folder / META, META)
        from vldistill.trainers.storage import DONE, Remote
        parent, name = plan.uri.rsplit("/", 1)
        Remote(parent).write_text(name + DONE, "done\n")
    return meta


class TeacherCache:
    """Read-only view of a built cache: ``lookup(indices, view) -> [B, D]`` float32."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        if (self.path / "embeds.npy").is_file():  # the first version's single float32 file
            self._shards, self.shard_size = [np.load(self.path / "embeds.npy", mmap_mode="r")], None
        else:
            self.shard_size = int(self.meta["shard_size"])
            self._shards = [np.load(self.path / SHARDS / shard_name(i), mmap_mode="r")
                            for i in range(int(self.meta["shards"]))]
        self._views = int(self.meta["views"])

    @property
    def views(self) -> int:
        return self._views

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.meta["images"]), self._views, int(self.meta["dim"])

    def lookup(self, indices: torch.Tensor, view: int) -> torch.Tensor:
        idx = indices.numpy()
        v = view % self._views
        if self.shard_size is None:
            return torch.from_numpy(np.asarray(self._shards[0][idx, v]).astype(np.float32, copy=True))
        shard, row = np.divmod(idx, self.shard_size)
        out = np.empty((len(idx), self._shards[0].shape[-1]), dtype=np.float32)
        for s in np.unique(shard):
            hit = shard == s
            out[hit] = self._shards[s][row[hit], v]
        return torch.from_numpy(out)


def build_local(plan: ViewCachePlan, encoder: ShardEncoder, progress: bool = True,
                workers: int | None = None) -> dict:
    """Build the missing shards of ``plan`` in this process (``vldistill train``, tests).

    On the CPU the shards are spread over ``workers`` forked processes of one torch
    thread each (default: this process's torch thread count): one single-thread process
    per core kept the cores busier than one multi-thread process (docs/benchmarks.md). A
    GPU encodes in this process. Never forks inside a Ray process (sockets, threads).
    """
    from vldistill.trainers.forked import forked_map

    t0 = time.time()
    todo = [i for i in range(plan.shards) if i not in done_shards(plan)]
    workers = min(workers or torch.get_num_threads(), len(todo)) if encoder.device.type == "cpu" else 1
    records = forked_map(encoder, todo, workers, f"teacher cache ({plan.images} images x {plan.views} views)",
                         progress)
    return write_meta(plan, records, time.time() - t0,
                      {"built_by": "local", "device": str(encoder.device), "workers": max(workers, 1),
                       "hosts": sorted({r["host"] for r in records})})


def build_lock(plan: ViewCachePlan):
    """An exclusive lock on the entry (one builder at a time on this file system)."""
    folder = Path(plan.folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _Flock(folder / ".lock")


class _Flock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def ensure_cache(teacher, splits: Splits, image_size: int, augment: AugmentConfig, views: int,
                 root: Path, progress: bool = True, device: torch.device | str | None = None,
                 bf16: bool = False) -> TeacherCache:
    """Open the cache for this teacher/data/views, building its missing shards here first.

    Concurrent callers wait on a file lock; one builds. Used by ``vldistill train`` and the
    tests; a sweep builds the cache across the cluster first (``platform/assets.py``).
    """
    plan = plan_view_cache(teacher, splits, image_size, augment, views, root)
    if not is_complete(Path(plan.folder)):
        with build_lock(plan):
            if not is_complete(Path(plan.folder)):
                log.info("building the teacher cache %s", plan.folder)
                device = device or next(teacher.parameters()).device
                held = splits.train.images
                encoder = ShardEncoder(plan, teacher, lambda s, e: held[s:e], device, bf16)
                build_local(plan, encoder, progress)
    return TeacherCache(Path(plan.folder))
