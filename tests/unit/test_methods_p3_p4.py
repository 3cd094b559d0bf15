"""P3 (data-free) and P4 (DistillVLM) through the training loop on the smoke world.

P3: every real training image of the dataset is overwritten with bytes no decoder reads;
the synthetic trial still trains and evaluates (so the loader never opened them), while the
same config with real training data fails naming one of those files.
P4: a ViT student against an embedded ViT teacher trains with attn + token_nce, reports
both losses, checkpoints the loss's projection and queue, and resumes to the uninterrupted
result.
"""

from __future__ import annotations

import math

import pytest
import torch

from vldistill.trainers.config import ConfigError, load_train_config
from vldistill.trainers.data.folder import DataError, build_splits
from vldistill.trainers.loop import LogReporter, load_checkpoint, resolve_dataset, train

SYNTH = ["data.synthetic.images_per_class=3", "data.synthetic.steps=4", "data.synthetic.cutouts=1",
         "data.synthetic.prompt_steps=4", "data.synthetic.batch_size=32", "optim.batch_size=16"]


def test_p3_trains_on_synthetic_images_without_opening_a_real_training_image(tmp_path):
    base = ["experiment=smoke", f"cache_dir={tmp_path / 'cache'}", "progress=false", "threads=1"]
    real_cfg = load_train_config(base)
    info = resolve_dataset(real_cfg, progress=False)
    d = real_cfg.data
    splits = build_splits(info, d.image_size, d.train_fraction, d.images_per_class, d.split_seed,
                          d.shift_domains, d.max_eval_per_class, progress=False)
    assert len(splits.train_paths) == 18 * 8
    for p in splits.train_paths:  # the real training set is now unreadable
        p.write_bytes(b"not an image")

    with pytest.raises(DataError, match="not an image|cannot|decode|identify"):
        train(load_train_config([*base, "optim.epochs=1"]), LogReporter(), tmp_path / "real")

    cfg = load_train_config([*base, "distill=p3_contrastive", "optim.epochs=1", *SYNTH])
    assert cfg.data.train_source == "synthetic" and cfg.distill.weights["vlprox"] == 1.0
    rep = LogReporter()
    m = train(cfg, rep, tmp_path / "synthetic")
    assert m["n/train"] == 18 * 3  # the synthetic set: 3 images per base class
    for key in ("base_acc", "novel_acc", "shift_acc"):
        assert 0.0 <= m[key] <= 1.0
    assert 0.0 <= m["synthetic/zero_shot_acc"] <= 1.0 and -1.0 <= m["synthetic/diversity"] <= 1.0
    assert math.isfinite(rep.history[0]["vlprox_loss"])


def test_p3_refuses_a_caption_loss(smoke_overrides):
    with pytest.raises(ConfigError, match="distill.weights.cap"):
        load_train_config([*smoke_overrides, "distill=p3_none", "+distill.weights.cap=1.0"])


P4 = ["distill=distillvlm", "teacher.embedded.model=vldistill-vit-tiny", "teacher.embedded.steps=5",
      "distill.tokens.student_layers=[5,11]", "distill.token_nce.queue_size=256",
      "data.images_per_class=4", "optim.batch_size=8", "eval.latency_iters=1"]


