"""What a run needs prepared before its first step: the shared assets, Ray-free.

A trial reads, from the content-addressed cache (``cache_dir``):

========================  =====================================  ==========================
asset                     cache entry                            teacher work to build it
========================  =====================================  ==========================
dataset (embedded world)  ``worlds/<world key>/``                none (CPU rendering)
embedded teacher          ``teachers/<recipe key>/teacher.pt``   training (minutes, CPU)
text targets              ``text/<teacher+prompts>.pt``          text tower over the prompts
teacher metrics           ``teacher_eval/<...>.json``            image tower over eval sets
eval embeddings           ``teacher_eval/<...>.pt``              image tower over eval sets
captions, sentence bank   ``text/<...>.pt``                      text tower over N captions
P3 synthetic set          ``synthetic/<key>/data.pt``            synthesis (optimisation)
view cache                ``teacher_cache/<key>/`` (shards)      image tower, N x K views
========================  =====================================  ==========================

Who builds them: a sweep builds every one before its trials, as Ray work on the
teacher's resources (``platform/assets.py``: one task for the first seven, a Ray Data
actor pool for the view cache), and then its trials call :func:`prepare` with
``build=False``: they read the entries and never run the teacher for them -- an entry that
is missing is a :class:`MissingAssetError`, not a silent rebuild on the trial's CPU.
``vldistill train`` (one process, no Ray) calls :func:`prepare` with ``build=True``: the
same functions run here, on the local GPU when there is one (``device=auto``) and in bf16
there (``precision=auto``, the default; ``bf16`` / ``fp32`` force it).

Everything is memoised per process (a reused Ray actor, or a test, pays loading once).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from vldistill.trainers.cache import (TeacherCache, ViewCachePlan, _Flock, build_lock, build_local, ensure_cache,
                                      is_complete, plan_view_cache, ShardEncoder)
from vldistill.trainers.config import ConfigError, TrainConfig, to_dict
from vldistill.trainers.data.folder import DatasetInfo, Splits, read_dataset
from vldistill.trainers.data.world import World, WorldSpec
from vldistill.trainers.evaluation import eval_sizes, evaluate, floors
from vldistill.trainers.teachers import (_CKPT_SUFFIXES, LazyTeacher, Teacher, cache_root, embedded_key,
                                         load_teacher)
from vldistill.trainers.text import build_text_targets, caption_embeddings, sentence_bank
from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)


class MissingAssetError(RuntimeError):
    """A trial needs a shared asset that is not in the cache (it never builds one itself)."""


def world_spec(cfg: TrainConfig) -> WorldSpec:
    w = cfg.data.world
    return WorldSpec(seed=w.seed, image_size=w.image_size, per_class=w.per_class,
                     shift_per_class=w.shift_per_class, train_domain=w.train_domain,
                     semantic_shape=w.semantic_shape, semantic_colour=w.semantic_colour,
                     n_compositional=w.n_compositional)


def cache_uri(cfg: TrainConfig) -> str | None:
    """The cache location when it is a storage URI (``cache_dir`` or ``$VLDISTILL_CACHE``)."""
    from vldistill.trainers.storage import is_uri

    loc = cfg.cache_dir or os.environ.get("VLDISTILL_CACHE")
    return loc if loc and is_uri(loc) else None


def with_local_cache(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with a URI cache replaced by this node's local copy of it, every complete
    entry of the URI downloaded first (see ``trainers/storage.py``). Plain paths: unchanged."""
    uri = cache_uri(cfg)
    if uri is None:
        return cfg
    from vldistill.trainers.storage import pull_cache
    return replace(cfg, cache_dir=str(pull_cache(uri)))


def data_root(cfg: TrainConfig) -> Path:
    """Where the dataset is (the embedded world's cache entry, or ``data.root``)."""
    if cfg.data.source == "world":
        return Path(cfg.data.root) if cfg.data.root else (
            cache_root(cfg.cache_dir) / "worlds" / world_spec(cfg).key())
    return Path(cfg.data.root).expanduser()


def resolve_dataset(cfg: TrainConfig, progress: bool = True, build: bool = True) -> DatasetInfo:
    """The dataset root (writing the embedded world there first if needed), checked."""
    root = data_root(cfg)
    if cfg.data.source == "world":
        if not (root / "world.json").exists():
            _require(build, "the embedded world", root)
        World(world_spec(cfg)).write(root, progress=progress)
        return read_dataset(root, world_spec(cfg).train_domain)
    return read_dataset(root, cfg.data.train_domain)


