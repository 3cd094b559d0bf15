"""Load search-space YAML into a :class:`SearchSpace`, with structural checks.

The schema (every top-level key; ``metric``, ``mode`` and ``params`` are required)::

    name: p1_losses                # default: the file's stem
    description: ...
    metric: novel_acc              # or a list: several metrics = multi-objective
    mode: max                      # max | min, or a list as long as `metric`
    sampler: tpe                   # tpe (default) | random | grid
    sampler_seed: 0
    scheduler: {type: asha, max_t: 20, grace_period: 4, reduction_factor: 2}   # or: none
    num_samples: 24                # configurations, each run once per seed (grid: default all)
    seeds: [0, 1, 2]               # default [0]; or racing: {min: 2, max: 8, margin: 0.01, futility: 0.1, variance: pooled}
    resources: {cpu: 1, gpu: 0, workers: 1}
    overrides: [experiment=smoke]  # Hydra overrides of every trial's base config
    params:                        # dotted TrainConfig paths, in suggestion order
      distill.weights.mse: {choice: [0.0, 1.0], baseline: 0.0}
      distill.vlprox.k: {choice: [1, 10, 256], when: {distill.weights.vlprox: 1.0}}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}    # also: uniform, int: [low, high] inclusive
    design: {type: loco, components: {mse: {distill.weights.mse: 0.0}}}  # instead of params

``design`` (see :mod:`~vldistill.search_spaces.designs`) generates the configurations from
the base config: loco, add_one, one_at_a_time, full_factorial, fractional_factorial. A
design space is enumerated like a grid (one Optuna parameter: the point's name).
``seeds`` as a mapping races the seeds (``vldistill/platform/racing.py``): it needs a finite
space (a design, or a grid without ``when``), scheduler none, and comparisons (a design, or
a baseline for every param).

Everything that needs the typed config (paths, values, registries) is checked by
:func:`~vldistill.search_spaces.validate.validate_search_space` against a composed config.
This module re-exports the whole public API so the sweep driver has one import.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from vldistill.search_spaces.designs import parse_design, space_comparisons
from vldistill.trainers.config.dotted import flatten, get_dotted, set_dotted, unflatten
from vldistill.search_spaces.registry import SAMPLERS, SCHEDULERS
from vldistill.search_spaces.spec import (CATEGORICAL_KINDS, KINDS, MODES, ParamSpec, Racing,
                                          Resources, Scheduler, SearchSpace, SearchSpaceError,
                                          same_value)
from vldistill.search_spaces.suggest import (apply_params, decode_params, define_by_run,
                                             grid_points, grid_sampler)
from vldistill.search_spaces.validate import check_conditions, validate_search_space
from vldistill.trainers.strict_files import DuplicateKeyError, read_yaml

SHIPPED_DIR = Path(__file__).resolve().parent

TOP_KEYS = ("name", "description", "metric", "mode", "sampler", "sampler_seed", "scheduler",
            "num_samples", "seeds", "resources", "overrides", "params", "design", "teacher_resources")
_REQUIRED = ("metric", "mode")
_RACING_KEYS = ("min", "max", "margin", "alpha", "futility", "variance")
_SPEC_KEYS = KINDS + ("baseline", "when")
_SCHEDULER_KEYS = ("type", "max_t", "grace_period", "reduction_factor")
_RESOURCE_KEYS = ("cpu", "gpu", "memory", "workers", "placement", "max_concurrent")
PLACEMENTS = ("pack", "spread", "strict_pack", "strict_spread")
TEACHER_RESOURCE_KEYS = ("cpu", "gpu", "max_actors")

# Metrics a trial reports (trainers/evaluation.py, loop.py); `<domain>`/`<kind>` are free.
KNOWN_METRICS = ("base_acc", "novel_acc", "hmean", "shift_acc", "shift_acc/<domain>",
                 "novel_acc/<kind>", "fewshot_novel_acc", "linear_probe_acc", "M_rel", "M_neigh",
                 "M_vlalign", "M_<rel|neigh|vlalign>/<base|novel>", "novel_acc_<k>shot",
                 "synthetic/<stat>", "student_params", "student_flops", "student_latency_ms",
                 "student_latency_ms_b8", "loss")
_METRIC_RE = re.compile(r"(" + "|".join(m for m in KNOWN_METRICS if "<" not in m)
                        + r"|shift_acc/[\w.-]+|novel_acc/[\w.-]+|novel_acc_\d+shot"
                        + r"|M_(?:rel|neigh|vlalign)/(?:base|novel)|synthetic/[\w.-]+)")


class _Err:
    """Builds errors that name the file: ``<file>: <key>: <message>``."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, key: str, msg: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.source}: {key}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _yaml_safe(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_yaml_safe(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _yaml_safe(x) for k, x in v.items())
    return v is None or isinstance(v, (str, bool, int, float))