def test_p4_trains_a_vit_student_on_tokens_and_resumes_with_the_loss_state(smoke_overrides, tmp_path):
    assert load_train_config([*smoke_overrides, *P4]).student.name.startswith("vit_tiny")  # as shipped
    # timm's test_vit (embed 64, 6 blocks: 0.3M parameters) instead of vit_tiny (5.5M, 12
    # blocks): the same token losses at a fraction of the time.
    cfg = load_train_config([*smoke_overrides, *P4, "optim.epochs=2", "student.name=test_vit",
                             "distill.tokens.student_layers=[2,5]"])
    assert cfg.teacher.embedded.model == "vldistill-vit-tiny"
    rep = LogReporter()
    full = train(cfg, rep, tmp_path / "a")
    for row in rep.history:
        assert math.isfinite(row["attn_loss"]) and row["attn_loss"] > 0
        assert math.isfinite(row["token_nce_loss"]) and row["token_nce_loss"] > 0
    assert full["student_flops"] > 0
    state = load_checkpoint(tmp_path / "a")
    crit = state["criterion"]
    assert any(k.endswith("queue") for k in crit) and any("proj" in k for k in crit)

    class Crash(LogReporter):
        def report(self, metrics, checkpoint_dir=None):
            super().report(metrics, checkpoint_dir)
            raise KeyboardInterrupt("killed after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        train(cfg, Crash(), tmp_path / "b")
    resumed = train(cfg, LogReporter(), tmp_path / "b")
    for key in ("loss", "attn_loss", "token_nce_loss", "base_acc", "novel_acc"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-5), key


def test_p4_with_a_resnet_student_or_teacher_is_a_config_error_naming_it(smoke_overrides):
    with pytest.raises(ConfigError, match="student.name"):
        load_train_config([*smoke_overrides, *P4, "student.name=resnet18", "student.kwargs={}"])
    with pytest.raises(ConfigError, match="teacher"):
        load_train_config([*smoke_overrides, *P4, "teacher.embedded.model=vldistill-rn10t-tiny"])


def test_freshly_trained_embedded_teacher_carries_its_content_key(tmp_path):
    """Cache entries keyed by ``teacher.key`` must not mix two freshly trained teachers."""
    from vldistill.trainers.config import EmbeddedTeacherConfig, TeacherConfig
    from vldistill.trainers.data.world import WorldSpec
    from vldistill.trainers.teachers import embedded_key, load_teacher

    spec = WorldSpec(per_class=4, shift_per_class=2)
    keys = set()
    for seed in (0, 1):
        emb = EmbeddedTeacherConfig(per_class=2, steps=2, batch_size=16, warmup=1, seed=seed)
        t = load_teacher(TeacherConfig(embedded=emb), spec, str(tmp_path), progress=False)
        assert t.key == embedded_key(emb, spec)
        keys.add(t.key)
    assert len(keys) == 2
    torch.manual_seed(0)


def test_a_trial_never_runs_the_teacher_over_the_evaluation_sets(smoke_overrides, tmp_path):
    """P1's representation metrics read the teacher's evaluation embeddings from the cache:
    the only teacher forwards of a trial are its training batches."""
    from vldistill.trainers.loop import prepare

    cfg = load_train_config([*smoke_overrides, "optim.epochs=2"])
    _, teacher, _, _ = prepare(cfg)
    seen = []
    original = teacher.encode_images
    teacher.encode_images = lambda x: (seen.append(len(x)), original(x))[1]
    try:
        m = train(cfg, LogReporter(), tmp_path / "run")
    finally:
        del teacher.encode_images
    steps = max(m["n/train"] // cfg.optim.batch_size, 1)
    assert sum(seen) == cfg.optim.epochs * steps * cfg.optim.batch_size, seen
    for key in ("M_rel", "M_neigh", "M_vlalign", "M_rel/base"):
        assert 0.0 <= m[key] <= 1.0, key


def test_the_embedded_teacher_does_not_depend_on_the_global_random_state(tmp_path):
    """Same content key, same weights: the teacher's init is seeded by its recipe, not by
    whatever the process drew from torch's global generator before (world writing, another
    model), and training it leaves that generator as it was."""
    from vldistill.trainers.config import EmbeddedTeacherConfig, TeacherConfig
    from vldistill.trainers.data.world import WorldSpec
    from vldistill.trainers.teachers import load_teacher

    spec = WorldSpec(per_class=4, shift_per_class=2)
    emb = EmbeddedTeacherConfig(per_class=2, steps=2, batch_size=16, warmup=1)
    weights = []
    for i, before in enumerate((0, 12345)):
        torch.manual_seed(before)
        torch.rand(1000)  # the caller's own draws
        state = torch.get_rng_state()
        t = load_teacher(TeacherConfig(embedded=emb), spec, str(tmp_path / f"cache{i}"), progress=False)
        assert torch.equal(torch.get_rng_state(), state), "training moved the caller's generator"
        weights.append(t.model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert differ == [], f"{len(differ)} of {len(weights[0])} tensors differ, e.g. {differ[:3]}"
