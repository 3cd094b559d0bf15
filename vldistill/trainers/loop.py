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

``train`` reads as its steps: ``_setup`` (checks, local cache, threads), ``_build`` (data,
teacher and targets, student, losses, optimiser), ``checkpoint.restore``, ``_ready`` (DDP,
targets on the device, teacher cache), then per epoch ``_train_epoch`` (``_step`` per batch),
``_epoch_row``, ``_evaluate``, ``_cost`` for the final row and ``_save``. Data parallelism
(sharding, DDP and SyncBatchNorm, the collective reductions) lives in ``distributed.py``,
the atomic ``last.pt`` in ``checkpoint.py``.

Determinism: the batch order of epoch ``e`` and every view are pure functions of
``(seed, e)`` and the image index, not of a running RNG, so a run resumed from its
checkpoint after epoch ``e`` continues bit-for-bit like an uninterrupted one on the CPU.
The final evaluation is part of the last report (Ray Tune may stop a trial right after).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

# The shared assets (dataset, teacher, text, teacher metrics, view cache) are prepared by
# trainers/assets.py; these names are re-exported for the callers that import them from here.
from vldistill.trainers.assets import (_EVAL_EMB, _FEEDS, _MEMO, _teacher_embeddings,  # noqa: F401
                                       cache_uri, needs_view_cache, prepare, resolve_dataset,
                                       view_cache, with_local_cache, world_spec)
from vldistill.trainers.checkpoint import (CKPT_NAME, load_checkpoint, restore,  # noqa: F401
                                           save_checkpoint, trial_state)
from vldistill.trainers.config import ConfigError, TrainConfig, check
from vldistill.trainers.data.folder import UnlabelledImages
from vldistill.trainers.data.views import make_views, view_seed
from vldistill.trainers.distributed import (Dist, all_finite, average_grads, dist_info,
                                            mean_over_ranks, shard, wrap_model)
from vldistill.trainers.evaluation import evaluate, final_metrics, student_cost
from vldistill.trainers.losses import WeightedLoss
from vldistill.trainers.progress import epoch_steps
from vldistill.trainers.students import build_student

log = logging.getLogger(__name__)
# Config keys of a loss group that the loop consumes (not constructor arguments).
LOOP_KEYS = {"vld": ("sentences_file", "bank_size", "bank_seed")}


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


def check_registries(cfg: TrainConfig) -> None:
    """Names and files the config points at exist (cheap; runs before anything is written)."""
    check(cfg)  # trainers/config/check.py, the one validator: also run on every point of a search space


def _lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def pick_device(cfg: TrainConfig) -> torch.device:
    """``device=auto``: the current CUDA device if there is one (Ray Train sets it per worker)."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {cfg.device!r} requested but CUDA is not available here")
    return torch.device("cuda", torch.cuda.current_device())


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.bf16_on(device.type):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _build_optimizer(student: torch.nn.Module, criterion: torch.nn.Module, cfg: TrainConfig):
    params = list(student.parameters()) + list(criterion.parameters())  # losses may own weights
    o = cfg.optim
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=o.lr)


def train(cfg: TrainConfig, reporter: Reporter | None = None,
          ckpt_dir: str | os.PathLike | None = None, build: bool = True) -> dict[str, float]:
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
        build: build missing shared assets here (``vldistill train``); False in sweep trials,
            which only read them (``trainers/assets.py``: a miss is a ``MissingAssetError``).

    Returns:
        The last epoch's row: student metrics, ``teacher/...`` metrics, cost, floors, sizes.
    """
    t_start = time.time()
    cfg = _setup(cfg)
    reporter = reporter or LogReporter()
    ckpt_path = Path(ckpt_dir) if ckpt_dir is not None else None
    t = _build(cfg, build)
    start_epoch, last = restore(ckpt_path, t.student, t.opt, t.criterion)
    _ready(t)
    epochs, row = cfg.optim.epochs, {}
    for epoch in range(start_epoch, epochs):
        t_epoch = time.time()
        row = _epoch_row(t, epoch, _train_epoch(t, epoch), t_epoch)
        final = epoch + 1 == epochs
        if final or (epoch + 1) % cfg.eval.every == 0:  # other epochs carry no (stale) accuracy
            last = _evaluate(t, final)
            row.update(last)
        if final:
            row.update(_cost(t))
            row["wall_seconds"] = time.time() - t_start
        # the final checkpoint keeps the whole final row: a resumed finished run re-reports it
        reporter.report(row, _save(t, ckpt_path, epoch + 1, row if final else last))
    if start_epoch >= epochs:  # resumed a finished run (a killed driver): nothing runs twice
        row = last if last.get("epoch") == epochs else {  # (checkpoints of older versions)
            "epoch": epochs, "epochs": epochs, **_evaluate(t, final=True, mixed=False), **_cost(t)}
        reporter.report(row, str(ckpt_path) if t.dist.main and ckpt_path else None)
    return row


