"""Teachers (open_clip by name, checkpoint files) and timm students with their own preprocessing."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from vldistill.trainers.config import ConfigError, StudentConfig
from vldistill.trainers.students import Student
from vldistill.trainers.teachers import load_open_clip

TINY = "vldistill-vit-tiny"  # an open_clip ViT config shipped with vldistill (no download)


def test_open_clip_model_by_name_with_random_weights():
    t = load_open_clip(TINY, None)
    assert t.embed_dim == 64 and t.image_size == 32
    x = torch.rand(3, 3, 48, 48)  # other resolution: the teacher resizes itself
    emb = t.encode_images(x)
    assert emb.shape == (3, 64)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert all(not p.requires_grad for p in t.parameters())


def test_open_clip_checkpoint_file_round_trip(tmp_path):
    torch.manual_seed(1)
    a = load_open_clip(TINY, None)
    path = tmp_path / "teacher.pt"
    torch.save(a.model.state_dict(), path)
    b = load_open_clip(TINY, str(path))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(a.encode_images(x), b.encode_images(x), atol=1e-6)
    assert torch.allclose(a.encode_text(["a red circle."]), b.encode_text(["a red circle."]), atol=1e-6)
    assert b.key != load_open_clip(TINY, None).key


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_needing_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ConfigError, match="teacher.pretrained"):
        load_open_clip(TINY, str(path))


def test_missing_checkpoint_and_unknown_model_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_open_clip(TINY, str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="ViT-Q-99"):
        load_open_clip("ViT-Q-99", None)


def test_student_projects_to_teacher_dim_at_its_own_resolution():
    s = Student(StudentConfig(name="resnet10t", image_size=48, mean=[0.5] * 3, std=[0.25] * 3), 64)
    out = s(torch.rand(2, 3, 32, 32))
    assert out["embed"].shape == (2, 64)
    assert torch.allclose(s.mean, torch.full((1, 3, 1, 1), 0.5))
    seen = {}
    s.backbone.register_forward_pre_hook(lambda m, a: seen.update(shape=a[0].shape))
    s(torch.rand(1, 3, 32, 32))
    assert seen["shape"][-1] == 48


def test_student_vit_kwargs_and_timm_defaults():
    s = Student(StudentConfig(name="vit_tiny_patch16_224", kwargs={"img_size": 32, "patch_size": 4}), 16)
    assert s(torch.rand(2, 3, 32, 32))["embed"].shape == (2, 16)
    assert torch.allclose(s.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # timm's ViT default


def test_unknown_student_is_named_with_close_matches():
    with pytest.raises(ConfigError, match="resnet19"):
        Student(StudentConfig(name="resnet19"), 8)


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "vldistill" / "conf"
                                                          / "student").glob("*.yaml")))
def test_every_shipped_student_config_builds_and_embeds(name):
    """``student=<name>`` as shipped: the head takes what the backbone returns (MobileNetV3's
    1,024-wide pre-logits, not its 576 ``num_features``, broke the shipped config)."""
    from vldistill.trainers.config import load_train_config
    cfg = load_train_config([f"student={name}"]).student
    s = Student(cfg, 24)
    out = s(torch.rand(2, 3, cfg.image_size, cfg.image_size))
    assert out["embed"].shape == (2, 24)
