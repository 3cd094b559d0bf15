"""The image store (``trainers/data/store.py``): the same tensors as in-memory decoding,
memory-mapped; resumable by shard; a corrupt image named; ``prepare`` reads it."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from vldistill.trainers.data import store
from vldistill.trainers.data.folder import DataError, build_splits, read_dataset
from vldistill.trainers.data.world import World, WorldSpec


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = World(WorldSpec(per_class=6, shift_per_class=3)).write(tmp_path_factory.mktemp("w") / "world",
                                                                   progress=False)
    return read_dataset(root, "photo")


def _plan(info, cache, **kw):
    args = dict(image_size=24, train_fraction=0.5, images_per_class=2, split_seed=0, shift_domains=None,
                max_eval_per_class=0)
    args.update(kw)
    return store.plan_store(info, cache_root=cache, **args)


def test_store_gives_exactly_the_in_memory_splits_memory_mapped(world, tmp_path):
    plan = _plan(world, tmp_path)
    store.build_local(plan, progress=False, workers=2)
    got = store.open_splits(plan, world)
    ref = build_splits(world, 24, 0.5, 2, 0, None, 0, progress=False)
    pairs = [(got.train, ref.train), (got.val_base, ref.val_base), (got.novel, ref.novel)]
    pairs += [(got.shift[d], ref.shift[d]) for d in ref.shift]
    assert sorted(got.shift) == sorted(ref.shift)
    for a, b in pairs:
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes
    assert got.train_paths == ref.train_paths
    # backed by the files (page cache, shared by a node's trials), not private copies
    maps = open("/proc/self/maps").read()
    assert all(f"{plan.folder}/{name}.npy" in maps for name in plan.sets), maps[-2000:]
    assert got.train.images.shape == (len(ref.train), 3, 24, 24) and got.train.images.dtype == torch.uint8


def test_killed_build_resumes_at_the_missing_shards_only(world, tmp_path, monkeypatch):
    plan = _plan(world, tmp_path, image_size=16)
    todo = store.allocate(plan)
    assert len(todo) == len(plan.sets)  # each set fits one shard of SHARD images
    first = todo[0]
    store.decode_shard(plan.folder, plan.root, plan.image_size, *first, store.shard_paths(plan, *first))
    assert not store.is_complete(plan)  # no meta.json: a reader would refuse it
    calls = []
    real = store.decode_shard
    monkeypatch.setattr(store, "decode_shard", lambda *a: calls.append((a[3], a[4])) or real(*a))
    store.build_local(plan, progress=False, workers=1)
    assert store.is_complete(plan) and first not in calls and sorted(calls) == sorted(todo[1:])
    ref = build_splits(world, 16, 0.5, 2, 0, None, 0, progress=False)
    assert torch.equal(store.open_splits(plan, world).train.images, ref.train.images)


def test_corrupt_image_is_named_and_the_store_stays_incomplete(tmp_path):
    root = World(WorldSpec(per_class=4, shift_per_class=2)).write(tmp_path / "w", progress=False)
    info = read_dataset(root, "photo")
    bad = root / "sketch" / info.base[0] / "00001.png"
    bad.write_bytes(b"not a png")
    plan = store.plan_store(info, 16, 0.5, 0, 0, None, 0, tmp_path / "cache")
    with pytest.raises(DataError, match=r"sketch/.*/00001\.png"):
        store.build_local(plan, progress=False, workers=1)
    assert not store.is_complete(plan)


def test_a_different_split_recipe_or_resolution_is_another_store(world, tmp_path):
    keys = {_plan(world, tmp_path).key, _plan(world, tmp_path, image_size=32).key,
            _plan(world, tmp_path, images_per_class=3).key, _plan(world, tmp_path, max_eval_per_class=1).key}
    assert len(keys) == 4
    assert _plan(world, tmp_path).key == _plan(world, tmp_path).key


def _race(args):
    """A process asking for the store: ``load_splits`` with build=True."""
    from vldistill.trainers import assets
    cfg, info, log = args
    real = store.build_local

    def counted(plan, *a, **k):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the lock long enough for the other process to queue on it
        return real(plan, *a, **k)
    store.build_local = counted
    splits = assets.load_splits(cfg, info, build=True)
    return int(splits.train.images.numpy().sum(dtype="int64"))  # numpy: torch ops after fork can deadlock


def test_two_processes_asking_at_once_build_the_store_once(tmp_path):
    from vldistill.trainers.config import load_train_config
    from vldistill.trainers.assets import resolve_dataset
    cfg = load_train_config(["experiment=smoke", f"cache_dir={tmp_path / 'cache'}", "data.image_size=20"])
    info = resolve_dataset(cfg, progress=False)  # the smoke world, written once here
    log = tmp_path / "builds.txt"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        sums = list(pool.map(_race, [(cfg, info, log)] * 2))
    assert len(log.read_text().split()) == 1  # one builder; the other waited, then read it
    assert sums[0] == sums[1] > 0
