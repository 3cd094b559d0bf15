"""One distillation trial: ``train(cfg, reporter, ckpt_dir) -> metrics``. No Ray here.

The same function runs from the CLI, inside a Ray Tune function trainable, and on every
Ray Train worker. It:

1. resolves the data (writing the embedded world once, cached) and loads the splits;
2. builds the frozen teacher (training the embedded one once, cached) and its text
   targets, and measures the teacher's own metrics once (cached per teacher + data);
3. distils the student on base classes of the training domain with the weighted losses;
4. evaluates every ``eval.every`` epochs and at the last epoch, reports one row per epoch
   and writes ``last.pt`` atomically into ``ckpt_dir`` after every epoch; the last
   evaluation adds P1's representation metrics and, if configured, few-shot and
   linear-probe accuracy (``evaluation.final_metrics``).

What the losses receive (see docs/methods.md): ``student["embed"]``;
``teacher["image_embed"]`` (the batch), ``["text_embed"]`` (base class targets of
``distill.text.source``), ``["vocab_embed"]``, and when their loss is weighted
``["caption_embed"]`` (``cap``: the teacher embedding of each batch image's caption,
precomputed for the training set) and ``["sentence_embed"]`` (``vld``: the unpaired
sentence bank); ``batch = {"label": ...}``, or ``{}`` with ``distill.labels=false``, where
the training set itself is an :class:`UnlabelledImages` holding no labels.

Determinism: the batch order of epoch ``e`` and every view are pure functions of
``(seed, e)`` and the image index, not of a running RNG, so a run resumed from its
checkpoint after epoch ``e`` continues bit-for-bit like an uninterrupted one on the CPU.
The final evaluation is part of the last report (Ray Tune may stop a trial right after).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from vldistill.trainers.cache import ensure_cache
from vldistill.trainers.config import ConfigError, TrainConfig
from vldistill.trainers.data.folder import (DatasetInfo, Splits, UnlabelledImages, build_splits,
                                            read_dataset)
from vldistill.trainers.data.views import make_views, view_seed
from vldistill.trainers.data.world import World, WorldSpec
from vldistill.trainers.evaluation import eval_sizes, evaluate, final_metrics, floors, student_cost
from vldistill.trainers.losses import LOSSES, WeightedLoss
from vldistill.trainers.students import build_student
from vldistill.trainers.teachers import LazyTeacher, Teacher, cache_root, load_teacher
from vldistill.trainers.text import (build_text_targets, caption_embeddings, check_source,
                                     sentence_bank)

log = logging.getLogger(__name__)
CKPT_NAME = "last.pt"
# Losses whose inputs the loop provides (student embed, teacher image embed, class and
# vocabulary text, captions, the sentence bank, ViT token grids and attention maps).
FED_LOSSES = frozenset({"cls", "mse", "im_cst", "vlprox", "cap", "vld", "pvld", "udist", "attn",
                        "token_nce"})
# Config keys of a loss group that the loop consumes (not constructor arguments).
LOOP_KEYS = {"vld": ("sentences_file", "bank_size", "bank_seed")}


def label_losses(cfg: TrainConfig) -> list[str]:
    """Weighted losses that read ``batch["label"]`` (cls; vlprox with its teacher filter)."""
    d = cfg.distill
    reads = {"cls": True, "vlprox": d.vlprox.filter}
    return [n for n, w in d.weights.items() if w > 0 and reads.get(n, False)]


class Reporter(Protocol):
    """Receives one metrics row per epoch (W&B, Ray Tune, a log line...)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None: ...


class LogReporter:
    """Logs a compact line per epoch; keeps every row in ``history``."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        self.history.append(dict(metrics))
        keys = ("loss", "base_acc", "novel_acc", "hmean", "shift_acc")
        shown = " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
        log.info("epoch %d/%d %s", metrics["epoch"], metrics["epochs"], shown)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the trial cannot continue."""


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


