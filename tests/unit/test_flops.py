"""count_flops: hand-computed counts, the published ResNet-18 figure, timm families, mode kept."""

from __future__ import annotations

import pytest
import timm
from torch import nn

from vldistill.trainers.flops import count_flops


def _tiny() -> nn.Sequential:
    # Linear on the last dim (width 6) of the conv output [B, 4, 6, 6].
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(6, 5))


def test_tiny_sequential_matches_hand_count():
    # conv: out 4x6x6 positions x (3 in-channels x 3 x 3 kernel) MACs = 3888 -> 7776 FLOPs;
    # linear on the last dim: 4*6 = 24 rows x 6 in x 5 out = 720 MACs -> 1440 FLOPs;
    # ReLU and biases: 0.
    assert count_flops(_tiny(), (1, 3, 8, 8)) == 2 * (4 * 6 * 6 * 3 * 3 * 3) + 2 * (24 * 6 * 5) == 9216


def test_count_scales_with_batch_and_flattened_linear_counts_the_same():
    assert count_flops(_tiny(), (3, 3, 8, 8)) == 3 * 9216
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
    assert count_flops(flat, (1, 3, 8, 8)) == 7776 + 2 * 144 * 5


@pytest.mark.parametrize("mode", [True, False])
def test_model_mode_is_restored_and_no_grad_is_recorded(mode):
    model = _tiny().train(mode)
    count_flops(model, (1, 3, 8, 8))
    assert all(m.training == mode for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_resnet18_at_224_matches_published_gmacs():
    flops = count_flops(timm.create_model("resnet18"), (1, 3, 224, 224))
    assert flops == pytest.approx(3.64e9, rel=0.02)  # 1.82 GMACs (timm / torchvision)


@pytest.mark.parametrize("name,kwargs,size", [
    ("resnet18", {"num_classes": 0}, 32),
    ("mobilenetv3_small_100", {"num_classes": 0}, 32),
    ("vit_tiny_patch16_224", {"num_classes": 0, "img_size": 32}, 32),
])
def test_timm_students_give_positive_counts_that_grow_with_resolution(name, kwargs, size):
    model = timm.create_model(name, **kwargs)
    small = count_flops(model, (1, 3, size, size))
    assert small > 0
    if "img_size" not in kwargs:  # CNNs: 4x the pixels -> more than 2x the FLOPs (the head is fixed)
        assert count_flops(model, (1, 3, 2 * size, 2 * size)) > 2 * small


def test_vit_tiny_count_matches_its_matmuls_including_cpu_fused_attention():
    # ViT-Ti/16 at 32 px: 4 patches + cls = 5 tokens, width 192, 12 blocks, mlp 768, no head.
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    n, d, blocks = 5, 192, 12
    patch = 4 * (3 * 16 * 16) * d
    per_block = n * d * 3 * d + n * n * d * 2 + n * d * d + 2 * n * d * 4 * d  # qkv, attn, proj, mlp
    assert count_flops(model, (1, 3, 32, 32)) == 2 * (patch + blocks * per_block)


def test_input_follows_the_model_dtype():
    model = _tiny().double()
    assert count_flops(model, (1, 3, 8, 8)) == 9216
