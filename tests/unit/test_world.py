"""The embedded world: determinism, class splits, sizes, and the image-folder round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vldistill.trainers.data import render as R
from vldistill.trainers.data.folder import DataError, build_splits, load_images, read_dataset
from vldistill.trainers.data.world import World, WorldSpec


def test_same_seed_same_images_other_seed_other_images():
    a, ca = World(WorldSpec(seed=3)).sample("painting", 7, 5)
    b, cb = World(WorldSpec(seed=3)).sample("painting", 7, 5)
    c, _ = World(WorldSpec(seed=4)).sample("painting", 7, 5)
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)


def test_streams_never_share_images():
    w = World()
    a, _ = w.sample("photo", 0, 4, stream="data")
    b, _ = w.sample("photo", 0, 4, stream="pretrain")
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("size", [32, 64, 96])
@pytest.mark.parametrize("domain", R.DOMAINS)
def test_every_domain_renders_at_any_size(domain, size):
    x, caps = World(WorldSpec(image_size=size)).sample(domain, 3, 2)
    assert x.shape == (2, size, size, 3) and x.dtype == np.uint8
    assert x.std() > 5  # not blank
    assert len(caps) == 2 and all(isinstance(c, str) and c for c in caps)


def test_base_and_novel_are_disjoint_and_kinds_mean_what_they_say():
    w = World()
    s = w.splits()
    assert len(w.classes) == 36
    assert set(s["base"]).isdisjoint(s["novel"])
    assert set(s["base"]) | set(s["novel"]) == set(w.folders())
    by = {c.folder: c for c in w.classes}
    base_shapes = {by[f].shape for f in s["base"]}
    base_colours = {by[f].colour for f in s["base"]}
    comp, sem = s["novel_kinds"]["compositional"], s["novel_kinds"]["semantic"]
    assert len(comp) == 7 and len(sem) == 11 and len(s["base"]) == 18
    for f in comp:  # unseen combination of seen values
        assert by[f].shape in base_shapes and by[f].colour in base_colours
    for f in sem:  # a value no base class has
        assert by[f].shape not in base_shapes or by[f].colour not in base_colours


def test_attribute_sources_differ_as_documented():
    w = World()
    full, partial, noisy = (w.attributes(s) for s in ("full", "partial", "noisy"))
    assert set(full) == set(partial) == set(noisy) == set(w.folders())
    assert all(len(partial[c]) == 1 and partial[c][0] == full[c][0] for c in full)
    changed = sum(noisy[c][:2] != full[c][:2] for c in full)
    assert 0 < changed < len(full)
    with pytest.raises(ValueError, match="unknown world attribute source 'llm'"):
        w.attributes("llm")
    assert not any("magenta circle" in v for v in w.vocabulary())


def test_written_world_reads_back_identically_through_the_folder_loader(tmp_path):
    spec = WorldSpec(per_class=6, shift_per_class=3)
    w = World(spec)
    root = w.write(tmp_path / "world", progress=False)
    info = read_dataset(root, "photo")
    assert info.base == w.splits()["base"] and info.domains == sorted(R.DOMAINS)
    k = w.folders().index(info.base[0])
    expected, captions = w.sample("photo", k, 6)
    got = load_images(sorted((root / "photo" / info.base[0]).glob("*.png")), 32)
    assert torch.equal(got, torch.from_numpy(expected).permute(0, 3, 1, 2))
    caps = json.loads((root / "captions.json").read_text())
    assert caps[f"photo/{info.base[0]}/00000.png"] == captions[0]
    splits = build_splits(info, 32, 0.5, 2, 0, None, 0, progress=False)
    assert len(splits.train) == 18 * 2 and len(splits.val_base) == 18 * 3
    assert len(splits.novel) == 18 * 6
    assert set(splits.shift) == {"sketch", "painting", "noisy"}
    assert all(len(v) == 18 * 3 for v in splits.shift.values())


def test_loader_names_the_bad_file_and_class(tmp_path):
    root = World(WorldSpec(per_class=4, shift_per_class=2)).write(tmp_path / "w", progress=False)
    bad = root / "photo" / "red_square" / "00001.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="00001.png"):
        load_images([bad], 32)
    spec = json.loads((root / "classes.json").read_text())
    spec["base"].append("purple_moon")
    (root / "classes.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="purple_moon"):
        read_dataset(root, "photo")
