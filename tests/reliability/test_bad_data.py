"""Bad data: ``vldistill train data=folder data.root=<a broken dataset>`` exits 2 with one
message naming the file or class, before ``out_dir`` is created. Runs the CLI's ``main`` in
this process (the cost of a subprocess is the imports, not the check)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reliability_helpers import (FOLDER_BASE, FOLDER_NOVEL, error_lines, folder_overrides,
                                 make_folder_dataset)
from vldistill.platform.cli import main


@pytest.fixture(scope="module")
def valid_dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder") / "valid")


@pytest.fixture
def dataset(valid_dataset, tmp_path) -> Path:
    """A fresh copy of the valid dataset for a test to break."""
    return Path(shutil.copytree(valid_dataset, tmp_path / "data"))


def _run(capsys, root: Path, out: Path, smoke: list[str], *extra: str) -> tuple[int, str]:
    try:
        rc = main([*folder_overrides(root, out, smoke), *extra])
    except Exception as e:  # a crash is a failure of the contract, reported as such
        rc = f"crashed with {type(e).__name__}: {e}"
    return rc, capsys.readouterr().err


def _assert_refused(rc, err: str, out: Path, *names: str) -> str:
    assert rc == 2, f"exit {rc!r}: {err[-2000:]}"
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], f"{name!r} not in: {lines[0]}"
    assert not out.exists(), f"{out} was written: {sorted(p.name for p in out.rglob('*'))}"
    return lines[0]


def test_the_valid_dataset_trains(valid_dataset, smoke_overrides, tmp_path, capsys):
    """Control: the dataset every other test breaks is accepted and trained on."""
    out = tmp_path / "run"
    rc, err = _run(capsys, valid_dataset, out, smoke_overrides, "optim.epochs=1")
    assert rc == 0, err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # 6 photo images per class: 4 train + 2 held out (train_fraction 0.7); every novel image
    assert metrics["n/base"] == len(FOLDER_BASE) * 2 and metrics["n/novel"] == len(FOLDER_NOVEL) * 6
    assert metrics["chance/base"] == pytest.approx(1 / len(FOLDER_BASE))
    assert set(k.split("/", 1)[1] for k in metrics if k.startswith("shift_acc/")) == {"sketch"}


@pytest.mark.parametrize("domain", ["photo", "sketch"])
def test_corrupt_image_is_named(dataset, smoke_overrides, tmp_path, capsys, domain):
    bad = dataset / domain / "blue_circle" / "001.png"
    bad.write_bytes(b"this is not a PNG file at all")
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    msg = _assert_refused(rc, err, tmp_path / "run", str(bad))
    assert "cannot read image" in msg


def test_truncated_png_is_named(dataset, smoke_overrides, tmp_path, capsys):
    bad = dataset / "photo" / "green_star" / "002.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a valid header, half the pixel data
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    msg = _assert_refused(rc, err, tmp_path / "run", str(bad))
    assert "truncated" in msg


def test_empty_class_folder_is_named(dataset, smoke_overrides, tmp_path, capsys):
    folder = dataset / "photo" / "red_circle"
    for p in folder.iterdir():
        p.unlink()
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    msg = _assert_refused(rc, err, tmp_path / "run", str(folder))
    assert "has no images" in msg


def test_empty_class_folder_in_a_shift_domain_is_named(dataset, smoke_overrides, tmp_path, capsys):
    folder = dataset / "sketch" / "green_star"
    for p in folder.iterdir():
        p.unlink()
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", str(folder), "'sketch'", "missing or empty")


def test_listed_class_without_a_folder_is_named(dataset, smoke_overrides, tmp_path, capsys):
    spec = json.loads((dataset / "classes.json").read_text())
    spec["novel"].append("purple_moon")
    (dataset / "classes.json").write_text(json.dumps(spec))
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", "'purple_moon'", str(dataset / "classes.json"),
                    str(dataset / "photo" / "purple_moon"), "does not exist")


def test_class_in_both_base_and_novel_is_named(dataset, smoke_overrides, tmp_path, capsys):
    spec = json.loads((dataset / "classes.json").read_text())
    spec["novel"].append("blue_circle")
    (dataset / "classes.json").write_text(json.dumps(spec))
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", str(dataset / "classes.json"), "'blue_circle'",
                    "both base and novel")


def test_invalid_classes_json_is_named(dataset, smoke_overrides, tmp_path, capsys):
    (dataset / "classes.json").write_text('{"base": ["red_square",')
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", str(dataset / "classes.json"), "not valid JSON")


def test_repeated_key_in_classes_json_is_named(dataset, smoke_overrides, tmp_path, capsys):
    """A second ``base`` list used to replace the first silently."""
    (dataset / "classes.json").write_text(
        '{\n  "base": ["red_square", "blue_circle", "green_star"],\n  "novel": ["yellow_square", "red_circle"],'
        '\n  "base": ["red_square"]\n}\n')
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", str(dataset / "classes.json"), "line 4",
                    "repeated key 'base'", "first on line 2")


def test_repeated_key_in_attributes_json_is_named(dataset, smoke_overrides, tmp_path, capsys):
    lines = [f'  "{c}": ["a {c.replace("_", " ")}"]' for c in FOLDER_BASE + FOLDER_NOVEL]
    lines.append('  "red_circle": ["a round thing"]')
    (dataset / "attributes.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides, "optim.epochs=1")
    _assert_refused(rc, err, tmp_path / "run", str(dataset / "attributes.json"), "line 7",
                    "repeated key 'red_circle'", "first on line 6")


def test_class_attributes_missing_a_class_is_named(dataset, smoke_overrides, tmp_path, capsys):
    """``classes.json`` ``attributes`` (class -> {attribute: value}, read by the loader and used
    for the attribute-only floors) that leaves out a class."""
    spec = json.loads((dataset / "classes.json").read_text())
    spec["attributes"] = {c: {"colour": c.split("_")[0], "shape": c.split("_")[1]}
                          for c in FOLDER_BASE + FOLDER_NOVEL if c != "red_circle"}
    (dataset / "classes.json").write_text(json.dumps(spec))
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", str(dataset / "classes.json"), "'red_circle'", "attributes")


def test_attribute_json_missing_a_class_is_named(dataset, smoke_overrides, tmp_path, capsys):
    attrs = {c: [f"a {c.replace('_', ' ')}", "a thing with corners"] for c in FOLDER_BASE + FOLDER_NOVEL
             if c != "yellow_square"}
    (dataset / "attributes.json").write_text(json.dumps(attrs))
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides, "optim.epochs=1")
    _assert_refused(rc, err, tmp_path / "run", str(dataset / "attributes.json"), "'yellow_square'")


def test_missing_data_root_is_named(smoke_overrides, tmp_path, capsys):
    root = tmp_path / "nowhere"
    rc, err = _run(capsys, root, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", "data.root", str(root))


def test_image_with_an_image_suffix_but_other_content_is_named(dataset, smoke_overrides, tmp_path, capsys):
    """A JPEG-suffixed file holding a text document (what a bad download leaves behind)."""
    bad = dataset / "photo" / "red_square" / "zzz.jpg"
    bad.write_text("<html><body>404 Not Found</body></html>")
    rc, err = _run(capsys, dataset, tmp_path / "run", smoke_overrides)
    _assert_refused(rc, err, tmp_path / "run", str(bad), "cannot read image")
