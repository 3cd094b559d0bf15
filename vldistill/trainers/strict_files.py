"""Strict readers of the YAML and JSON files vldistill takes from users.

A repeated key in a mapping is an error here, naming the file, the line and the key. The
standard readers keep the last value silently: a search space with ``metric:`` twice
launched a whole sweep on the wrong objective, a ``classes.json`` with ``base`` twice lost a
class list. Everything that reads a search space, a saved config, ``classes.json``,
``attributes*.json`` or ``captions.json`` goes through :func:`read_yaml` /
:func:`read_json` (or the ``load_*`` forms for text already read).

No torch, no Ray: the search-space loader and the config layer import it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "load_json", "load_yaml", "read_json", "read_yaml"]


class DuplicateKeyError(ValueError):
    """A mapping repeats a key; ``str()`` names the file, the line and the key."""

    def __init__(self, source: str, line: int, key: Any, first_line: int | None):
        self.source, self.line, self.key, self.first_line = source, line, key, first_line
        first = f" (first on line {first_line})" if first_line else ""
        super().__init__(f"{source}, line {line}: repeated key {key!r}{first}; "
                         "each key may appear once in a mapping")


def _strict_loader(source: str) -> type:
    class StrictSafeLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses a repeated mapping key."""

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor``
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(source, line, key, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    pass
            return super().construct_mapping(node, deep)

    return StrictSafeLoader


def load_yaml(text: str, source: str = "<string>") -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` on a repeated key."""
    return yaml.load(text, Loader=_strict_loader(source))  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | Path) -> Any:
    return load_yaml(Path(path).read_text(), str(path))


class _Repeated(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Repeated(key)
        out[key] = value
    return out


def load_json(text: str, source: str = "<string>") -> Any:
    """``json.loads`` that raises :class:`DuplicateKeyError` on a repeated key."""
    try:
        return json.loads(text, object_pairs_hook=_no_repeats)
    except _Repeated as e:
        line, first = _locate_json_key(text, e.key)
        raise DuplicateKeyError(source, line, e.key, first) from None


def read_json(path: str | Path) -> Any:
    return load_json(Path(path).read_text(), str(path))


_COLON = re.compile(r"\s*:")


def _locate_json_key(text: str, key: str) -> tuple[int, int | None]:
    """Lines of the first repeated ``key`` in one object of valid JSON ``text`` (and of its
    first occurrence): a small scan of strings and brackets, run only after the parser found
    a repeat (the parser does not report positions to ``object_pairs_hook``)."""
    stack: list[dict | None] = []  # per open bracket: {key: line} for objects, None for arrays
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c in "{[":
            stack.append({} if c == "{" else None)
        elif c in "}]":
            stack.pop()
        elif c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if stack and stack[-1] is not None and _COLON.match(text, j + 1):
                name = json.loads(text[i:j + 1])
                if name == key and name in stack[-1]:
                    return line, stack[-1][name]
                stack[-1][name] = line
            line += text.count("\n", i, j)
            i = j
        i += 1
    return 0, None
