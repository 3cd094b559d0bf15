"""Conversion: plain dicts (Hydra's output, ``config.yaml``, a Ray trial's dict) <-> the schema.

:func:`from_dict` builds the frozen dataclasses of ``schema.py`` from a nested plain dict:
an unknown key or a wrong type raises :class:`ConfigError` naming the dotted key and the
valid options, and a built :class:`TrainConfig` has passed the value rules of
``values.py`` (so no code ever holds a config with an out-of-range value).
:func:`to_dict` is the inverse; only such plain dicts cross into Ray, where workers call
:func:`from_dict` again. :func:`unknown_key_hint` walks a dotted path through the schema.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from vldistill.trainers.config.schema import ConfigError, TrainConfig
from vldistill.trainers.config.values import value_rules


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    """A bool, int, float or str leaf (bools are never numbers here)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (et,) = typing.get_args(tp)
        return [_convert(et, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return _convert_scalar(tp, value, key)


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys under "
            f"'{prefix.rstrip('.') or '<root>'}': {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict, cls: type = TrainConfig) -> Any:
    """Build a typed config from a plain dict (e.g. Hydra's resolved config); a
    :class:`TrainConfig` also passes the value rules (``values.py``).

    Registry names, compatibility and files are checked by ``check.check``, which callers
    run before anything is built or written.

    Raises:
        ConfigError: naming the first unknown key, wrong type or invalid value.
    """
    cfg = _build(cls, dict(data))
    if isinstance(cfg, TrainConfig):
        value_rules(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain-dict form (what crosses into Ray and what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def unknown_key_hint(key: str) -> str | None:
    """``unknown config key 'optim.lrr'; valid keys under 'optim': ...`` for a dotted ``key``
    whose last part is not a field of its (existing) parent group; None otherwise."""
    tp, parts = TrainConfig, key.split(".")
    for part in parts[:-1]:
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return None
        tp = hints[part]
    if not dataclasses.is_dataclass(tp) or parts[-1] in {f.name for f in dataclasses.fields(tp)}:
        return None
    parent = ".".join(parts[:-1]) or "<root>"
    return (f"unknown config key '{key}'; valid keys under '{parent}': "
            f"{', '.join(f.name for f in dataclasses.fields(tp))}")