def _bound(err: _Err, where: str, kind: str, v: Any) -> float | int:
    if kind == "int":
        if not _is_int(v):
            raise err(where, f"int bounds must be integers, got {v!r}")
        return v
    if isinstance(v, str):  # PyYAML reads 1e-4 (no dot) as a string: accept it here
        try:
            v = float(v)
        except ValueError:
            pass
    if not _is_number(v):
        raise err(where, f"{kind} bounds must be finite numbers, got {v!r}")
    return float(v)


def _parse_param(err: _Err, key: Any, spec: Any) -> ParamSpec:
    where = f"params.{key}"
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise err(where, "a param key must be a dotted config path like distill.weights.mse")
    if not isinstance(spec, dict):
        raise err(where, f"must be a mapping like {{choice: [...]}} with one of "
                         f"{', '.join(KINDS)}; got {spec!r}")
    unknown = [k for k in spec if k not in _SPEC_KEYS]
    if unknown:
        raise err(where, f"unknown spec key {unknown[0]!r}; valid: {', '.join(_SPEC_KEYS)}")
    kinds = [k for k in spec if k in KINDS]
    if not kinds:
        raise err(where, f"needs one kind: {', '.join(KINDS)}")
    if len(kinds) > 1:
        raise err(where, f"has several kinds ({', '.join(kinds)}); give exactly one of "
                         f"{', '.join(KINDS)}")
    kind, raw = kinds[0], spec[kinds[0]]
    values = low = high = None
    if kind in CATEGORICAL_KINDS:
        if not isinstance(raw, list) or not raw:
            raise err(where, f"{kind} needs a non-empty list of values, got {raw!r}")
        for i, v in enumerate(raw):
            if not _yaml_safe(v):
                raise err(where, f"{kind} value {v!r} is not a plain YAML value")
            if any(same_value(v, w) for w in raw[:i]):
                raise err(where, f"{kind} lists {v!r} twice")
        values = tuple(raw)
    else:
        if not isinstance(raw, list) or len(raw) != 2:
            raise err(where, f"{kind} needs [low, high], got {raw!r}")
        low, high = (_bound(err, where, kind, v) for v in raw)
        if low > high:
            raise err(where, f"{kind} low {low!r} > high {high!r}")
        if kind == "loguniform" and low <= 0:
            raise err(where, f"loguniform needs low > 0, got {low!r}")
    baseline = spec.get("baseline")
    if baseline is not None:
        if values is not None and not any(same_value(baseline, v) for v in values):
            raise err(where, f"baseline {baseline!r} is not among the choices {list(values)!r}")
        if values is None:
            if isinstance(baseline, str):
                baseline = _bound(err, where, kind, baseline)
            if not (_is_int(baseline) if kind == "int" else _is_number(baseline)):
                raise err(where, f"baseline {baseline!r} must be "
                                 f"{'an integer' if kind == 'int' else 'a number'}")
            if not low <= baseline <= high:
                raise err(where, f"baseline {baseline!r} is outside [{low!r}, {high!r}]")
    when = spec.get("when")
    if when is not None:
        if not isinstance(when, dict) or not when or not all(isinstance(k, str) for k in when):
            raise err(where, f"when must map earlier params to values, got {when!r}")
        when = dict(when)
    return ParamSpec(key=key, kind=kind, values=values, low=low, high=high, baseline=baseline,
                     when=when)