@dataclass
class _Trial:
    """Everything the epochs of one trial use, made by :func:`_build` and :func:`_ready`."""

    cfg: TrainConfig
    build: bool  # build missing shared assets (see ``train``)
    dist: Dist
    device: torch.device
    splits: Any  # data.folder.Splits
    teacher: Any  # teachers.Teacher or LazyTeacher: frozen, never wrapped
    text: Any  # text.TextTargets
    static: dict[str, float]  # teacher metrics, floors and sizes: part of the final row
    student: torch.nn.Module  # the bare module: evaluated, measured and checkpointed
    criterion: WeightedLoss
    opt: torch.optim.Optimizer
    train_set: Any  # the training split, without its labels when ``distill.labels=false``
    token_what: tuple[str, ...]  # teacher token outputs the token losses need; () for none
    model: torch.nn.Module | None = None  # the student as trained (DDP, compiled): _ready
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # text targets, on device
    captions: torch.Tensor | None = None  # ``cap``: one teacher caption embedding per image
    cache: Any = None  # cache.TeacherCache of teacher targets, when the views are replayed

    @property
    def steps_per_epoch(self) -> int:
        return max(len(self.train_set) // self.cfg.optim.batch_size, 1)  # drop_last: full batches

    @property
    def crit_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.criterion.parameters() if p.requires_grad]  # outside DDP

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The student's embedding (evaluation: the unwrapped module)."""
        return self.student(images)["embed"]


def _setup(cfg: TrainConfig) -> TrainConfig:
    """Check the config, point it at the local cache and set the torch threads."""
    check_registries(cfg)
    cfg = with_local_cache(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return cfg


def _build(cfg: TrainConfig, build: bool) -> _Trial:
    """Data, frozen teacher and its targets (``assets.prepare``), the seeded student, the
    losses and the optimiser."""
    dist, device = dist_info(), pick_device(cfg)
    if cfg.optim.batch_size % dist.world:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} must be divisible by the "
                          f"{dist.world} workers")
    splits, teacher, text, static = prepare(cfg, build)
    teacher.to(device)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, teacher.embed_dim).to(device)
    criterion, what = _build_criterion(cfg, student, teacher, device)
    opt = _build_optimizer(student, criterion, cfg)
    # Label-free runs train on images only: the labels are not in the object batches come from.
    train_set = splits.train if cfg.distill.labels else UnlabelledImages.of(splits.train)
    return _Trial(cfg=cfg, build=build, dist=dist, device=device, splits=splits, teacher=teacher,
                  text=text, static=static, student=student, criterion=criterion, opt=opt,
                  train_set=train_set, token_what=what)


def _build_criterion(cfg: TrainConfig, student: torch.nn.Module, teacher: Any,
                     device: torch.device) -> tuple[WeightedLoss, tuple[str, ...]]:
    """The weighted losses, and the token outputs (``tokens``, ``attn``) they need.

    P4's token losses tap the student's and the teacher's ViT blocks (before DDP)."""
    loss_kwargs = {n: {k: x for k, x in (asdict(v) if hasattr(v, "__dataclass_fields__") else dict(v)).items()
                       if k not in LOOP_KEYS.get(n, ())}
                   for n in cfg.distill.weights if (v := getattr(cfg.distill, n, None)) is not None}
    token_losses = [n for n in ("attn", "token_nce") if cfg.distill.weights.get(n, 0.0) > 0]
    tok = cfg.distill.tokens
    what = tuple(k for n, k in (("token_nce", "tokens"), ("attn", "attn")) if n in token_losses)
    if token_losses:
        s_tap = student.enable_tokens(tok.student_layers, what=what)
        t_tap = teacher.token_tap(tok.teacher_layers)
        if "token_nce" in token_losses:
            loss_kwargs["token_nce"] = {**loss_kwargs.get("token_nce", {}),
                                        "student_dim": s_tap.width, "teacher_dim": t_tap.width}
    return WeightedLoss(cfg.distill.weights, loss_kwargs).to(device), what


def _ready(t: _Trial) -> None:
    """After resuming: wrap the student (DDP, compile), put the text targets on the device
    and open the teacher cache when the views are replayed."""
    t.model = wrap_model(t.student, t.cfg, t.dist, t.device)
    text = t.text
    t.targets = {"text_embed": text.base.to(t.device), "vocab_embed": text.vocab.to(t.device)}
    if text.sentences is not None:
        t.targets["sentence_embed"] = text.sentences.to(t.device)
    t.captions = text.captions.to(t.device) if text.captions is not None else None
    if needs_view_cache(t.cfg):  # P4 runs the teacher online (tokens)
        t.cache = view_cache(t.teacher, t.splits, t.cfg, t.build)