def resolve_dataset(cfg: TrainConfig, progress: bool = True) -> DatasetInfo:
    """The dataset root (writing the embedded world there first if needed), checked."""
    if cfg.data.source == "world":
        spec = world_spec(cfg)
        root = Path(cfg.data.root) if cfg.data.root else (
            cache_root(cfg.cache_dir) / "worlds" / spec.key())
        World(spec).write(root, progress=progress)
        return read_dataset(root, spec.train_domain)
    return read_dataset(cfg.data.root, cfg.data.train_domain)


def check_registries(cfg: TrainConfig) -> None:
    """Names and files the config points at exist (cheap; runs before anything is written)."""
    import open_clip

    from vldistill.trainers.students import TOKEN_LOSSES, check_student_name, check_token_student
    from vldistill.trainers.teachers import check_token_teacher
    for name, weight in cfg.distill.weights.items():
        if name not in LOSSES:
            raise ConfigError(f"distill.weights.{name}: unknown loss; known: {', '.join(sorted(LOSSES))}")
        if weight > 0 and name not in FED_LOSSES:
            raise ConfigError(f"distill.weights.{name}: the loss is registered but this training loop "
                              f"does not feed its inputs yet; usable now: {', '.join(sorted(FED_LOSSES))}")
    if not cfg.distill.labels and label_losses(cfg):
        bad = label_losses(cfg)
        raise ConfigError(f"distill.labels=false (label-free training) but distill.weights.{bad[0]} > 0 "
                          f"and loss {bad[0]!r} reads labels"
                          + (" (vlprox filters on the label: set distill.vlprox.filter=false)"
                             if bad[0] == "vlprox" else "") + "; set its weight to 0")
    check_source(cfg.distill.text.source)
    check_student_name(cfg.student.name)
    check_token_student(cfg)
    if any(cfg.distill.weights.get(n, 0.0) > 0 for n in TOKEN_LOSSES):
        check_token_teacher(cfg.teacher)
        if cfg.compile:  # the taps are Python hooks toggled per step; dynamo would guard on them
            raise ConfigError("compile: torch.compile is not supported with distill.weights.attn/token_nce > 0")
    if cfg.data.train_source == "synthetic" and cfg.distill.weights.get("cap", 0) > 0:
        raise ConfigError("distill.weights.cap > 0 needs a caption per training image; synthetic "
                          "training images (data.train_source=synthetic) have none")
    t = cfg.teacher
    if t.name != "embedded" and t.name not in open_clip.list_models():
        raise ConfigError(f"teacher.name: unknown open_clip model {t.name!r}; use 'embedded' or one of "
                          "open_clip.list_models()")
    if t.pretrained and (os.sep in t.pretrained or t.pretrained.endswith((".pt", ".pth", ".bin",
                                                                            ".safetensors"))):
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


def _lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def _teacher_metrics(teacher: Teacher | LazyTeacher, splits: Splits, text, cfg: TrainConfig) -> dict[str, float]:
    """The teacher's own numbers on the same sets (the ceiling), cached on disk."""
    blob = json.dumps({"teacher": teacher.key, "root": str(splits.info.root),
                       "data": asdict(cfg.data), "text": text.key, "v": 2}, sort_keys=True)
    path = cache_root(cfg.cache_dir) / "teacher_eval" / (
        hashlib.sha256(blob.encode()).hexdigest()[:16] + ".json")
    if path.is_file():
        return json.loads(path.read_text())
    m = evaluate(teacher.encode_images, splits, text, cfg.eval.batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(m))
    os.replace(tmp, path)
    return m


