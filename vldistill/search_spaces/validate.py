"""Check a search space against the typed config before anything is launched.

A sweep should fail in its first second, not in its fortieth trial: every parameter key must
be a path of ``TrainConfig`` (walked field by field; a ``dict[str, X]`` field such as
``distill.weights`` accepts any sub-key with values of type ``X``), and every value a trial
can set must compose into a config that ``config.from_dict`` accepts and whose registry
names (losses, timm students, open_clip teachers) exist. Combinations of categorical values
are checked too when there are few enough (e.g. every loss weight at 0 at once).

torch, timm and open_clip are imported lazily, only when a parameter needs their registry;
ray is never imported.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import types
import typing
from typing import Any

from vldistill.search_spaces.dotted import set_dotted
from vldistill.search_spaces.spec import ParamSpec, SearchSpace, SearchSpaceError, same_value

log = logging.getLogger(__name__)

RESERVED = {
    "seed": "trial seeds come from the space's `seeds`",
    "out_dir": "the sweep sets every trial's out_dir",
    "cache_dir": "the sweep shares one cache_dir between trials",
}
MAX_COMBINATIONS = 4096  # above this many categorical combinations only single values are checked


def check_conditions(params: dict[str, ParamSpec], source: str) -> None:
    """Every ``when`` names an earlier choice/grid param and one of its choices.

    Raises:
        SearchSpaceError: naming the file, the conditional param and the condition's key.
    """
    seen: dict[str, ParamSpec] = {}
    for key, p in params.items():
        where = f"{source}: params.{key}.when"
        for ck, cv in (p.when or {}).items():
            if ck not in seen:
                what = ("the param itself" if ck == key else "declared after it" if ck in params
                        else "not a param of this space")
                raise SearchSpaceError(f"{where}: {ck!r} is {what}; a condition names a param "
                                       f"declared earlier: {', '.join(seen) or 'none'}")
            parent = seen[ck]
            if not parent.categorical:
                raise SearchSpaceError(f"{where}: {ck!r} is a {parent.kind} param; conditions "
                                       "need a choice/grid param")
            if not any(same_value(cv, v) for v in parent.values):
                raise SearchSpaceError(f"{where}: {ck}={cv!r} is not among its choices "
                                       f"{list(parent.values)!r}")
        seen[key] = p


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _check_path(key: str, where: str) -> None:
    """``key`` walks ``TrainConfig`` down to a value (not a whole config group)."""
    from vldistill.trainers.config import TrainConfig

    tp: Any = TrainConfig
    walked: list[str] = []
    for part in key.split("."):
        tp = _unwrap_optional(tp)
        here = ".".join(walked) or "<root>"
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise SearchSpaceError(f"{where}: unknown config path {key!r}: {here} has no "
                                       f"{part!r}; valid keys under {here}: {', '.join(names)}")
            tp = typing.get_type_hints(tp)[part]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif tp is Any:
            return  # below an untyped value (e.g. student.kwargs.*): its consumer checks it
        else:
            raise SearchSpaceError(f"{where}: unknown config path {key!r}: {here} is a value "
                                   f"({getattr(tp, '__name__', tp)}), it has no sub-key {part!r}")
        walked.append(part)
    tp = _unwrap_optional(tp)
    if dataclasses.is_dataclass(tp):
        fields = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(tp))
        raise SearchSpaceError(f"{where}: {key!r} is a config group, not a value; sweep one of "
                               f"its fields: {fields}")


def _ancestors(params: dict[str, ParamSpec], key: str) -> dict[str, Any]:
    """Values the conditions of ``key`` (and of their params, recursively) require."""
    out: dict[str, Any] = {}
    for ck, cv in (params[key].when or {}).items():
        out.update(_ancestors(params, ck))
        out[ck] = cv
    return out


def _yaml_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
            return " (PyYAML reads numbers like 1e-3 as strings: write 1.0e-3)"
        except ValueError:
            pass
    return ""


def _check_config(base_config: dict, assignment: dict[str, Any], what: str) -> None:
    from vldistill.trainers.config import ConfigError, from_dict

    cfg = copy.deepcopy(base_config)
    try:
        for k, v in assignment.items():
            set_dotted(cfg, k, copy.deepcopy(v))
        from_dict(cfg)
    except (ConfigError, ValueError) as e:
        hint = "".join(_yaml_hint(v) for v in assignment.values())
        raise SearchSpaceError(f"{what} gives an invalid config: {e}{hint}") from None


def _check_registries(p: ParamSpec, where: str) -> None:
    """Names that must exist in a registry: losses, timm students, open_clip teachers."""
    parts = p.key.split(".")
    names: list[str] = []
    if parts[:2] == ["distill", "weights"]:
        if len(parts) == 3:
            names = [parts[2]]
        else:  # the whole mapping is swept
            names = [n for v in p.check_values() if isinstance(v, dict) for n in v]
        if names:
            from vldistill.trainers.losses import LOSSES

            for n in names:
                if n not in LOSSES:
                    raise SearchSpaceError(f"{where}: unknown loss {n!r}; known losses: "
                                           f"{', '.join(sorted(LOSSES))}")
    elif p.key == "student.name" and p.categorical:
        from vldistill.trainers.config import ConfigError
        from vldistill.trainers.students import check_student_name

        for v in p.values:
            try:
                check_student_name(v)
            except ConfigError as e:
                raise SearchSpaceError(f"{where}: value {v!r}: {e}") from None
    elif p.key == "teacher.name" and p.categorical:
        import open_clip

        known = set(open_clip.list_models())
        for v in p.values:
            if v != "embedded" and v not in known:
                raise SearchSpaceError(f"{where}: unknown teacher {v!r}; use 'embedded' or one "
                                       "of open_clip.list_models()")


def _check_combinations(space: SearchSpace, base_config: dict, src: str) -> None:
    """Every distinct combination of categorical values (respecting ``when``) is valid."""
    cat = [p for p in space.params.values() if p.categorical]
    n = math.prod(len(p.values) for p in cat)
    if len(cat) < 2 or n > MAX_COMBINATIONS:
        if len(cat) >= 2:
            log.debug("%s: %d combinations, checking single values only", src, n)
        return
    seen = set()
    for combo in itertools.product(*(p.values for p in cat)):
        chosen: dict[str, Any] = {}
        for p, v in zip(cat, combo):
            if p.is_active(chosen):
                chosen[p.key] = v
        sig = json.dumps(list(chosen.items()))
        if sig in seen:
            continue
        seen.add(sig)
        _check_config(base_config, chosen,
                      f"{src}: params combination {chosen!r} (exclude it with `when` or change "
                      "the choices)")


def validate_search_space(space: SearchSpace, base_config: dict) -> None:
    """Check every param path, value, registry name and condition against the typed config.

    Args:
        space: A loaded search space.
        base_config: The plain nested dict of a composed ``TrainConfig`` (as
            ``vldistill.trainers.config.to_dict`` returns), composed with ``space.overrides``.

    Raises:
        SearchSpaceError: naming the file, the param key and the offending value.
    """
    from vldistill.trainers.config import ConfigError, from_dict

    src = space.source or space.name
    try:
        from_dict(copy.deepcopy(base_config))
    except ConfigError as e:
        raise SearchSpaceError(f"{src}: the base config (overrides {list(space.overrides)}) is "
                               f"invalid: {e}") from None
    check_conditions(space.params, src)
    if space.design is not None:
        _check_design(space.design, base_config, src)
    for key, p in space.params.items():
        where = f"{src}: params.{key}"
        if key in RESERVED:
            raise SearchSpaceError(f"{where}: cannot be swept: {RESERVED[key]}")
        _check_path(key, where)
        _check_registries(p, where)
        fixed = _ancestors(space.params, key)
        for value in p.check_values():
            _check_config(base_config, {**fixed, key: value}, f"{where}: value {value!r}")
    _check_combinations(space, base_config, src)
    _check_budget(space, base_config, src)


def _check_design(design: Any, base_config: dict, src: str) -> None:
    """Every key a design sets is a config path; every point composes into a valid config."""
    for key in design.keys:
        where = f"{src}: design: {key}"
        if key in RESERVED:
            raise SearchSpaceError(f"{where}: cannot be set: {RESERVED[key]}")
        _check_path(key, where)
    for point in design.points:
        _check_config(base_config, point.assignment, f"{src}: design point {point.name!r}")


def _check_budget(space: SearchSpace, base_config: dict, src: str) -> None:
    s = space.scheduler
    if s.type == "asha" and "optim.epochs" not in space.params:
        epochs = base_config.get("optim", {}).get("epochs")
        max_t = s.max_t or epochs
        if max_t is not None and s.grace_period > max_t:
            raise SearchSpaceError(f"{src}: scheduler.grace_period: {s.grace_period} > max_t "
                                   f"{max_t} (optim.epochs of the base config: {epochs})")
        if s.max_t and epochs and s.max_t > epochs:
            log.warning("%s: scheduler.max_t %d > optim.epochs %d: trials end before ASHA's "
                        "last rungs", src, s.max_t, epochs)
    if space.sampler == "grid" and any(p.when for p in space.params.values()):
        log.warning("%s: the grid sampler enumerates conditional params even where they are "
                    "inactive, so some grid points repeat a configuration", src)
