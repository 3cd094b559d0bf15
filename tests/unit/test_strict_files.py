"""Strict YAML/JSON readers: a repeated key is an error naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

import vldistill
from vldistill.trainers.strict_files import DuplicateKeyError, load_json, load_yaml, read_json, read_yaml


def test_repeated_yaml_key_names_file_line_and_key():
    with pytest.raises(DuplicateKeyError) as e:
        load_yaml("name: s\nmetric: novel_acc\nparams:\n  optim.lr: {choice: [0.1]}\nmetric: hmean\n", "s.yaml")
    assert (e.value.source, e.value.line, e.value.key, e.value.first_line) == ("s.yaml", 5, "metric", 2)
    assert str(e.value).startswith("s.yaml, line 5: repeated key 'metric' (first on line 2)")


def test_repeated_yaml_key_in_a_nested_mapping_and_flow_style():
    with pytest.raises(DuplicateKeyError, match=r"line 3: repeated key 'a'"):
        load_yaml("p:\n  a: 1\n  a: 2\n")
    with pytest.raises(DuplicateKeyError, match=r"line 1: repeated key 'x'"):
        load_yaml("q: {x: 1, x: 2}\n")


def test_yaml_without_repeats_reads_as_safe_load_does():
    import yaml

    text = "a: 1\nb: &anchor {c: [1, 2], d: null}\ne:\n  <<: *anchor\n  f: 1.5e-3\nlist: [{k: 1}, {k: 2}]\n"
    assert load_yaml(text) == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError):  # still safe: no Python objects
        load_yaml("x: !!python/object/apply:os.system ['true']\n")


def test_repeated_json_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text('{\n  "base": ["a", "b"],\n  "novel": ["c"],\n  "base": ["d"]\n}\n')
    with pytest.raises(DuplicateKeyError) as e:
        read_json(path)
    assert (e.value.source, e.value.line, e.value.key, e.value.first_line) == (str(path), 4, "base", 2)


def test_repeated_json_key_is_found_in_its_own_object_only():
    text = '{"a": {"k": 1, "s": "x\\"k\\""},\n "b": [{"k": 2}],\n "c": {"k": 3,\n   "k": 4}}'
    with pytest.raises(DuplicateKeyError) as e:
        load_json(text, "f.json")
    assert (e.value.line, e.value.key, e.value.first_line) == (4, "k", 3)
    assert load_json('{"a": [1, {"b": 2}], "c": "d"}') == {"a": [1, {"b": 2}], "c": "d"}


def test_every_shipped_yaml_file_has_unique_keys():
    root = Path(vldistill.__file__).parent
    files = sorted(root.glob("conf/**/*.yaml")) + sorted(root.glob("search_spaces/*.yaml"))
    assert len(files) > 20
    for path in files:
        read_yaml(path)  # raises on a repeated key
