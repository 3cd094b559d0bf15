"""Token/attention taps (P4 inputs) on timm and open_clip ViTs, the ViT student and teachers."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vldistill.trainers.config import (ConfigError, EmbeddedTeacherConfig, StudentConfig,
                                       TeacherConfig, compose_config, from_dict)
from vldistill.trainers.data.world import WorldSpec
from vldistill.trainers.losses import build_loss
from vldistill.trainers.students import Student, check_token_student
from vldistill.trainers.teachers import (_pooled_and_embed, check_token_teacher, load_open_clip,
                                         load_teacher)
from vldistill.trainers.tokens import tap_open_clip_vit, tap_timm_vit

VIT = "vit_tiny_patch16_224"
VIT_KW = {"img_size": 32, "patch_size": 8}  # 4x4 grid: N = 17 tokens, 12 blocks, 3 heads, 192 wide
TINY = "vldistill-vit-tiny"  # open_clip ViT: 2 blocks, 2 heads, width 64, 4x4 grid


def _timm_vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(VIT, num_classes=0, **{**VIT_KW, **kw}).eval()


def _images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --- timm -------------------------------------------------------------------------------------


def test_timm_tapped_attention_equals_manual_softmax_of_q_k():
    model = _timm_vit()
    blk = model.blocks[3]
    assert blk.attn.fused_attn  # the model itself never materialises the probabilities
    seen = {}
    blk.norm1.register_forward_hook(lambda m, a, out: seen.update(x=out.detach()))
    tap = tap_timm_vit(model, layers=[3])
    with torch.no_grad(), tap.record() as taps:
        model(_images())
    x = seen["x"]  # the attention module's input [B, N, 192]
    b, n, _ = x.shape
    q, k, _ = (x @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(192, dim=-1)
    q, k = (t.reshape(b, n, 3, 64).transpose(1, 2) for t in (q, k))  # 3 heads of 64
    manual = (q @ k.transpose(-2, -1) / 64 ** 0.5).softmax(dim=-1)
    assert len(taps["attn"]) == 1 and taps["attn"][0].shape == (2, 3, 17, 17)
    torch.testing.assert_close(taps["attn"][0], manual, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(taps["attn"][0].sum(-1), torch.ones(2, 3, 17))


def test_timm_tapped_attention_equals_timms_own_unfused_probabilities():
    model = _timm_vit()
    seen = []
    for blk in model.blocks:
        blk.attn.fused_attn = False  # slow path: softmax output goes through attn_drop (p=0)
        blk.attn.attn_drop.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    tap = tap_timm_vit(model)
    with torch.no_grad(), tap.record() as taps:
        model(_images())
    assert len(taps["attn"]) == 12
    for mine, theirs in zip(taps["attn"], seen):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


def test_timm_tapped_tokens_equal_forward_intermediates():
    model = _timm_vit()
    tap = tap_timm_vit(model, layers=[0, 5, -1])
    assert tap.layers == [0, 5, 11] and tap.width == 192 and tap.num_tokens == 17
    x = _images()
    with torch.no_grad():
        with tap.record() as taps:
            model(x)
        spatial, prefix = zip(*model.forward_intermediates(
            x, indices=[0, 5, 11], output_fmt="NLC", return_prefix_tokens=True,
            intermediates_only=True))
    assert [t.shape for t in taps["tokens"]] == [(2, 17, 192)] * 3
    for mine, p, s in zip(taps["tokens"], prefix, spatial):
        assert torch.equal(mine, torch.cat([p, s], dim=1))  # CLS first, then the 4x4 grid


def test_tap_does_not_change_model_outputs():
    model = _timm_vit()
    x = _images()
    with torch.no_grad():
        plain = model(x)
        tap = tap_timm_vit(model)
        with tap.record():
            tapped = model(x)
        after = model(x)  # installed but not recording
    assert torch.equal(plain, tapped) and torch.equal(plain, after)


def test_only_one_forward_per_record():
    model = _timm_vit()
    tap = tap_timm_vit(model, layers=[0])
    with pytest.raises(RuntimeError, match="one forward pass per record"):
        with torch.no_grad(), tap.record():
            model(_images())
            model(_images())


def test_register_tokens_out_of_range_layers_and_non_vits_are_refused():
    with pytest.raises(ConfigError, match=r"student.name='vit_reg'.*1 register"):
        tap_timm_vit(_timm_vit(reg_tokens=1), name="vit_reg")
    with pytest.raises(ConfigError, match="block index 12 out of range"):
        tap_timm_vit(_timm_vit(), layers=[12])
    with pytest.raises(ConfigError, match="resnet10t.*not a timm VisionTransformer"):
        tap_timm_vit(timm.create_model("resnet10t", num_classes=0), name="resnet10t")


# --- open_clip --------------------------------------------------------------------------------


def test_open_clip_tap_matches_multihead_attention_weights_and_intermediates():
    teacher = load_open_clip(TINY, None)
    visual = teacher.model.visual
    seen = []
    for blk in visual.transformer.resblocks:
        blk.ln_1.register_forward_hook(lambda m, a, out: seen.append(out))
    tap = tap_open_clip_vit(teacher.model)
    x = teacher.preprocess(_images())
    with torch.no_grad():
        with tap.record() as taps:
            pooled = visual(x)
        assert torch.equal(pooled, visual(x))
        out = visual.forward_intermediates(x, output_fmt="NLC", output_extra_tokens=True,
                                           intermediates_only=True)
        for blk, inp, mine in zip(visual.transformer.resblocks, seen, taps["attn"]):
            _, ref = blk.attn(inp, inp, inp, need_weights=True, average_attn_weights=False)
            assert mine.shape == (2, 2, 17, 17)
            torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
    for mine, p, s in zip(taps["tokens"], out["image_intermediates_prefix"],
                          out["image_intermediates"]):
        assert torch.equal(mine, torch.cat([p, s], dim=1))


def test_open_clip_sequence_first_transformer_gives_batch_first_taps():
    teacher = load_open_clip(TINY, None)
    x = teacher.preprocess(_images())
    tap = tap_open_clip_vit(teacher.model, layers=[1])
    with torch.no_grad(), tap.record() as ref:
        teacher.model.visual(x)
    tap.remove()
    teacher.model.visual.transformer.batch_first = False  # older open_clip layout: [N, B, D]
    for blk in teacher.model.visual.transformer.resblocks:
        blk.attn.batch_first = False
    tap = tap_open_clip_vit(teacher.model, layers=[1])
    with torch.no_grad(), tap.record() as taps:
        teacher.model.visual(x)
    assert taps["tokens"][0].shape == (2, 17, 64) and taps["attn"][0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(taps["tokens"][0], ref["tokens"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(taps["attn"][0], ref["attn"][0], atol=1e-6, rtol=1e-5)


def test_teacher_encode_images_with_tokens_is_no_grad_and_matches_encode_images():
    teacher = load_open_clip(TINY, None)
    x = _images()
    emb, taps = teacher.encode_images_with_tokens(x, layers=[-1])
    assert torch.equal(emb, teacher.encode_images(x))
    assert len(taps["tokens"]) == len(taps["attn"]) == 1
    assert not taps["tokens"][0].requires_grad and not taps["attn"][0].requires_grad
    assert teacher.token_tap([-1]).width == 64 and teacher.token_tap([-1]).layers == [1]


def test_resnet_teacher_is_refused_for_token_losses():
    with pytest.raises(ConfigError, match=r"teacher.embedded.model='vldistill-rn10t-tiny'.*ViT"):
        check_token_teacher(TeacherConfig())
    check_token_teacher(TeacherConfig(embedded=EmbeddedTeacherConfig(model=TINY)))
    with pytest.raises(ConfigError, match="teacher.name='RN50'"):
        check_token_teacher(TeacherConfig(name="RN50"))
    with pytest.raises(ConfigError, match="teacher.embedded.model.*not an open_clip VisionTrans"):
        load_open_clip("vldistill-rn10t-tiny", None).token_tap()


# --- student and losses -----------------------------------------------------------------------


def test_student_with_tokens_keeps_embed_and_returns_taps():
    torch.manual_seed(0)
    s = Student(StudentConfig(name=VIT, kwargs=VIT_KW), 64).eval()
    x = _images()
    with torch.no_grad():
        plain = s(x)
        out = s(x, with_tokens=True)
    assert torch.equal(plain["embed"], out["embed"])
    assert len(out["tokens"]) == len(out["attn"]) == 12
    assert out["tokens"][0].shape == (2, 17, 192) and out["attn"][0].shape == (2, 3, 17, 17)
    s.enable_tokens(layers=[5, 11], what=("tokens",))
    out = s(x, with_tokens=True)
    assert len(out["tokens"]) == 2 and out["attn"] == []


def test_attn_and_token_nce_gradients_reach_the_student():
    torch.manual_seed(0)
    s = Student(StudentConfig(name=VIT, kwargs=VIT_KW), 64)
    s.enable_tokens(layers=[5, 11])
    teacher = load_open_clip(TINY, None)
    x = _images(4)
    _, t_taps = teacher.encode_images_with_tokens(x)
    out = s(x, with_tokens=True)
    attn = build_loss("attn")
    nce = build_loss("token_nce", student_dim=s._tap.width, teacher_dim=teacher.token_tap().width,
                      queue_size=16)
    attn(out, t_taps, {})["attn_loss"].backward(retain_graph=True)
    qkv = s.backbone.blocks[11].attn.qkv.weight.grad
    assert qkv[:384].abs().sum() > 0  # q and k rows of the last tapped block
    assert torch.count_nonzero(qkv[384:]) == 0  # v never enters the probabilities
    assert s.backbone.blocks[5].attn.qkv.weight.grad[384:].abs().sum() > 0  # via block 5's output
    assert s.backbone.blocks[11].mlp.fc1.weight.grad is None  # after the last attention
    s.zero_grad(set_to_none=True)
    nce(out, t_taps, {})["token_nce_loss"].backward()
    assert s.backbone.blocks[11].mlp.fc2.weight.grad.abs().sum() > 0
    assert s.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert nce.proj.weight.grad.abs().sum() > 0
    assert s.head.weight.grad is None  # the token losses do not touch the embedding head
    assert all(p.grad is None for p in teacher.parameters())


def test_check_token_student_names_the_student_and_the_loss():
    cfg = from_dict({"student": {"name": "resnet18"}, "distill": {"weights": {"cls": 1.0, "attn": 1.0}}})
    with pytest.raises(ConfigError, match=r"student.name='resnet18'.*distill.weights.attn"):
        check_token_student(cfg)
    cfg = from_dict({"student": {"name": VIT, "kwargs": {**VIT_KW, "reg_tokens": 4}},
                     "distill": {"weights": {"cls": 1.0, "token_nce": 0.5}}})
    with pytest.raises(ConfigError, match=r"4 register.*token_nce"):
        check_token_student(cfg)
    check_token_student(from_dict({"student": {"name": "resnet18"}}))  # no token loss: fine


def test_distillvlm_groups_compose_and_pass_the_token_checks():
    # distill=distillvlm alone selects the ViT pair (a global group); teacher=embedded_vit is
    # the same teacher as a teacher group
    cfg = from_dict(compose_config(["distill=distillvlm"]))
    assert cfg.distill.weights["attn"] > 0 and cfg.distill.weights["token_nce"] > 0
    assert cfg.teacher.embedded.model == "vldistill-vit-small"
    assert from_dict(compose_config(["teacher=embedded_vit"])).teacher == cfg.teacher
    check_token_student(cfg)
    check_token_teacher(cfg.teacher)
    s = Student(cfg.student, 64)
    assert s.enable_tokens().num_tokens == 1 + (cfg.student.image_size // 4) ** 2  # 8x8 grid


# --- the embedded ViT teacher -----------------------------------------------------------------


def test_embedded_vit_teacher_trains_caches_and_taps(tmp_path):
    cfg = TeacherConfig(embedded=EmbeddedTeacherConfig(model=TINY, steps=3, per_class=1,
                                                       batch_size=8, warmup=1))
    world = WorldSpec(per_class=4, shift_per_class=2)
    teacher = load_teacher(cfg, world, str(tmp_path), progress=False)
    (folder,) = (tmp_path / "teachers").iterdir()
    assert (folder / "teacher.pt").is_file() and (folder / "quality.json").is_file()
    again = load_teacher(cfg, world, str(tmp_path), progress=False)  # from the cache
    x = _images()
    assert torch.equal(teacher.encode_images(x), again.encode_images(x))
    emb, taps = again.encode_images_with_tokens(x)
    assert emb.shape == (2, 64) and [t.shape for t in taps["tokens"]] == [(2, 17, 64)] * 2
    visual = again.model.visual
    with torch.no_grad():
        pooled, embed = _pooled_and_embed(visual, again.preprocess(x))
        assert pooled.shape == (2, 64)
        assert torch.equal(embed, visual(again.preprocess(x)))


def test_token_nce_backward_works_with_a_filled_queue():
    torch.manual_seed(0)
    s = Student(StudentConfig(name=VIT, kwargs=VIT_KW), 64)
    s.enable_tokens(layers=[11], what=("tokens",))
    teacher = load_open_clip(TINY, None)
    nce = build_loss("token_nce", student_dim=192, teacher_dim=64, queue_size=128).train()
    for seed in range(2):  # the second step has negatives from the first
        x = _images(2, seed)
        _, t_taps = teacher.encode_images_with_tokens(x, layers=[-1])
        nce(s(x, with_tokens=True), t_taps, {})["token_nce_loss"].backward()
    assert int(nce.queue_count) == 2 * 2 * 17