def _str_list(err: _Err, key: str, raw: Any) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x for x in items):
        raise err(key, f"must be a string or a non-empty list of strings, got {raw!r}")
    return tuple(items)


def _parse_objectives(err: _Err, data: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    metrics = _str_list(err, "metric", data["metric"])
    for m in metrics:
        if not _METRIC_RE.fullmatch(m):
            raise err("metric", f"unknown metric {m!r}; known: {', '.join(KNOWN_METRICS)}")
    if len(set(metrics)) != len(metrics):
        raise err("metric", f"lists a metric twice: {list(metrics)!r}")
    modes = _str_list(err, "mode", data["mode"])
    for m in modes:
        if m not in MODES:
            raise err("mode", f"unknown mode {m!r}; valid: {', '.join(MODES)}")
    if isinstance(data["mode"], str):
        modes = modes * len(metrics)
    elif len(modes) != len(metrics):
        raise err("mode", f"{len(modes)} modes for {len(metrics)} metrics; give one per metric")
    return metrics, modes


def _parse_scheduler(err: _Err, raw: Any, n_metrics: int) -> Scheduler:
    if raw is None or isinstance(raw, str):
        raw = {"type": raw or "none"}
    if not isinstance(raw, dict):
        raise err("scheduler", f"must be one of {', '.join(SCHEDULERS)} or a mapping, got {raw!r}")
    unknown = [k for k in raw if k not in _SCHEDULER_KEYS]
    if unknown:
        raise err(f"scheduler.{unknown[0]}", f"unknown key; valid: {', '.join(_SCHEDULER_KEYS)}")
    stype = raw.get("type", "none")
    if stype not in SCHEDULERS:
        raise err("scheduler.type", f"unknown scheduler {stype!r}; valid: {', '.join(SCHEDULERS)}")
    if stype == "none":
        extra = [k for k in raw if k != "type"]
        if extra:
            raise err(f"scheduler.{extra[0]}", "only applies to scheduler type asha")
        return Scheduler()
    if n_metrics != 1:
        raise err("scheduler.type", f"asha needs exactly one metric to compare trials, the space "
                                    f"has {n_metrics}; use scheduler: none for multi-objective")
    max_t, grace = raw.get("max_t"), raw.get("grace_period", 1)
    factor = raw.get("reduction_factor", 2.0)
    if max_t is not None and (not _is_int(max_t) or max_t < 1):
        raise err("scheduler.max_t", f"must be an integer >= 1 (epochs) or null, got {max_t!r}")
    if not _is_int(grace) or grace < 1:
        raise err("scheduler.grace_period", f"must be an integer >= 1 (epochs), got {grace!r}")
    if max_t is not None and grace > max_t:
        raise err("scheduler.grace_period", f"{grace} > max_t {max_t}")
    if not _is_number(factor) or factor <= 1:
        raise err("scheduler.reduction_factor", f"must be a number > 1, got {factor!r}")
    return Scheduler(type="asha", max_t=max_t, grace_period=grace, reduction_factor=float(factor))


def _parse_resources(err: _Err, raw: Any) -> Resources:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise err("resources", f"must be a mapping of {', '.join(_RESOURCE_KEYS)}, got {raw!r}")
    unknown = [k for k in raw if k not in _RESOURCE_KEYS]
    if unknown:
        raise err(f"resources.{unknown[0]}", f"unknown key; valid: {', '.join(_RESOURCE_KEYS)}")
    cpu, gpu, workers = raw.get("cpu", 1.0), raw.get("gpu", 0.0), raw.get("workers", 1)
    for key, v in (("cpu", cpu), ("gpu", gpu)):
        if not _is_number(v) or v < 0:
            raise err(f"resources.{key}", f"must be a number >= 0 (per worker), got {v!r}")
    if not _is_int(workers) or workers < 1:
        raise err("resources.workers", f"must be an integer >= 1, got {workers!r}")
    placement, cap = raw.get("placement", "pack"), raw.get("max_concurrent")
    if placement not in PLACEMENTS:
        raise err("resources.placement", f"must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if cap is not None and (not _is_int(cap) or cap < 1):
        raise err("resources.max_concurrent", f"must be an integer >= 1 (or null: every trial queued), got {cap!r}")
    memory = raw.get("memory", Resources.memory)
    if not _is_number(memory) or memory <= 0:
        raise err("resources.memory", f"must be a number > 0 (GiB per worker), got {memory!r}")
    return Resources(cpu=float(cpu), gpu=float(gpu), memory=float(memory), workers=workers, placement=placement,
                     max_concurrent=cap)


def parse_teacher_resources(err: _Err, raw: Any) -> dict:
    """``teacher_resources``: what each shared-asset task / view-cache actor asks Ray for
    (``cpu`` > 0, ``gpu`` >= 0 or ``auto``, ``max_actors`` >= 0; see platform/assets.py)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise err("teacher_resources", f"must be a mapping of {', '.join(TEACHER_RESOURCE_KEYS)}, got {raw!r}")
    for key, v in raw.items():
        if key not in TEACHER_RESOURCE_KEYS:
            raise err(f"teacher_resources.{key}", f"unknown key; valid: {', '.join(TEACHER_RESOURCE_KEYS)}")
        ok = {"cpu": _is_number(v) and v > 0, "gpu": v == "auto" or (_is_number(v) and v >= 0),
              "max_actors": _is_int(v) and v >= 0}[key]
        if not ok:
            want = {"cpu": "a number > 0", "gpu": "a number >= 0 or auto", "max_actors": "an integer >= 0"}[key]
            raise err(f"teacher_resources.{key}", f"must be {want}, got {v!r}")
    return dict(raw)
def _parse_racing(err: _Err, raw: dict) -> Racing:
    unknown = [k for k in raw if k not in _RACING_KEYS]
    if unknown:
        raise err(f"seeds.{unknown[0]}", f"unknown key; valid: {', '.join(_RACING_KEYS)}")
    lo, hi = raw.get("min", 2), raw.get("max", 8)
    margin, alpha = raw.get("margin", 0.01), raw.get("alpha", 0.05)
    if not _is_int(lo) or lo < 2:
        raise err("seeds.min", f"must be an integer >= 2 (an interval needs 2 seeds), got {lo!r}")
    if not _is_int(hi) or hi < lo:
        raise err("seeds.max", f"must be an integer >= min ({lo}), got {hi!r}")
    if not _is_number(margin) or margin < 0:
        raise err("seeds.margin", f"must be a number >= 0 (metric units), got {margin!r}")
    if not _is_number(alpha) or not 0 < alpha < 1:
        raise err("seeds.alpha", f"must be a number in (0, 1), got {alpha!r}")
    futility = raw.get("futility", 0.1)
    if not _is_number(futility) or not 0 <= futility < 1:
        raise err("seeds.futility", f"must be a number in [0, 1) (0: off), got {futility!r}")
    variance = raw.get("variance", "pooled")
    if variance not in ("pooled", "paired"):
        raise err("seeds.variance", f"must be pooled (a factorial's residual) or paired (each "
                  f"comparison's own differences), got {variance!r}")
    return Racing(min=lo, max=hi, margin=float(margin), alpha=float(alpha), futility=float(futility),
                  variance=variance)


def _parse_seeds(err: _Err, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw:
        raise err("seeds", f"must be a non-empty list of integers, got {raw!r}")
    for s in raw:
        if not _is_int(s):
            raise err("seeds", f"seed {s!r} is not an integer")
    if len(set(raw)) != len(raw):
        raise err("seeds", f"lists a seed twice: {raw!r}")
    return tuple(raw)


def _parse_overrides(err: _Err, raw: Any) -> tuple[str, ...]:
    raw = [] if raw is None else raw
    if not isinstance(raw, list):
        raise err("overrides", f"must be a list of Hydra overrides (key=value), got {raw!r}")
    for o in raw:
        if not isinstance(o, str) or not ("=" in o or o.startswith("~")):
            raise err("overrides", f"{o!r} is not a Hydra override like optim.epochs=4")
    return tuple(raw)


def search_space_from_dict(data: dict, source: str = "<dict>",
                           default_name: str = "") -> SearchSpace:
    """Structural checks of the YAML schema and the typed :class:`SearchSpace`.

    Args:
        data: The parsed YAML.
        source: What errors name as the file.
        default_name: ``name`` when the YAML has none (the file's stem).

    Raises:
        SearchSpaceError: naming ``source`` and the offending key.
    """
    err = _Err(source)
    _check_keys(err, data)
    name, description = _parse_name(err, data, default_name)
    metrics, modes = _parse_objectives(err, data)
    sampler, sampler_seed = _parse_sampler(err, data)
    sampler, params, design = _parse_params_or_design(err, data, sampler, source)
    num_samples = _parse_num_samples(err, data, sampler, params, design)
    racing, raw_seeds = None, data.get("seeds", [0])
    if isinstance(raw_seeds, dict):
        racing = _parse_racing(err, raw_seeds)
        raw_seeds = list(range(racing.max))
    space = SearchSpace(
        name=name, metrics=metrics, modes=modes, sampler=sampler,
        scheduler=_parse_scheduler(err, data.get("scheduler"), len(metrics)),
        num_samples=num_samples, seeds=_parse_seeds(err, raw_seeds),
        resources=_parse_resources(err, data.get("resources")), params=params,
        overrides=_parse_overrides(err, data.get("overrides")), sampler_seed=sampler_seed,
        description=description, source=source, design=design, racing=racing,
        teacher_resources=parse_teacher_resources(err, data.get("teacher_resources")))
    if racing is not None:
        _check_racing(err, space)
    return space


def _check_keys(err: _Err, data: Any) -> None:
    """A mapping of known top-level keys, the required ones present."""
    if not isinstance(data, dict):
        raise err("<root>", f"a search space is a mapping of {', '.join(TOP_KEYS)}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise err(str(unknown[0]), f"unknown top-level key; valid: {', '.join(TOP_KEYS)}")
    for key in _REQUIRED:
        if key not in data:
            raise err(key, "required")


def _parse_name(err: _Err, data: dict, default_name: str) -> tuple[str, str]:
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise err("name", f"must be a non-empty string, got {name!r}")
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        raise err("description", "must be a string")
    return name, description


def _parse_sampler(err: _Err, data: dict) -> tuple[str, int]:
    sampler = data.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise err("sampler", f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    sampler_seed = data.get("sampler_seed", 0)
    if not _is_int(sampler_seed):
        raise err("sampler_seed", f"must be an integer, got {sampler_seed!r}")
    return sampler, sampler_seed


def _parse_params_or_design(err: _Err, data: dict, sampler: str,
                            source: str) -> tuple[str, dict[str, ParamSpec], Any]:
    """``(sampler, params, design)``: a design is enumerated like a grid, without params;
    a grid needs every parameter categorical."""
    design = None
    if data.get("design") is not None:
        if data.get("params"):
            raise err("design", "a space gives either params or a design, not both")
        design = parse_design(data["design"], source)
        if sampler != "grid" and "sampler" in data:
            raise err("sampler", f"a design is enumerated like a grid; got sampler {sampler!r}")
        sampler, params = "grid", {}
    else:
        raw_params = data.get("params")
        if not isinstance(raw_params, dict) or not raw_params:
            raise err("params", "needs at least one parameter: {dotted.config.key: {choice: "
                                "[...]}} (or give a design)")
        params = {k: _parse_param(err, k, v) for k, v in raw_params.items()}
        check_conditions(params, source)
    if sampler == "grid":
        for p in params.values():
            if not p.categorical:
                raise err(f"params.{p.key}", f"sampler grid enumerates choices; a {p.kind} "
                                             "parameter has none (use choice/grid or tpe/random)")
    return sampler, params, design


def _parse_num_samples(err: _Err, data: dict, sampler: str, params: dict[str, ParamSpec],
                       design: Any) -> int:
    """``num_samples``; a grid or a design defaults to its size."""
    grid_size = (len(design.points) if design is not None else
                 math.prod(len(p.values) for p in params.values()) if sampler == "grid" else None)
    num_samples = data.get("num_samples", grid_size)
    if num_samples is None:
        raise err("num_samples", f"required for sampler {sampler}")
    if not _is_int(num_samples) or num_samples < 1:
        raise err("num_samples", f"must be an integer >= 1, got {num_samples!r}")
    return num_samples


def _check_racing(err: _Err, space: SearchSpace) -> None:
    """Racing needs every configuration known up front, full runs and comparisons."""
    if space.sampler != "grid":
        raise err("seeds", f"racing needs a finite space (a design or sampler grid), not "
                           f"sampler {space.sampler}")
    if space.scheduler.type != "none":
        raise err("seeds", "racing compares full runs; use scheduler: none")
    if space.num_samples < (space.grid_size() or 0):
        raise err("num_samples", f"racing runs every configuration ({space.grid_size()}), "
                                 f"got {space.num_samples}")
    try:
        comparisons = space_comparisons(space)
    except SearchSpaceError as e:
        raise err("seeds", str(e)) from None
    if not comparisons:
        raise err("seeds", "racing needs comparisons: a design, or a baseline for every param")


def list_search_spaces() -> list[str]:
    """Names of the search spaces shipped in ``vldistill/search_spaces/``, sorted."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def load_search_space(name_or_path: str) -> SearchSpace:
    """Load a shipped search space by name, or a YAML file by path (structural checks only).

    A string ending in ``.yaml``/``.yml`` or containing a path separator is a path; otherwise
    a shipped name, else an existing file of that name.

    Raises:
        SearchSpaceError: for an unknown name (listing the shipped ones), a missing or
            unreadable file, or a structural error (naming the file and the key).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    is_path = path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if not is_path:
        shipped = SHIPPED_DIR / f"{text}.yaml"
        if shipped.is_file():
            path = shipped
        elif not path.is_file():
            raise SearchSpaceError(f"unknown search space {text!r}; shipped: "
                                   f"{', '.join(list_search_spaces())} (or give a .yaml path)")
    if not path.is_file():
        raise SearchSpaceError(f"{path}: search space file not found")
    path = path.resolve()
    try:
        data = read_yaml(path)
    except DuplicateKeyError as e:
        raise SearchSpaceError(str(e)) from None
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"{path}: not valid YAML: {e}") from None
    return search_space_from_dict(data, source=str(path), default_name=path.stem)


__all__ = [
    "KNOWN_METRICS", "ParamSpec", "Racing", "Resources", "Scheduler", "SearchSpace", "SearchSpaceError",
    "apply_params", "decode_params", "define_by_run", "flatten", "get_dotted", "grid_points",
    "grid_sampler", "list_search_spaces", "load_search_space", "search_space_from_dict",
    "set_dotted", "unflatten", "validate_search_space",
]