def _teacher_embeddings(teacher: Teacher | LazyTeacher, splits: Splits, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The teacher's embeddings of the held-out base and novel images (P1's representation
    metrics compare every student with them), cached on disk next to the teacher metrics:
    a trial never runs the teacher over the evaluation sets (with a ViT-B teacher on CPU
    that would be minutes per trial)."""
    from vldistill.trainers.evaluation import teacher_eval_embeddings
    blob = json.dumps({"teacher": teacher.key, "root": str(splits.info.root), "data": asdict(cfg.data),
                       "what": "eval-embeddings", "v": 1}, sort_keys=True)
    path = cache_root(cfg.cache_dir) / "teacher_eval" / (hashlib.sha256(blob.encode()).hexdigest()[:16] + ".pt")
    if str(path) in _EVAL_EMB:
        return _EVAL_EMB[str(path)]
    if path.is_file():
        emb = torch.load(path, map_location="cpu", weights_only=True)
        _EVAL_EMB.clear()
        _EVAL_EMB[str(path)] = emb
        return emb
    emb = teacher_eval_embeddings(teacher, splits, cfg.eval.batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(emb, tmp)
    os.replace(tmp, path)
    return emb


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path) -> Path:
    """Write ``last.pt`` atomically: a crash mid-write leaves the previous one intact."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / CKPT_NAME
    tmp = ckpt_dir / f".{CKPT_NAME}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load_checkpoint(ckpt_dir: Path | None) -> dict[str, Any] | None:
    if ckpt_dir is None or not (Path(ckpt_dir) / CKPT_NAME).is_file():
        return None
    return torch.load(Path(ckpt_dir) / CKPT_NAME, map_location="cpu", weights_only=True)


_MEMO: dict[str, tuple] = {}  # a reused Ray actor (or a test) pays data/teacher loading once
_EVAL_EMB: dict[str, dict] = {}  # the teacher's evaluation-set embeddings, by cache file
_FEEDS: dict[str, dict] = {}  # caption / sentence-bank embeddings, keyed like _MEMO plus their config


def _feeds(cfg: TrainConfig, splits: Splits, teacher: Teacher | LazyTeacher, base_key: str) -> dict:
    """Caption embeddings of the training images (``cap``) and the sentence bank (``vld``).

    Computed once per data/teacher/config and only for weighted losses: ``captions``
    ``[N_train, D]`` (row i: the caption of training image i, from ``captions.json``) and
    ``sentences`` ``[M, D]``; both teacher text embeddings, normalised, on the CPU.
    """
    w, v = cfg.distill.weights, cfg.distill.vld
    need_cap, need_bank = w.get("cap", 0) > 0, w.get("vld", 0) > 0
    key = json.dumps({"base": base_key, "cap": need_cap, "bank": need_bank and asdict(v)}, sort_keys=True)
    if key not in _FEEDS:
        out = {}
        if need_cap:
            out["captions"] = caption_embeddings(teacher, splits.info.root, splits.train_paths)
        if need_bank:
            world = World(world_spec(cfg)) if cfg.data.source == "world" else None
            bank = sentence_bank(splits.info.root, v.sentences_file, v.bank_size, v.bank_seed, world)
            out["sentences"] = teacher.encode_text(bank).float().cpu()
        _FEEDS.clear()
        _FEEDS[key] = out
    return _FEEDS[key]


