"""Deterministic augmented views, replayable from a seed.

A view of image ``i`` is a pure function of ``(image, view_seed(i, v))``: random resized
crop (scale in ``[scale_min, 1]``, translation up to ``translate``) and a horizontal flip,
applied with one batched ``grid_sample``. Because the view can be replayed from its seed,
a teacher-embedding cache can store targets for K views per image and the student sees
exactly the view whose target is cached (MobileCLIP's dataset reinforcement). Colour is
never jittered: colour is a class attribute of the embedded world.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vldistill.trainers.config import AugmentConfig

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant for seed mixing


def view_seed(index: torch.Tensor, view: int) -> torch.Tensor:
    """Seed of view ``view`` of the images ``index`` (independent of the trial seed)."""
    return index.long() * 1_000_003 + int(view)


def _uniform(seeds: torch.Tensor, salt: int) -> torch.Tensor:
    """Counter-based uniform numbers in [0, 1): a splitmix64-style hash of (seed, salt)."""
    x = (seeds * 6364136223846793005 + (salt * _MIX & 0x7FFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFF
    x = x ^ (x >> 21)
    x = (x * 2862933555777941757) & 0xFFFFFFFFFFFF
    x = x ^ (x >> 17)
    return (x & 0xFFFFFF).double().float() / float(1 << 24)


def view_params(seeds: torch.Tensor, cfg: AugmentConfig) -> dict[str, torch.Tensor]:
    """Per-view crop scale, centre offset and flip, drawn from the seeds."""
    scale = cfg.scale_min + (1 - cfg.scale_min) * _uniform(seeds, 1)
    side = scale.sqrt()  # crop side as a fraction of the image side
    room = (1 - side).clamp(min=0)
    tx = (2 * _uniform(seeds, 2) - 1) * torch.minimum(room, torch.tensor(cfg.translate * 2))
    ty = (2 * _uniform(seeds, 3) - 1) * torch.minimum(room, torch.tensor(cfg.translate * 2))
    flip = (_uniform(seeds, 4) < 0.5) & torch.tensor(cfg.flip)
    return {"side": side, "tx": tx, "ty": ty, "flip": flip}


def make_views(images: torch.Tensor, seeds: torch.Tensor, cfg: AugmentConfig,
               out_size: int | None = None) -> torch.Tensor:
    """Render the views of a batch.

    Args:
        images: ``uint8`` or float ``[B, 3, H, W]`` (uint8 is scaled to ``[0, 1]``).
        seeds: ``int64 [B]`` view seeds (see :func:`view_seed`).
        cfg: augmentation recipe.
        out_size: output side; defaults to the input's.

    Returns:
        float ``[B, 3, S, S]`` in ``[0, 1]``.
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    p = view_params(seeds.cpu(), cfg)
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3)
    sx = p["side"] * torch.where(p["flip"], -1.0, 1.0)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = p["side"]
    theta[:, 0, 2] = p["tx"]
    theta[:, 1, 2] = p["ty"]
    size = out_size or x.shape[-1]
    grid = F.affine_grid(theta.to(x.device), [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
