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
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

# The shared assets (dataset, teacher, text, teacher metrics, view cache) are prepared by
# trainers/assets.py; these names are re-exported for the callers that import them from here.
from vldistill.trainers.assets import (_EVAL_EMB, _FEEDS, _MEMO, _teacher_embeddings,  # noqa: F401
                                       cache_uri, needs_view_cache, prepare, resolve_dataset,
                                       view_cache, with_local_cache, world_spec)
from vldistill.trainers.config import ConfigError, TrainConfig, check
from vldistill.trainers.data.folder import UnlabelledImages
from vldistill.trainers.data.views import make_views, view_seed
from vldistill.trainers.evaluation import evaluate, final_metrics, student_cost
from vldistill.trainers.losses import WeightedLoss
from vldistill.trainers.progress import epoch_steps
from vldistill.trainers.students import build_student

log = logging.getLogger(__name__)
CKPT_NAME = "last.pt"
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
    splits, teacher, text, static = prepare(cfg, build)
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
    if needs_view_cache(cfg):  # P4 runs the teacher online (tokens)
        cache = view_cache(teacher, splits, cfg, build)
    local_bs = o.batch_size // dist.world
    encode = lambda im: student(im)["embed"]  # noqa: E731  (eval: the unwrapped module)
    row: dict[str, float] = {}

    for epoch in range(start_epoch, o.epochs):
        t_epoch = time.time()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n_train, generator=gen)
        sums: dict[str, float] = {}
        for i in epoch_steps(steps_per_epoch, epoch + 1, o.epochs, cfg.progress and dist.main):
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
                t_eval = _teacher_embeddings(teacher, splits, cfg, build)
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
               **final_metrics(student, _teacher_embeddings(teacher, splits, cfg, build), splits, text, cfg,
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
