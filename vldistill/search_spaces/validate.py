"""Check every point of a search space against the typed config before anything is launched.

A sweep should fail in its first second, not in its fortieth trial. Every parameter key must
be a path of ``TrainConfig`` (walked field by field; a ``dict[str, X]`` field such as
``distill.weights`` accepts any sub-key with values of type ``X``). Every value a trial can
set is then checked in combination with the base config -- ``config.from_dict`` (types)
and ``config.check`` (ranges, the world's recipe, registry names, loss / student / teacher /
data compatibility, files): first each value alone, then the
combinations of all parameters' values (choices, numeric bounds and baselines; inactive
``when`` params left out), all of them up to :data:`MAX_POINTS`, else a seeded sample of
that many (the message says which). Every problem found is reported at once (up to
:data:`MAX_PROBLEMS`), each naming the parameter(s), the value(s) and the rule.

torch, timm and open_clip are imported lazily, by the registry checks; ray is never imported.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import random
import types
import typing
from typing import Any

from vldistill.trainers.config.dotted import set_dotted
from vldistill.search_spaces.spec import ParamSpec, SearchSpace, SearchSpaceError, same_value

log = logging.getLogger(__name__)

RESERVED = {
    "seed": "trial seeds come from the space's `seeds`",
    "out_dir": "the sweep sets every trial's out_dir",
    "cache_dir": "the sweep shares one cache_dir between trials",
}
MAX_POINTS = 10_000  # combinations checked exhaustively up to this many, else a seeded sample this size
MAX_PROBLEMS = 20  # problems listed in one error (the rest are counted)


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


def _point_problem(base_config: dict, assignment: dict[str, Any]) -> str | None:
    """The rule that ``assignment`` (dotted key -> value) breaks on top of ``base_config``."""
    from vldistill.trainers.config import ConfigError, check, from_dict

    cfg = copy.deepcopy(base_config)
    try:
        for k, v in assignment.items():
            set_dotted(cfg, k, copy.deepcopy(v))
        check(from_dict(cfg))
    except (ConfigError, ValueError) as e:
        return f"{e}{''.join(_yaml_hint(v) for v in assignment.values())}"
    return None


def _check_loss_names(p: ParamSpec, where: str) -> None:
    """Swept loss names exist (other names are checked per value, by ``config.check``)."""
    parts = p.key.split(".")
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


def _check_param(space: SearchSpace, key: str, base_config: dict) -> tuple[str | None, dict]:
    """One parameter: the problem of its path or names (or None), then the problems of its
    values alone (with the values its ``when`` conditions require), by value (JSON)."""
    p, where = space.params[key], f"{space.source or space.name}: params.{key}"
    try:
        if key in RESERVED:
            raise SearchSpaceError(f"{where}: cannot be swept: {RESERVED[key]}")
        _check_path(key, where)
        _check_loss_names(p, where)
    except SearchSpaceError as e:
        return str(e), {}
    fixed = _ancestors(space.params, key)
    bad = {}
    for value in p.check_values():
        rule = _point_problem(base_config, {**fixed, key: value})
        if rule:
            bad[json.dumps([key, value], default=str)] = f"{where}: value {value!r}: {rule}"
    return None, bad


def _points(params: list[ParamSpec], seed: int) -> tuple[list[tuple], str]:
    """Value combinations of ``params`` to check, and which ones they are (all, or a sample)."""
    values = [p.check_values() for p in params]
    n = math.prod(len(v) for v in values)
    if n <= MAX_POINTS:
        return list(itertools.product(*values)), f"all {n} combinations of their values"
    rng = random.Random(seed)
    sample = [tuple(rng.choice(v) for v in values) for _ in range(MAX_POINTS)]
    return sample, (f"a seeded sample (sampler_seed {seed}) of {MAX_POINTS} of the {n} "
                    "combinations of their values")


def _check_combinations(space: SearchSpace, base_config: dict, params: list[ParamSpec],
                        bad_alone: set[str]) -> tuple[list[str], str]:
    """Problems that only combinations show (e.g. a token loss with a CNN student); one line
    per distinct rule, naming the first combination that breaks it."""
    src = space.source or space.name
    points, which = _points(params, space.sampler_seed)
    seen, rules = set(), {}
    for combo in points:
        chosen: dict[str, Any] = {}
        for p, v in zip(params, combo):
            if p.is_active(chosen):
                chosen[p.key] = v
        sig = json.dumps(list(chosen.items()), default=str)
        if sig in seen or any(json.dumps([k, v], default=str) in bad_alone for k, v in chosen.items()):
            continue
        seen.add(sig)
        rule = _point_problem(base_config, chosen)
        if rule and rule not in rules:
            shown = ", ".join(f"params.{k}={v!r}" for k, v in chosen.items())
            rules[rule] = (f"{src}: combination {shown}: {rule} (change the choices or exclude "
                           "the combination with `when`)")
    return list(rules.values()), which


def validate_search_space(space: SearchSpace, base_config: dict) -> None:
    """Check every param path, value, registry name, condition and combination of values.

    Args:
        space: A loaded search space.
        base_config: The plain nested dict of a composed ``TrainConfig`` (as
            ``vldistill.trainers.config.to_dict`` returns), composed with ``space.overrides``.

    Raises:
        SearchSpaceError: one line per problem (up to :data:`MAX_PROBLEMS`), each naming the
            file, the param key(s), the offending value(s) and the rule.
    """
    from vldistill.trainers.config import ConfigError, check, from_dict

    src = space.source or space.name
    try:
        check(from_dict(copy.deepcopy(base_config)))
    except ConfigError as e:
        raise SearchSpaceError(f"{src}: the base config (overrides {list(space.overrides)}) is "
                               f"invalid: {e}") from None
    check_conditions(space.params, src)
    if space.design is not None:
        _check_design(space.design, base_config, src)
    problems: list[str] = []
    clean, bad_alone = [], set()
    for key, p in space.params.items():
        wrong, bad = _check_param(space, key, base_config)
        problems += [wrong] if wrong else list(bad.values())
        if not wrong:  # a param whose path or name is wrong has no values to combine
            clean.append(p)
            bad_alone |= set(bad)
    which = "no combinations (one param)"
    if len(clean) >= 2:
        combos, which = _check_combinations(space, base_config, clean, bad_alone)
        problems += combos
    if problems:
        _raise_all(src, problems, which)
    log.info("%s: search space checked before launch: every value of every param alone, and %s", src, which)
    _check_budget(space, base_config, src)


def _raise_all(src: str, problems: list[str], which: str) -> None:
    if len(problems) == 1:
        raise SearchSpaceError(problems[0] + (f"; checked: {which}" if "combination" in which else ""))
    shown = problems[:MAX_PROBLEMS]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise SearchSpaceError(f"{src}: {len(problems)} problems found before launch (checked every "
                           f"value of every param alone, and {which}):\n  - " + "\n  - ".join(shown) + more)
def _check_design(design: Any, base_config: dict, src: str) -> None:
    """Every key a design sets is a config path; every point composes into a valid config."""
    for key in design.keys:
        where = f"{src}: design: {key}"
        if key in RESERVED:
            raise SearchSpaceError(f"{where}: cannot be set: {RESERVED[key]}")
        _check_path(key, where)
    problems = [f"{src}: design point {point.name!r} gives an invalid config: {why}" for point in design.points
                if (why := _point_problem(base_config, point.assignment))]
    if problems:
        _raise_all(src, problems, f"every design point ({len(design.points)})")


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