def check_teacher_checkpoint(cfg: TrainConfig) -> None:
    """A ``teacher.pretrained`` checkpoint file opens with ``weights_only=True`` -- checked
    by the sweep driver before Ray starts, memory-mapped (tensors are not read into RAM: a
    ViT-L/14 file is 1.7 GB) and without building any model. ``.safetensors`` carry no code."""
    t = cfg.teacher
    if t.name == "embedded" or not t.pretrained or t.pretrained.endswith(".safetensors"):
        return
    path = Path(t.pretrained).expanduser()
    if not (os.sep in t.pretrained or t.pretrained.endswith(_CKPT_SUFFIXES)):  # the loader's one list
        return  # an open_clip tag, resolved on the workers
    if not path.is_file():
        raise ConfigError(f"teacher.pretrained: checkpoint file not found: {path}")
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # a legacy (non-zip) file cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ConfigError(f"teacher.pretrained: {path} needs pickled code to load and is refused "
                              "(torch.load weights_only=True); save a plain state_dict") from None
        raise ConfigError(f"teacher.pretrained: cannot read {path}: {e}") from None


def teacher_placement(cfg: TrainConfig) -> tuple[torch.device, bool]:
    """``(device, bf16)`` for the teacher's forwards: ``device=auto`` takes CUDA when this
    process sees a GPU (a Ray actor with ``num_gpus`` does); bf16 autocast only on CUDA."""
    if cfg.device == "cpu" or not torch.cuda.is_available():
        if cfg.device == "cuda":
            raise ConfigError("device: 'cuda' requested but CUDA is not available here")
        return torch.device("cpu"), False
    return torch.device("cuda", torch.cuda.current_device()), cfg.bf16_on("cuda")


def _cast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _require(build: bool, what: str, where: Path) -> None:
    if not build:
        raise MissingAssetError(
            f"{what} is not in the cache ({where}). A trial never builds a shared asset on its own "
            "CPU: `vldistill sweep` builds every one on the teacher's resources before its trials, "
            "`vldistill train` builds them itself. Is cache_dir shared by every node (NFS, or an "
            "s3:// / gs:// URI)?")


class _ReadOnlyTeacher:
    """A teacher stand-in for a trial's reads: key and width, and no forward at all.

    Any computation (a cache miss reached the teacher) raises :class:`MissingAssetError`
    instead of running a large teacher on the trial's CPU."""

    def __init__(self, teacher, root: Path):
        self.key, self.embed_dim, self.model_name = teacher.key, teacher.embed_dim, teacher.model_name
        self._root = root

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingAssetError(f"a teacher output ({name}) of teacher {self.model_name} [{self.key}] is not "
                                f"in the cache {self._root}; shared assets are built before trials "
                                "(`vldistill sweep`) or by `vldistill train`")


