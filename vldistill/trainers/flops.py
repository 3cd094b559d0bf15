"""Forward FLOPs of a model (student cost next to parameters and latency).

Convention: **FLOPs = 2 x multiply-accumulates** of the matrix products -- convolutions,
linear layers, ``matmul`` / ``bmm`` and scaled-dot-product attention -- as counted by
``torch.utils.flop_counter.FlopCounterMode``. Bias additions, normalisation, activations,
pooling, softmax outside fused attention and other element-wise ops are *not* counted: that
is the convention of published figures (timm / fvcore "GMACs"; ResNet-18 at 224 px is
1.82 GMACs = 3.64 GFLOPs), and those ops are a few percent of a CNN's or ViT's cost.

The count is for one forward pass of a batch of ``input_shape`` (so it scales with the
batch size; pass ``(1, 3, H, W)`` for per-image cost), taken in eval mode (inference: no
dropout, BatchNorm with running statistics) under ``torch.no_grad()``; the model is put
back in the train / eval mode it was in. FlopCounterMode traces the ops that actually run,
so data-dependent paths (e.g. a ViT's interpolated position embedding at a non-native
resolution) are counted as executed. torch's registry has no formula for the CPU fused
attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``, what timm ViTs hit
on the CPU), which would silently count attention as zero; we add torch's own
``sdpa_flop_count`` (``QK^T`` plus ``AV``) for it, so CPU and CUDA counts agree.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

log = logging.getLogger(__name__)


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Ops missing from torch's flop registry, by name (an op absent from this torch is skipped).
_EXTRA = {name: _sdpa_cpu for name in ("_scaled_dot_product_flash_attention_for_cpu",
                                       "_scaled_dot_product_fused_attention_overrideable")}


def _custom_mapping() -> dict:
    ops = {getattr(torch.ops.aten, name, None): fn for name, fn in _EXTRA.items()}
    return {op: fn for op, fn in ops.items() if op is not None}


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs (2 x MACs, see the module docstring) of ``model`` on zeros of ``input_shape``.

    Args:
        model: any module taking one tensor (timm models, ``Student``...). The input is
            created on the device and in the floating dtype of its first parameter.
        input_shape: e.g. ``(1, 3, 224, 224)``.

    Returns:
        The total FLOP count as an int.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(tuple(input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