def _train_epoch(t: _Trial, epoch: int) -> dict[str, float]:
    """One epoch of steps; the sums of each logged loss term, over all ranks' shards."""
    cfg = t.cfg
    t.model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(t.train_set), generator=gen)
    sums: dict[str, float] = {}
    for i in epoch_steps(t.steps_per_epoch, epoch + 1, cfg.optim.epochs, cfg.progress and t.dist.main):
        for k, v in _step(t, epoch, i, order).items():
            sums[k] = sums.get(k, 0.0) + v
    return mean_over_ranks(sums, t.dist)


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch gathered from the (memory-mapped) image store, to the trial's device as
    ``uint8`` -- a quarter of the float bytes -- pinned and asynchronous on CUDA; its views
    are then rendered there (same recipe and seeds, so cached targets still match)."""
    if device.type != "cuda":
        return images
    return images.pin_memory().to(device, non_blocking=True)


def _step(t: _Trial, epoch: int, i: int, order: torch.Tensor) -> dict[str, float]:
    """Step ``i`` of ``epoch``: this rank's views of its shard, the losses, one update."""
    cfg, o, device = t.cfg, t.cfg.optim, t.device
    idx = shard(order, i, o.batch_size, t.dist)
    view = epoch % cfg.augment.views if cfg.augment.views else epoch
    x = make_views(_to_device(t.train_set.images[idx], device), view_seed(idx, view), cfg.augment)
    if cfg.channels_last_on(device.type):
        x = x.contiguous(memory_format=torch.channels_last)
    batch = {"label": t.train_set.labels[idx].to(device)} if cfg.distill.labels else {}
    with _autocast(cfg, device):
        s_out, t_out = _forward(t, x, idx, view)
        loss, logs = t.criterion(s_out, t_out, batch)
    if not all_finite(bool(torch.isfinite(loss)), t.dist, device):
        raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1} step {i + 1}: "
                                 f"terms {logs}")
    steps = t.steps_per_epoch
    for g in t.opt.param_groups:
        g["lr"] = _lr(epoch * steps + i, steps * o.epochs, steps * o.warmup_epochs, o.lr)
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    average_grads(t.crit_params, t.dist)  # loss-owned weights are outside DDP
    if o.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), o.grad_clip)
    t.opt.step()
    return logs


def _forward(t: _Trial, x: torch.Tensor, idx: torch.Tensor,
             view: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The student's outputs and the teacher's targets for the batch ``x`` (images ``idx``)."""
    if t.token_what:
        t_img, t_tok = t.teacher.encode_images_with_tokens(x, t.cfg.distill.tokens.teacher_layers,
                                                           t.token_what)
        s_out = t.model(x, with_tokens=True)
    else:
        t_img = t.cache.lookup(idx, view).to(t.device) if t.cache else t.teacher.encode_images(x)
        t_tok, s_out = {}, t.model(x)
    t_out = {"image_embed": t_img, **t.targets, **t_tok}
    if t.captions is not None:
        t_out["caption_embed"] = t.captions[idx.to(t.device)]
    return s_out, t_out


def _epoch_row(t: _Trial, epoch: int, sums: dict[str, float], t_epoch: float) -> dict[str, float]:
    """The row of a finished epoch, before evaluation: the mean of each loss term per step."""
    return {"epoch": epoch + 1, "epochs": t.cfg.optim.epochs, "lr": t.opt.param_groups[0]["lr"],
            **{k: v / t.steps_per_epoch for k, v in sums.items()},
            "train_seconds": time.time() - t_epoch}


def _evaluate(t: _Trial, final: bool, mixed: bool = True) -> dict[str, float]:
    """Student metrics on the evaluation splits (under ``precision`` when ``mixed``); the
    final evaluation adds ``evaluation.final_metrics`` (fp32: the few-shot copy is
    fine-tuned there)."""
    t.student.eval()
    kept: dict = {}
    with _autocast(t.cfg, t.device) if mixed else contextlib.nullcontext():
        m = evaluate(t.encode, t.splits, t.text, t.cfg.eval.batch_size, t.device, t.dist, keep=kept)
    if final:
        t_eval = _teacher_embeddings(t.teacher, t.splits, t.cfg, t.build)
        m.update(final_metrics(t.student, t_eval, t.splits, t.text, t.cfg, t.device, t.dist, kept))
    return m


def _cost(t: _Trial) -> dict[str, float]:
    """The final row's student cost (size, FLOPs, latency) and the static teacher columns."""
    return {**student_cost(t.student, t.cfg.data.image_size, t.cfg.eval.latency_iters, cfg=t.cfg),
            **t.static}


def _save(t: _Trial, ckpt_path: Path | None, epoch: int, metrics: dict[str, float]) -> str | None:
    """Rank 0 writes ``last.pt`` after ``epoch`` epochs; the directory to report, if any."""
    if ckpt_path is None or not t.dist.main:
        return None
    save_checkpoint(trial_state(t.student, t.opt, t.criterion, epoch, metrics), ckpt_path)
    return str(ckpt_path)
