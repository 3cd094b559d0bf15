"""The samplers and trial schedulers a search space may name: one registry each, name -> builder.

Like the losses' registry (``trainers/losses``), each table is the one place that lists the
known names: the loader (``loader.py``) refuses ``sampler:`` or ``scheduler.type:`` values
that are not keys here and lists the keys, and the sweep driver (``platform/sweep.py
_run_tune``) builds the chosen ones by looking them up. Adding a sampler or a scheduler is a
builder here plus its entry.

- ``SAMPLERS[name](space)`` -> an Optuna sampler seeded with ``space.sampler_seed``:
  ``tpe`` (multivariate, grouped), ``random``, ``grid`` (every point, in a seeded order;
  ``suggest.grid_sampler``).
- ``SCHEDULERS[name](space, epochs, schedulers)`` -> a Ray Tune trial scheduler: ``asha``
  (early stopping by epochs; ``max_t`` defaults to ``epochs``, the base config's
  ``optim.epochs``) or ``none`` (Tune's FIFO: every trial runs to its end).

Importing this module imports neither optuna nor Ray: a sampler builder imports optuna when
called, and a scheduler builder is handed Ray Tune's ``schedulers`` module by the driver,
so Ray stays under ``platform/`` (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vldistill.search_spaces.spec import SearchSpace

SamplerBuilder = Callable[["SearchSpace"], Any]
SchedulerBuilder = Callable[["SearchSpace", int, ModuleType], Any]


def _tpe(space: SearchSpace) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=space.sampler_seed, multivariate=True, group=True)


def _random(space: SearchSpace) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=space.sampler_seed)


def _grid(space: SearchSpace) -> Any:
    from vldistill.search_spaces.suggest import grid_sampler

    # ask-and-tell safe: ignores the grid's study.stop() (invalid outside optimize)
    return grid_sampler(space, seed=space.sampler_seed)


def _asha(space: SearchSpace, epochs: int, schedulers: ModuleType) -> Any:
    s = space.scheduler
    return schedulers.ASHAScheduler(time_attr="epoch", metric=space.metrics[0], mode=space.modes[0],
                                    max_t=s.max_t or epochs, grace_period=s.grace_period,
                                    reduction_factor=s.reduction_factor)


def _fifo(space: SearchSpace, epochs: int, schedulers: ModuleType) -> Any:
    return schedulers.FIFOScheduler()


SAMPLERS: dict[str, SamplerBuilder] = {"tpe": _tpe, "random": _random, "grid": _grid}
"""Optuna samplers by the name ``sampler:`` gives (default ``tpe``)."""

SCHEDULERS: dict[str, SchedulerBuilder] = {"asha": _asha, "none": _fifo}
"""Ray Tune trial schedulers by the name ``scheduler.type`` gives (default ``none``)."""