def prepare(cfg: TrainConfig) -> tuple[Splits, Teacher | LazyTeacher, Any, dict[str, float]]:
    """Data splits, frozen teacher, text targets and the static metrics of a trial.

    Everything is cached on disk (world, teacher, teacher metrics) and memoised in this
    process, keyed by the config parts it depends on, so a sweep computes it once.
    """
    key = json.dumps({"data": asdict(cfg.data), "teacher": asdict(cfg.teacher),
                      "text": asdict(cfg.distill.text), "cache": cfg.cache_dir}, sort_keys=True)
    if key in _MEMO:
        splits, teacher, text, static = _MEMO[key]
        return splits, teacher, replace(text, **_feeds(cfg, splits, teacher, key)), static
    info = resolve_dataset(cfg, cfg.progress)
    d = cfg.data
    synthetic = d.train_source == "synthetic"
    splits = build_splits(info, d.image_size, d.train_fraction, d.images_per_class, d.split_seed,
                          d.shift_domains, d.max_eval_per_class, cfg.progress, load_train=not synthetic)
    # Lazy: a trial whose teacher outputs are all cached never builds the teacher model.
    teacher = load_teacher(cfg.teacher, world_spec(cfg), cfg.cache_dir, cfg.progress, lazy=True)
    text = build_text_targets(teacher, info, cfg.distill.text, cache_root(cfg.cache_dir))
    teacher_m = {f"teacher/{k}": v for k, v in _teacher_metrics(teacher, splits, text, cfg).items()}
    synth_m = {}
    if synthetic:  # P3: no real training image is opened; the teacher makes the training set
        from vldistill.trainers.data.folder import LabelledImages
        from vldistill.trainers.synth import synthesize
        images, labels, meta = synthesize(teacher, [info.name(c) for c in info.base], d.synthetic,
                                          cache_root(cfg.cache_dir), cfg.progress)
        splits = replace(splits, train=LabelledImages(images, labels, list(info.base)), train_paths=[],
                         train_key=f"synthetic/{meta['key']}")
        synth_m = {f"synthetic/{k}": float(meta[k]) for k in
                   ("zero_shot_acc", "diversity", "diversity_per_class", "cos_after") if k in meta}
    static = {**eval_sizes(splits), **floors(splits), **teacher_m, **synth_m}
    _teacher_embeddings(teacher, splits, cfg)  # built here (a sweep's driver), read by trials
    if cfg.augment.views > 0 and cfg.teacher_cache:  # a sweep builds it here, before trials
        ensure_cache(teacher, splits, d.image_size, cfg.augment, cfg.augment.views,
                     cache_root(cfg.cache_dir), cfg.progress)
    _MEMO.clear()  # hold one dataset at a time
    _MEMO[key] = (splits, teacher, text, static)
    return splits, teacher, replace(text, **_feeds(cfg, splits, teacher, key)), static


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a data-parallel group (rank 0 of 1 without DDP)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> Dist:
    """The torch.distributed group set up by the caller (Ray Train), if any."""
    import torch.distributed as tdist
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size())
    return Dist()


