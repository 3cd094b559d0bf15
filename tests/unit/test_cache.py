"""The teacher cache returns exactly the teacher's output on the replayed view."""

from __future__ import annotations

import pytest
import torch

from vldistill.platform.cli import load_train_config
from vldistill.trainers.cache import ensure_cache
from vldistill.trainers.data.views import make_views, view_seed
from vldistill.trainers.loop import LogReporter, prepare, train


def test_cached_target_equals_the_online_teacher_on_the_same_view(smoke_overrides, tmp_path):
    cfg = load_train_config([*smoke_overrides, "augment.views=3"])
    splits, teacher, _, _ = prepare(cfg)
    cache = ensure_cache(teacher, splits, cfg.data.image_size, cfg.augment, 3, tmp_path)
    assert cache.embeds.shape == (len(splits.train), 3, teacher.embed_dim)
    idx = torch.tensor([5, 0, 17])
    for view in (0, 2, 4):  # view 4 wraps to 1
        x = make_views(splits.train.images[idx], view_seed(idx, view % 3), cfg.augment)
        assert torch.allclose(cache.lookup(idx, view), teacher.encode_images(x), atol=1e-5)
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


def test_parallel_build_writes_the_same_bytes_as_a_serial_build(smoke_overrides, tmp_path):
    from vldistill.trainers.cache import build_cache

    cfg = load_train_config([*smoke_overrides, "augment.views=2"])
    splits, teacher, _, _ = prepare(cfg)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    build_cache(teacher, splits, cfg.augment, 2, one, batch_size=32, progress=False, workers=1)
    build_cache(teacher, splits, cfg.augment, 2, two, batch_size=32, progress=False, workers=3)
    import numpy as np
    a, b = np.load(one / "embeds.npy"), np.load(two / "embeds.npy")
    assert a.shape == (len(splits.train), 2, teacher.embed_dim) and np.abs(a).sum() > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # 1 thread each side: same reductions
    assert not list(two.glob("*.tmp*"))


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
