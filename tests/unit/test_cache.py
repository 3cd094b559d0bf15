"""The teacher cache (view cache) returns the teacher's output on the replayed view (to fp16
rounding), builds only missing shards, and is never read while incomplete."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vldistill.trainers.cache import ensure_cache
from vldistill.trainers.config import load_train_config
from vldistill.trainers.data.views import make_views, view_seed
from vldistill.trainers.loop import LogReporter, prepare, train


def test_cached_target_equals_the_online_teacher_on_the_same_view(smoke_overrides, tmp_path):
    cfg = load_train_config([*smoke_overrides, "augment.views=3"])
    splits, teacher, _, _ = prepare(cfg)
    cache = ensure_cache(teacher, splits, cfg.data.image_size, cfg.augment, 3, tmp_path)
    assert cache.shape == (len(splits.train), 3, teacher.embed_dim) and cache.shard_size < len(splits.train)
    idx = torch.tensor([5, 0, 17, len(splits.train) - 1])  # rows in several shards, the last one too
    for view in (0, 2, 4):  # view 4 wraps to 1
        x = make_views(splits.train.images[idx], view_seed(idx, view % 3), cfg.augment)
        want = teacher.encode_images(x)
        got = cache.lookup(idx, view)
        assert got.dtype == torch.float32
        # fp16 storage: unit-norm embeddings within half-precision rounding (2^-11 relative)
        assert torch.allclose(got, want, atol=1e-3, rtol=0), (got - want).abs().max()
    again = ensure_cache(teacher, splits, cfg.data.image_size, cfg.augment, 3, tmp_path)
    assert again.path == cache.path  # content-addressed: reused, not rebuilt
    other = ensure_cache(teacher, splits, cfg.data.image_size, cfg.augment, 2, tmp_path)
    assert other.path != cache.path


def test_trial_with_cache_matches_trial_with_online_teacher(smoke_overrides, tmp_path):
    cached = train(load_train_config([*smoke_overrides, "augment.views=2"]), LogReporter(), tmp_path / "a")
    online = train(load_train_config([*smoke_overrides, "augment.views=2", "teacher_cache=false"]),
                   LogReporter(), tmp_path / "b")
    for key in ("loss", "base_acc", "novel_acc", "shift_acc"):
        assert cached[key] == pytest.approx(online[key], abs=2e-3), key


def _plan_and_encoder(cfg, splits, teacher, root):
    from vldistill.trainers.cache import ShardEncoder, plan_view_cache

    plan = plan_view_cache(teacher, splits, cfg.data.image_size, cfg.augment, 2, root)
    held = splits.train.images
    return plan, ShardEncoder(plan, teacher, lambda s, e: held[s:e])


def test_parallel_build_writes_the_same_bytes_as_a_serial_build(smoke_overrides, tmp_path):
    from vldistill.trainers.cache import build_local

    cfg = load_train_config([*smoke_overrides, "augment.views=2"])
    splits, teacher, _, _ = prepare(cfg)
    (p1, e1), (p2, e2) = (_plan_and_encoder(cfg, splits, teacher, tmp_path / d) for d in ("one", "two"))
    build_local(p1, e1, progress=False, workers=1)
    build_local(p2, e2, progress=False, workers=3)
    import numpy as np
    names = sorted(p.name for p in (Path(p1.folder) / "shards").iterdir())
    assert names == sorted(p.name for p in (Path(p2.folder) / "shards").iterdir()) and len(names) == p1.shards
    for name in names:  # 1 thread each side: same reductions, same bytes
        a, b = np.load(Path(p1.folder) / "shards" / name), np.load(Path(p2.folder) / "shards" / name)
        assert a.dtype == np.float16 and np.abs(a).sum() > 0 and np.array_equal(a, b), name
    assert not list(Path(p2.folder).rglob("*.tmp*"))


def test_a_resumed_build_computes_only_the_missing_shards(smoke_overrides, tmp_path):
    """A build killed after some shards: the next one keeps them (same inode, untouched) and
    encodes exactly the missing ones; until meta.json exists the entry is not readable."""
    from vldistill.trainers.assets import MissingAssetError, view_cache
    from vldistill.trainers.cache import build_local, is_complete

    cfg = load_train_config([*smoke_overrides, "augment.views=2", f"cache_dir={tmp_path}"])
    splits, teacher, _, _ = prepare(cfg)
    plan, enc = _plan_and_encoder(cfg, splits, teacher, tmp_path)
    for shard in (0, 3, 4):  # a killed build's finished shards; no meta.json
        enc(shard)
    kept = {p.name: p.stat().st_ino for p in (Path(plan.folder) / "shards").iterdir()}
    assert not is_complete(Path(plan.folder))
    with pytest.raises(MissingAssetError, match="view cache"):
        view_cache(teacher, splits, cfg, build=False)  # a trial never sees a partial cache
    enc.forwards = 0
    build_local(plan, enc, progress=False, workers=1)
    n_missing = sum(plan.rows(i)[1] - plan.rows(i)[0] for i in range(plan.shards) if i not in (0, 3, 4))
    assert enc.forwards == n_missing * plan.views
    after = {p.name: p.stat().st_ino for p in (Path(plan.folder) / "shards").iterdir()}
    assert all(after[name] == ino for name, ino in kept.items()) and len(after) == plan.shards
    assert view_cache(teacher, splits, cfg, build=False).shape == (len(splits.train), 2, teacher.embed_dim)


def test_the_first_versions_float32_cache_is_still_read(tmp_path):
    import json

    import numpy as np

    from vldistill.trainers.cache import TeacherCache

    emb = np.random.default_rng(0).standard_normal((10, 3, 4)).astype(np.float32)
    np.save(tmp_path / "embeds.npy", emb)
    (tmp_path / "meta.json").write_text(json.dumps({"images": 10, "views": 3, "dim": 4, "teacher": "t"}))
    got = TeacherCache(tmp_path).lookup(torch.tensor([9, 2]), 4)
    assert torch.equal(got, torch.from_numpy(emb[[9, 2], 1]))


def test_a_trial_that_finds_an_asset_missing_asks_and_never_builds_it(smoke_overrides, tmp_path):
    """``build=False`` (sweep trials): an empty cache is a MissingAssetError naming the asset,
    and nothing was built into it (no teacher trained, no world written)."""
    from vldistill.trainers.assets import MissingAssetError

    cfg = load_train_config([*smoke_overrides, f"cache_dir={tmp_path / 'empty'}"])
    with pytest.raises(MissingAssetError, match="embedded world"):
        train(cfg, LogReporter(), tmp_path / "ck", build=False)
    assert not (tmp_path / "empty" / "teachers").exists() and not (tmp_path / "empty" / "worlds").exists()


def test_a_cached_trial_never_builds_its_open_clip_teacher(smoke_overrides, tmp_path):
    """With every teacher output cached, the trial's (lazy) teacher model is never built;
    the metrics equal those of the run that built it. Teacher online: it is built."""
    from vldistill.trainers import loop
    from vldistill.trainers.teachers import LazyTeacher, load_open_clip

    # vldistill-rn10t-tiny is an open_clip model config: the open_clip path, small enough here.
    ov = [*smoke_overrides, "teacher=open_clip", "teacher.name=vldistill-rn10t-tiny",
          "teacher.pretrained=null", "augment.views=2", f"cache_dir={tmp_path / 'cache'}"]
    first = train(load_train_config(ov), LogReporter(), tmp_path / "a")  # builds every cache
    loop._MEMO.clear()  # a fresh trial process
    again = train(load_train_config(ov), LogReporter(), tmp_path / "b")
    teacher = next(iter(loop._MEMO.values()))[1]
    assert isinstance(teacher, LazyTeacher) and not teacher.built
    assert teacher.key == load_open_clip("vldistill-rn10t-tiny", None).key
    for key in ("loss", "base_acc", "novel_acc", "shift_acc", "teacher/novel_acc"):
        assert again[key] == first[key], key
    loop._MEMO.clear()
    train(load_train_config([*ov, "teacher_cache=false"]), LogReporter(), tmp_path / "c")
    assert next(iter(loop._MEMO.values()))[1].built  # online teacher: the model ran


def test_a_lazy_checkpoint_teacher_hashes_its_file_once_and_loads_its_weights(tmp_path, monkeypatch):
    """``teacher.pretrained=<file>``: the key is the file's SHA-256, computed once (not again
    when the model is built: a ViT-L/14 file is 1.7 GB); the built model has the file's weights."""
    import open_clip

    from vldistill.trainers import teachers
    from vldistill.trainers.config import TeacherConfig
    from vldistill.trainers.data.world import WorldSpec

    torch.manual_seed(1)
    model = open_clip.create_model("vldistill-rn10t-tiny", pretrained=None)
    ckpt = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), ckpt)
    calls = []
    real = teachers.file_sha256
    monkeypatch.setattr(teachers, "file_sha256", lambda p: calls.append(p) or real(p))
    cfg = TeacherConfig(name="vldistill-rn10t-tiny", pretrained=str(ckpt))
    lazy = teachers.load_teacher(cfg, WorldSpec(), str(tmp_path), progress=False, lazy=True)
    assert isinstance(lazy, teachers.LazyTeacher) and not lazy.built and len(calls) == 1
    built = lazy.materialise()
    assert len(calls) == 1 and built.key == lazy.key
    for name, value in model.state_dict().items():
        assert torch.equal(built.model.state_dict()[name], value), name
