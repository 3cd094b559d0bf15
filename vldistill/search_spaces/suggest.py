"""A search space as Optuna sees it: a define-by-run function and a grid.

Ray Tune's ``OptunaSearch`` accepts a define-by-run function: it calls it with an Optuna
trial, the function suggests values, and Ray reads them back from ``trial.params``. The
values of parameters whose choices are lists or mappings arrive there as JSON text (see
:mod:`vldistill.search_spaces.spec`); :func:`decode_params` turns them back into config
values. Optuna is never imported here: the functions only call methods of the trial.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vldistill.trainers.config.dotted import set_dotted
from vldistill.search_spaces.spec import DESIGN_PARAM, SearchSpace, SearchSpaceError

if TYPE_CHECKING:
    import optuna


def define_by_run(space: SearchSpace) -> Callable[["optuna.trial.Trial"], dict[str, Any]]:
    """Optuna define-by-run function suggesting every active parameter in YAML order.

    ``choice``/``grid`` -> ``suggest_categorical``, ``uniform`` -> ``suggest_float``,
    ``loguniform`` -> ``suggest_float(log=True)``, ``int`` -> ``suggest_int``. A parameter
    whose ``when`` condition is not met (or whose condition's parameter was itself inactive)
    is not suggested, so it is absent from ``trial.params``.

    Returns:
        A function of the trial returning ``{}`` (no constants: the values live in
        ``trial.params``, encoded as described in ``spec``; decode with :func:`decode_params`).
    """
    params = list(space.params.values())
    if space.design is not None:  # one categorical: the point's name (decode_params expands it)
        names = [p.name for p in space.design.points]
        return lambda trial: (trial.suggest_categorical(DESIGN_PARAM, names), {})[1]

    def suggest(trial: "optuna.trial.Trial") -> dict[str, Any]:
        chosen: dict[str, Any] = {}  # decoded values, for the conditions of later params
        for p in params:
            if not p.is_active(chosen):
                continue
            if p.categorical:
                chosen[p.key] = p.decode(trial.suggest_categorical(p.key, p.optuna_choices()))
            elif p.kind == "int":
                chosen[p.key] = trial.suggest_int(p.key, p.low, p.high)
            else:
                chosen[p.key] = trial.suggest_float(p.key, p.low, p.high,
                                                    log=p.kind == "loguniform")
        return {}

    return suggest


def grid_points(space: SearchSpace) -> dict[str, list]:
    """``{param: choices}`` for ``optuna.samplers.GridSampler``, encoded as Optuna sees them.

    Raises:
        SearchSpaceError: naming the first continuous parameter (a grid needs finite choices).
    """
    if space.design is not None:
        return {DESIGN_PARAM: [p.name for p in space.design.points]}
    grid = {}
    for p in space.params.values():
        if not p.categorical:
            raise SearchSpaceError(
                f"{space.source or space.name}: params.{p.key}: a {p.kind} parameter cannot be "
                "enumerated by a grid; use choice or grid, or sampler tpe/random")
        grid[p.key] = p.optuna_choices()
    return grid


def grid_sampler(space: SearchSpace, seed: int | None = None) -> "optuna.samplers.GridSampler":
    """An Optuna grid sampler over :func:`grid_points` that works with ask-and-tell.

    Args:
        space: A space whose params are all choice/grid.
        seed: Order of the grid points; default ``space.sampler_seed``.

    Returns:
        A :class:`~vldistill.search_spaces.samplers.AskTellGridSampler` (see there why plain
        ``GridSampler`` raises on the last ``study.tell`` outside ``study.optimize``).
    """
    from vldistill.search_spaces.samplers import AskTellGridSampler

    return AskTellGridSampler(grid_points(space),
                              seed=space.sampler_seed if seed is None else seed)


def decode_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's ``trial.params`` -> ``{dotted key: config value}`` (unknown keys kept as is).

    A design point's name (``{"design": "no_mse"}``) becomes the values it sets.
    """
    if space.design is not None and DESIGN_PARAM in params:
        rest = {k: v for k, v in params.items() if k != DESIGN_PARAM}
        return {**rest, **space.design.point(params[DESIGN_PARAM]).assignment}
    return {k: space.params[k].decode(v) if k in space.params else v for k, v in params.items()}


def apply_params(base_config: dict, params: dict[str, Any]) -> dict:
    """A deep copy of ``base_config`` with every ``{dotted key: value}`` of ``params`` set."""
    cfg = copy.deepcopy(base_config)
    for key, value in params.items():
        set_dotted(cfg, key, copy.deepcopy(value))
    return cfg