def _cached(path: Path, build: bool, what: str, compute: Callable[[], Any]) -> Any:
    """Read ``path`` (``.json`` or a torch file); else compute and write it atomically."""
    if path.is_file():
        return json.loads(path.read_text()) if path.suffix == ".json" else torch.load(
            path, map_location="cpu", weights_only=True)
    _require(build, what, path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value)) if path.suffix == ".json" else torch.save(value, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return value


def _key(blob: dict) -> str:
    return content_key(blob)


def _teacher_metrics(teacher, splits: Splits, text, cfg: TrainConfig, build: bool = True,
                     device: torch.device | str = "cpu", bf16: bool = False) -> dict[str, float]:
    """The teacher's own numbers on the same sets (the ceiling), cached on disk."""
    blob = {"teacher": teacher.key, "root": str(splits.info.root), "data": asdict(cfg.data),
            "text": text.key, "v": 2}
    path = cache_root(cfg.cache_dir) / "teacher_eval" / (_key(blob) + ".json")

    def compute():
        with _cast(torch.device(device), bf16):
            return evaluate(teacher.encode_images, splits, text, cfg.eval.batch_size, device)
    return _cached(path, build, "the teacher's metrics", compute)


_EVAL_EMB: dict[str, dict] = {}  # the teacher's evaluation-set embeddings, by cache file


def _teacher_embeddings(teacher, splits: Splits, cfg: TrainConfig, build: bool = True,
                        device: torch.device | str = "cpu", bf16: bool = False) -> dict[str, torch.Tensor]:
    """The teacher's embeddings of the held-out base and novel images (P1's representation
    metrics compare every student with them), cached on disk next to the teacher metrics."""
    from vldistill.trainers.evaluation import teacher_eval_embeddings
    blob = {"teacher": teacher.key, "root": str(splits.info.root), "data": asdict(cfg.data),
            "what": "eval-embeddings", "v": 1}
    path = cache_root(cfg.cache_dir) / "teacher_eval" / (_key(blob) + ".pt")
    if str(path) not in _EVAL_EMB:
        def compute():
            with _cast(torch.device(device), bf16):
                return teacher_eval_embeddings(teacher, splits, cfg.eval.batch_size, device)
        emb = _cached(path, build, "the teacher's evaluation-set embeddings", compute)
        _EVAL_EMB.clear()
        _EVAL_EMB[str(path)] = emb
    return _EVAL_EMB[str(path)]


_FEEDS: dict[str, dict] = {}  # caption / sentence-bank embeddings, keyed like _MEMO plus their config


def _feeds(cfg: TrainConfig, splits: Splits, teacher, base_key: str, build: bool = True) -> dict:
    """Caption embeddings of the training images (``cap``) and the sentence bank (``vld``).

    Only for weighted losses: ``captions`` ``[N_train, D]`` (row i: the caption of training
    image i, from ``captions.json``) and ``sentences`` ``[M, D]``; teacher text embeddings,
    normalised, on the CPU, cached on disk (``text/``) and in this process.
    """
    w, v = cfg.distill.weights, cfg.distill.vld
    need_cap, need_bank = w.get("cap", 0) > 0, w.get("vld", 0) > 0
    key = json.dumps({"base": base_key, "cap": need_cap, "bank": need_bank and asdict(v)}, sort_keys=True)
    if key not in _FEEDS:
        out, text_dir = {}, cache_root(cfg.cache_dir) / "text"
        root = splits.info.root
        if need_cap:
            files = _key({"paths": [str(p.relative_to(root)) for p in splits.train_paths]})
            path = text_dir / (_key({"teacher": teacher.key, "root": str(root), "files": files,
                                     "what": "captions", "v": 1}) + ".pt")
            out["captions"] = _cached(path, build, "the caption embeddings (distill.weights.cap)",
                                      lambda: caption_embeddings(teacher, root, splits.train_paths))
        if need_bank:
            world = World(world_spec(cfg)) if cfg.data.source == "world" else None
            bank = sentence_bank(root, v.sentences_file, v.bank_size, v.bank_seed, world)
            path = text_dir / (_key({"teacher": teacher.key, "bank": bank, "what": "sentences",
                                     "v": 1}) + ".pt")
            out["sentences"] = _cached(path, build, "the sentence-bank embeddings (distill.weights.vld)",
                                       lambda: teacher.encode_text(bank).float().cpu())
        _FEEDS.clear()
        _FEEDS[key] = out
    return _FEEDS[key]


def image_store_plan(cfg: TrainConfig, info: DatasetInfo, load_train: bool = True):
    """The image store of this config's splits (``data/store.py``; nothing is decoded)."""
    from vldistill.trainers.data import store

    d = cfg.data
    return store.plan_store(info, d.image_size, d.train_fraction, d.images_per_class, d.split_seed,
                            d.shift_domains, d.max_eval_per_class, cache_root(cfg.cache_dir), load_train)


def inline_store_bytes() -> int:
    """Decoded size up to which the planning task decodes the image store itself (one core
    does 256 MB in seconds; the demo's ~17k images are 52 MB) instead of a Ray Data job
    over the cluster; ``$VLDISTILL_STORE_INLINE_MB`` sets it (0: always the Ray Data job)."""
    return int(float(os.environ.get("VLDISTILL_STORE_INLINE_MB", "256")) * 2**20)


def plan_shared_images(cfg: TrainConfig) -> dict | None:
    """The sweep's data stage (a Ray task): write the dataset if it is the embedded world,
    plan the image store and allocate its files; the plan (a dict) when shards are missing.
    A store of at most :func:`inline_store_bytes` decoded is decoded right here instead (a
    Ray Data job costs 5-10 s to start: ``{"built_here": images, ...}``); ``None`` when the
    store was complete."""
    from dataclasses import asdict as _asdict

    from vldistill.trainers.data import store

    info = resolve_dataset(cfg, progress=False, build=True)
    plan = image_store_plan(cfg, info, load_train=cfg.data.train_source != "synthetic")
    if store.is_complete(plan):
        return None
    if plan.images() * 3 * plan.image_size ** 2 <= inline_store_bytes():
        store.build_local(plan, progress=False)  # here: faster than starting a Ray Data job
        return {"built_here": plan.images(), "key": plan.key, "image_size": plan.image_size}
    return {**_asdict(plan), "todo": store.allocate(plan)}


def load_splits(cfg: TrainConfig, info: DatasetInfo, build: bool = True, load_train: bool = True) -> Splits:
    """The run's image sets, memory-mapped from the image store (``data/store.py``);
    ``build=True`` decodes a missing store here first (forked workers, one per core)."""
    from vldistill.trainers.data import store

    plan = image_store_plan(cfg, info, load_train)
    if not store.is_complete(plan):
        _require(build, f"the image store ({plan.images()} images at {plan.image_size} px)", Path(plan.folder))
        Path(plan.folder).mkdir(parents=True, exist_ok=True)
        with _Flock(Path(plan.folder) / ".lock"):
            if not store.is_complete(plan):
                store.build_local(plan, cfg.progress)
    return store.open_splits(plan, info)


def _teacher(cfg: TrainConfig, build: bool) -> Teacher | LazyTeacher:
    """The configured teacher; lazy for open_clip (built only if something computes)."""
    if cfg.teacher.name == "embedded":
        ckpt = cache_root(cfg.cache_dir) / "teachers" / embedded_key(cfg.teacher.embedded, world_spec(cfg))
        if not (ckpt / "teacher.pt").is_file():
            _require(build, "the embedded teacher", ckpt / "teacher.pt")
    return load_teacher(cfg.teacher, world_spec(cfg), cfg.cache_dir, cfg.progress, lazy=True)


def _synthetic(cfg: TrainConfig, splits: Splits, info: DatasetInfo, teacher) -> tuple[Splits, dict]:
    """P3: the teacher makes the training set (no real training image is opened)."""
    from vldistill.trainers.data.folder import LabelledImages
    from vldistill.trainers.synth import synthesize
    images, labels, meta = synthesize(teacher, [info.name(c) for c in info.base], cfg.data.synthetic,
                                      cache_root(cfg.cache_dir), cfg.progress)
    splits = replace(splits, train=LabelledImages(images, labels, list(info.base)), train_paths=[],
                     train_key=f"synthetic/{meta['key']}")
    return splits, {f"synthetic/{k}": float(meta[k]) for k in
                    ("zero_shot_acc", "diversity", "diversity_per_class", "cos_after") if k in meta}


_MEMO: dict[str, tuple] = {}  # a reused Ray actor (or a test) pays data/teacher loading once


def prepare(cfg: TrainConfig, build: bool = True) -> tuple[Splits, Teacher | LazyTeacher, Any, dict[str, float]]:
    """Data splits, frozen teacher, text targets and the static metrics of a trial.

    ``build=True`` (``vldistill train``, the sweep's shared-asset task): whatever is missing
    from the cache is computed here, on the local GPU when there is one. ``build=False``
    (sweep trials): everything is read; a missing entry raises :class:`MissingAssetError`.
    The view cache is not part of this (see :func:`view_cache`).
    """
    key = json.dumps({"data": asdict(cfg.data), "teacher": asdict(cfg.teacher),
                      "text": asdict(cfg.distill.text), "cache": cfg.cache_dir}, sort_keys=True)
    if key in _MEMO:
        splits, teacher, text, static = _MEMO[key]
        return splits, teacher, replace(text, **_feeds(cfg, splits, teacher, key, build)), static
    root = cache_root(cfg.cache_dir)
    info = resolve_dataset(cfg, cfg.progress, build)
    d = cfg.data
    synthetic = d.train_source == "synthetic"
    splits = load_splits(cfg, info, build, load_train=not synthetic)
    teacher = _teacher(cfg, build)
    device, bf16 = teacher_placement(cfg) if build else (torch.device("cpu"), False)
    worker = teacher.to(device) if build else _ReadOnlyTeacher(teacher, root)
    with _cast(device, bf16):
        text = build_text_targets(worker, info, cfg.distill.text, root)
    teacher_m = {f"teacher/{k}": v for k, v in
                 _teacher_metrics(worker, splits, text, cfg, build, device, bf16).items()}
    synth_m = {}
    if synthetic:
        splits, synth_m = _synthetic(cfg, splits, info, worker)
    static = {**eval_sizes(splits), **floors(splits), **teacher_m, **synth_m}
    _teacher_embeddings(worker, splits, cfg, build, device, bf16)
    _MEMO.clear()  # hold one dataset at a time
    _MEMO[key] = (splits, teacher, text, static)
    return splits, teacher, replace(text, **_feeds(cfg, splits, worker, key, build)), static


def view_cache(teacher, splits: Splits, cfg: TrainConfig, build: bool = True) -> TeacherCache:
    """The view cache of this run: read, or (``build=True``) built here first if missing."""
    if build:
        device, bf16 = teacher_placement(cfg)
        return ensure_cache(teacher, splits, cfg.data.image_size, cfg.augment, cfg.augment.views,
                            cache_root(cfg.cache_dir), cfg.progress, device, bf16)
    plan = plan_view_cache(teacher, splits, cfg.data.image_size, cfg.augment, cfg.augment.views,
                           cache_root(cfg.cache_dir))
    if not is_complete(Path(plan.folder)):
        _require(False, f"the view cache ({cfg.augment.views} teacher views per training image)",
                 Path(plan.folder))
    return TeacherCache(Path(plan.folder))


def needs_view_cache(cfg: TrainConfig) -> bool:
    """Trials read teacher targets from the view cache (P4's token losses run it online)."""
    online = any(cfg.distill.weights.get(n, 0.0) > 0 for n in ("attn", "token_nce"))
    return cfg.augment.views > 0 and cfg.teacher_cache and not online


def asset_signature(cfg: TrainConfig) -> str:
    """What decides the shared assets a trial of ``cfg`` reads (two configs with one
    signature read the same entries): the dataset, the teacher, the class text, the cache,
    the caption / sentence-bank feeds its losses weight, and the view cache's recipe."""
    w, d = cfg.distill.weights, to_dict(cfg)
    return content_key({"data": d["data"], "teacher": d["teacher"], "text": d["distill"]["text"],
                        "cache": cfg.cache_dir, "cap": w.get("cap", 0) > 0,
                        "vld": ({k: d["distill"]["vld"][k] for k in ("sentences_file", "bank_size", "bank_seed")}
                                if w.get("vld", 0) > 0 else None),
                        "views": [d["augment"], d["teacher_cache"]] if needs_view_cache(cfg) else None})


def prepare_shared(cfg: TrainConfig) -> dict:
    """What the sweep's shared-asset task runs (on the teacher's resources): every asset
    but the view cache, built here; returns the records and the view cache's plan.

    Returns:
        ``{"records": [{"asset", "seconds", "device"}], "view_cache": plan dict or None}``.
    """
    t0 = time.time()
    uri = cache_uri(cfg)
    local = with_local_cache(cfg)
    splits, teacher, _, _ = prepare(local, build=True)
    device, bf16 = teacher_placement(local)
    records = [{"asset": "dataset, teacher, text, teacher metrics, eval embeddings"
                + (", synthetic set" if cfg.data.train_source == "synthetic" else ""),
                "seconds": round(time.time() - t0, 2), "device": str(device),
                "precision": "bf16" if bf16 else "fp32", "teacher_built": getattr(teacher, "built", True)}]
    if uri:  # the other nodes read these entries from the URI (the view cache: by shard)
        from vldistill.trainers.storage import push_cache
        push_cache(uri, cache_root(local.cache_dir))
    plan = None
    if needs_view_cache(local):
        plan = plan_view_cache(teacher, splits, local.data.image_size, local.augment, local.augment.views,
                               cache_root(local.cache_dir), uri)
        plan = None if is_complete(Path(plan.folder)) else plan.to_dict()
    return {"records": records, "view_cache": plan}


def shard_encoder(cfg: TrainConfig, plan: ViewCachePlan) -> ShardEncoder:
    """A view-cache builder for this process (a Ray Data actor): the teacher on this
    process's device, images decoded shard by shard from the data root."""
    from vldistill.trainers.cache import image_loader
    local = with_local_cache(cfg)
    device, bf16 = teacher_placement(local)
    teacher = load_teacher(local.teacher, world_spec(local), local.cache_dir, progress=False)
    images = image_loader(plan, data_root(local), cache_root(local.cache_dir))
    return ShardEncoder(plan, teacher, images, device, bf16)


__all__ = ["MissingAssetError", "prepare", "prepare_shared", "view_cache", "needs_view_cache",
           "shard_encoder", "world_spec", "cache_uri", "with_local_cache", "resolve_dataset",
           "teacher_placement", "build_lock", "build_local"]
