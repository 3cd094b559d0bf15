"""Data parallelism for one trial: where this process sits, its shard, and the reductions.

Ray Train sets up the ``torch.distributed`` group and calls ``trainers.loop.train`` on every
worker; nothing here starts or joins a group. Without a group every helper is the identity
of a single process (rank 0 of 1), so the loop reads the same either way:

- :func:`dist_info`: rank and world size;
- :func:`wrap_model`: ``channels_last``, DDP with synchronised BatchNorm (CUDA only: torch
  has no SyncBatchNorm on CPU, where gloo workers keep per-worker statistics), then
  ``torch.compile``, as configured;
- :func:`shard`: this rank's slice of a global batch;
- :func:`all_finite`, :func:`average_grads`, :func:`mean_over_ranks`: the collective steps
  of a training step and of an epoch's logged means.

Evaluation gathers its embeddings itself (``evaluation.embed_images``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vldistill.trainers.config import TrainConfig


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


def wrap_model(student: torch.nn.Module, cfg: TrainConfig, dist: Dist,
               device: torch.device) -> torch.nn.Module:
    """channels_last / torch.compile / DDP (with synchronised BatchNorm) as configured."""
    model = student
    if cfg.channels_last_on(device.type):
        model = model.to(memory_format=torch.channels_last)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        if device.type == "cuda":  # SyncBatchNorm is CUDA-only; on CPU (gloo) BN stats are per worker
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    return model


def shard(order: torch.Tensor, step: int, batch_size: int, dist: Dist) -> torch.Tensor:
    """This rank's image indices of global batch ``step`` of ``order`` (an even split)."""
    local = batch_size // dist.world
    return order[step * batch_size:(step + 1) * batch_size][dist.rank * local:(dist.rank + 1) * local]


def all_finite(finite: bool, dist: Dist, device: torch.device) -> bool:
    """True when the loss is finite on every rank: all ranks stop together, since one rank
    stopping alone would hang the others in their next collective."""
    if dist.world == 1:
        return finite
    import torch.distributed as tdist
    flag = torch.tensor([1.0 if finite else 0.0], device=device)
    tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def average_grads(params: Iterable[torch.nn.Parameter], dist: Dist) -> None:
    """Average the gradients of parameters outside DDP (the loss modules' own weights)."""
    if dist.world == 1:
        return
    import torch.distributed as tdist
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad /= dist.world


def mean_over_ranks(sums: dict[str, float], dist: Dist) -> dict[str, float]:
    """Every rank saw its shard: the mean over ranks of per-rank sums, as one process would
    log them (keys sorted under DDP; unchanged, in their order, without)."""
    if dist.world == 1:
        return sums
    import torch.distributed as tdist
    keys = sorted(sums)
    tot = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    tdist.all_reduce(tot)
    return {k: float(v) / dist.world for k, v in zip(keys, tot)}