def pick_device(cfg: TrainConfig) -> torch.device:
    """``device=auto``: the current CUDA device if there is one (Ray Train sets it per worker)."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {cfg.device!r} requested but CUDA is not available here")
    return torch.device("cuda", torch.cuda.current_device())


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _build_optimizer(student: torch.nn.Module, criterion: torch.nn.Module, cfg: TrainConfig):
    params = list(student.parameters()) + list(criterion.parameters())  # losses may own weights
    o = cfg.optim
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=o.lr)


def train(cfg: TrainConfig, reporter: Reporter | None = None,
          ckpt_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Run (or resume) one trial and return its final metrics.

    Under torch.distributed (Ray Train workers) every rank runs this function: the global
    batch ``optim.batch_size`` is split evenly across ranks, the student is wrapped in DDP
    (BatchNorm synchronised on CUDA; per worker on CPU, where torch has no SyncBatchNorm),
    the teacher is never wrapped, evaluation embeddings are
    gathered so every metric is over the whole evaluation set, rank 0 writes checkpoints,
    and every rank calls ``reporter.report`` (Ray Train reports are collective).

    Args:
        cfg: the validated trial config.
        reporter: receives one row per epoch; the last row holds the final evaluation.
        ckpt_dir: where ``last.pt`` is written each epoch and resumed from if present.

    Returns:
        The last epoch's row: student metrics, ``teacher/...`` metrics, cost, floors, sizes.
    """
    t_start = time.time()
    check_registries(cfg)
    cfg = with_local_cache(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    reporter = reporter or LogReporter()
    ckpt_path = Path(ckpt_dir) if ckpt_dir is not None else None
    dist, device = dist_info(), pick_device(cfg)
    o, d = cfg.optim, cfg.data
    if o.batch_size % dist.world:
        raise ConfigError(f"optim.batch_size={o.batch_size} must be divisible by the {dist.world} workers")
    splits, teacher, text, static = prepare(cfg)
    teacher.to(device)

    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, teacher.embed_dim).to(device)
    loss_kwargs = {n: {k: x for k, x in (asdict(v) if hasattr(v, "__dataclass_fields__") else dict(v)).items()
                       if k not in LOOP_KEYS.get(n, ())}
                   for n in cfg.distill.weights if (v := getattr(cfg.distill, n, None)) is not None}
    token_losses = [n for n in ("attn", "token_nce") if cfg.distill.weights.get(n, 0.0) > 0]
    tok = cfg.distill.tokens
    what = tuple(k for n, k in (("token_nce", "tokens"), ("attn", "attn")) if n in token_losses)
    if token_losses:  # P4: taps on the student's and the teacher's ViT blocks (before DDP)
        s_tap = student.enable_tokens(tok.student_layers, what=what)
        t_tap = teacher.token_tap(tok.teacher_layers)
        if "token_nce" in token_losses:
            loss_kwargs["token_nce"] = {**loss_kwargs.get("token_nce", {}),
                                        "student_dim": s_tap.width, "teacher_dim": t_tap.width}
    criterion = WeightedLoss(cfg.distill.weights, loss_kwargs).to(device)
    opt = _build_optimizer(student, criterion, cfg)
    crit_params = [p for p in criterion.parameters() if p.requires_grad]
    # Label-free runs train on images only: the labels are not in the object batches come from.
    train_set = splits.train if cfg.distill.labels else UnlabelledImages.of(splits.train)
    n_train = len(train_set)
    steps_per_epoch = max(n_train // o.batch_size, 1)  # drop_last: contrastive batches stay full
    total, warmup = steps_per_epoch * o.epochs, steps_per_epoch * o.warmup_epochs

    start_epoch, last = 0, {}
    state = load_checkpoint(ckpt_path)
    if state is not None:
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        if "criterion" in state:  # losses with weights or buffers (token_nce's projection, queue)
            criterion.load_state_dict(state["criterion"])
        start_epoch, last = state["epoch"], state.get("metrics", {})
        log.info("resumed from %s after epoch %d", ckpt_path / CKPT_NAME, start_epoch)
    model = _wrap(student, cfg, dist, device)
    text_dev = {"text_embed": text.base.to(device), "vocab_embed": text.vocab.to(device)}
    if text.sentences is not None:
        text_dev["sentence_embed"] = text.sentences.to(device)
    captions = text.captions.to(device) if text.captions is not None else None
    views = cfg.augment.views
    cache = None
    if views > 0 and cfg.teacher_cache and not token_losses:  # P4 runs the teacher online (tokens)
        cache = ensure_cache(teacher, splits, d.image_size, cfg.augment, views,
                             cache_root(cfg.cache_dir), cfg.progress)
    local_bs = o.batch_size // dist.world
    encode = lambda im: student(im)["embed"]  # noqa: E731  (eval: the unwrapped module)
    row: dict[str, float] = {}

    for epoch in range(start_epoch, o.epochs):
        t_epoch = time.time()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n_train, generator=gen)
        sums: dict[str, float] = {}
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            idx = order[i * o.batch_size:(i + 1) * o.batch_size][dist.rank * local_bs:(dist.rank + 1) * local_bs]
            view = epoch % views if views else epoch
            x = make_views(train_set.images[idx], view_seed(idx, view), cfg.augment).to(device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch = {"label": train_set.labels[idx].to(device)} if cfg.distill.labels else {}
            with _autocast(cfg, device):
                if token_losses:
                    t_img, t_tok = teacher.encode_images_with_tokens(x, tok.teacher_layers, what)
                    s_out = model(x, with_tokens=True)
                else:
                    t_img = cache.lookup(idx, view).to(device) if cache else teacher.encode_images(x)
                    t_tok, s_out = {}, model(x)
                t_out = {"image_embed": t_img, **text_dev, **t_tok}
                if captions is not None:
                    t_out["caption_embed"] = captions[idx.to(device)]
                loss, logs = criterion(s_out, t_out, batch)
            finite = bool(torch.isfinite(loss))
            if dist.world > 1:  # all ranks stop together: one rank alone would hang the others
                import torch.distributed as tdist
                flag = torch.tensor([1.0 if finite else 0.0], device=device)
                tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
                finite = bool(flag.item() > 0)
            if not finite:
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1} step {i + 1}: "
                                         f"terms {logs}")
            for g in opt.param_groups:
                g["lr"] = _lr(step, total, warmup, o.lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if dist.world > 1 and crit_params:  # loss-owned weights are outside DDP: average them
                import torch.distributed as tdist
                for p in crit_params:
                    if p.grad is not None:
                        tdist.all_reduce(p.grad)
                        p.grad /= dist.world
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
        if dist.world > 1:  # every rank saw its shard: log the global mean, as one process would
            import torch.distributed as tdist
            keys = sorted(sums)
            tot = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
            tdist.all_reduce(tot)
            sums = {k: float(v) / dist.world for k, v in zip(keys, tot)}
        row = {"epoch": epoch + 1, "epochs": o.epochs, "lr": opt.param_groups[0]["lr"],
               **{k: v / steps_per_epoch for k, v in sums.items()},
               "train_seconds": time.time() - t_epoch}
        final = epoch + 1 == o.epochs
        if final or (epoch + 1) % cfg.eval.every == 0:  # other epochs carry no (stale) accuracy
            student.eval()
            kept: dict = {}
            with _autocast(cfg, device):
                last = evaluate(encode, splits, text, cfg.eval.batch_size, device, dist, keep=kept)
            if final:  # fp32: the few-shot copy is fine-tuned here
                t_eval = _teacher_embeddings(teacher, splits, cfg)
                last.update(final_metrics(student, t_eval, splits, text, cfg, device, dist, kept))
            row.update(last)
        if final:
            row.update(student_cost(student, d.image_size, cfg.eval.latency_iters, cfg=cfg))
            row.update(static)
            row["wall_seconds"] = time.time() - t_start
        checkpoint = None
        if ckpt_path is not None:
            if dist.main:
                save_checkpoint({"student": student.state_dict(), "optimizer": opt.state_dict(),
                                 "criterion": criterion.state_dict(), "epoch": epoch + 1,
                                 "metrics": last}, ckpt_path)
            checkpoint = str(ckpt_path) if dist.main else None
        reporter.report(row, checkpoint)
    if start_epoch >= o.epochs:  # resumed a finished run: re-evaluate for the final row
        student.eval()
        kept = {}
        row = {"epoch": o.epochs, "epochs": o.epochs,
               **evaluate(encode, splits, text, cfg.eval.batch_size, device, dist, keep=kept),
               **final_metrics(student, _teacher_embeddings(teacher, splits, cfg), splits, text, cfg,
                               device, dist, kept),
               **student_cost(student, d.image_size, cfg.eval.latency_iters, cfg=cfg), **static}
        reporter.report(row, str(ckpt_path) if dist.main and ckpt_path else None)
    return row


def _wrap(student: torch.nn.Module, cfg: TrainConfig, dist: Dist, device: torch.device) -> torch.nn.Module:
    """channels_last / torch.compile / DDP (with synchronised BatchNorm) as configured."""
    model = student
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        if device.type == "cuda":  # SyncBatchNorm is CUDA-only; on CPU (gloo) BN stats are per worker
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    return model
