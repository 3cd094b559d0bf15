"""Dotted paths into nested config dicts (``"distill.weights.mse"``).

Search-space keys, trial rows and W&B configs all name config values by dotted path; these
helpers convert between that flat form and the nested dict a ``TrainConfig`` is built from.
Lists and tuples are leaves, and so are empty mappings (so ``unflatten(flatten(d)) == d``).
"""

from __future__ import annotations

from typing import Any


def get_dotted(d: dict, key: str) -> Any:
    """The value at ``key`` in nested ``d``.

    Raises:
        KeyError: naming the missing part of the path.
    """
    cur: Any = d
    for i, part in enumerate(key.split(".")):
        if not isinstance(cur, dict) or part not in cur:
            where = ".".join(key.split(".")[:i]) or "<root>"
            raise KeyError(f"{key!r}: {where} has no key {part!r}")
        cur = cur[part]
    return cur


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set ``key`` in nested ``d`` in place, creating missing intermediate dicts.

    Raises:
        ValueError: if an intermediate part of the path holds a non-mapping value.
    """
    parts = key.split(".")
    cur = d
    for i, part in enumerate(parts[:-1]):
        if part not in cur:
            cur[part] = {}
        elif not isinstance(cur[part], dict):
            where = ".".join(parts[:i + 1])
            raise ValueError(f"cannot set {key!r}: {where} holds {cur[part]!r}, not a mapping")
        cur = cur[part]
    cur[parts[-1]] = value


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{dotted key: leaf}`` (lists, tuples and empty dicts are leaves).

    Raises:
        ValueError: for a key containing a dot (it could not be unflattened).
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        if "." in str(k):
            raise ValueError(f"key {prefix}{k!r} contains '.', so it cannot be flattened")
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(d: dict[str, Any]) -> dict:
    """``{dotted key: value}`` -> nested dict (inverse of :func:`flatten`).

    Raises:
        ValueError: when one key is a prefix of another (``a: 1`` and ``a.b: 2``).
    """
    out: dict = {}
    for key, value in d.items():
        try:
            get_dotted(out, key)  # exists only if a longer key created it as a mapping
        except KeyError:
            set_dotted(out, key, value)  # raises if a shorter key holds a leaf here
        else:
            raise ValueError(f"conflicting keys: {key!r} is also the prefix of another key")
    return out
