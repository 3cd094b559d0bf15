"""Rasteriser of the procedural world: shapes as signed distance fields, four domains.

Everything here is vectorised over a batch of images that share one domain: the caller
samples per-image parameters (see ``world.py``) and :func:`render` turns them into
``uint8`` arrays of shape ``[N, H, W, 3]``.

Shapes are signed distance fields (negative inside) on coordinates in ``[-1, 1]`` after
the inverse of the image's similarity transform, so edges are anti-aliased analytically
(``coverage = clip(0.5 - d / pixel, 0, 1)``) and any image size works. Nuisance strength
is deliberately moderate: an early prototype (docs/foundation.md) showed that strong
rotation plus strong noise makes shape unlearnable for a tiny teacher in minutes.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "ring")
COLOURS: dict[str, tuple[float, float, float]] = {
    # Hues ~60 degrees apart, so colour jitter never crosses into a neighbour.
    "red": (0.86, 0.12, 0.10),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.12, 0.68, 0.16),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.12, 0.22, 0.90),
    "magenta": (0.85, 0.12, 0.80),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
SIZES: tuple[str, ...] = ("small", "large")
DOMAINS: tuple[str, ...] = ("photo", "sketch", "painting", "noisy")


@dataclass(frozen=True)
class Params:
    """Per-image parameters of one batch (all arrays have length N)."""

    shape: np.ndarray  # int index into SHAPES
    colour: np.ndarray  # [N, 3] RGB in [0, 1], already jittered
    pattern: np.ndarray  # int index into PATTERNS
    scale: np.ndarray  # half-width of the shape as a fraction of the half image
    angle: np.ndarray  # radians
    offset: np.ndarray  # [N, 2] centre offset in [-1, 1] coordinates
    light: np.ndarray  # [N, 2] direction of the shading gradient
    seed: np.ndarray  # int, seeds the per-image textures


def _box(px: np.ndarray, py: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(px) - hx, np.abs(py) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _triangle(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    # Equilateral triangle pointing up (Inigo Quilez's exact SDF), circumradius ~r.
    k = np.sqrt(3.0)
    py = -py + r * 0.25
    px = np.abs(px) - r * 0.866
    py = py + r * 0.866 / k
    flip = px + k * py > 0
    px2 = np.where(flip, (px - k * py) / 2, px)
    py2 = np.where(flip, (-k * px - py) / 2, py)
    px2 = px2 - np.clip(px2, -2 * r * 0.866, 0)
    return -np.hypot(px2, py2) * np.sign(py2)


def _star(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    # Polar pseudo-distance of a five-pointed star: good enough for fill and outline.
    theta = np.arctan2(px, py)
    rad = np.hypot(px, py)
    spike = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at tips, 0 between
    boundary = r * (0.45 + 0.55 * spike**1.5)
    return (rad - boundary) * 0.7


def shape_sdf(shape: int, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of ``SHAPES[shape]`` with unit half-width."""
    name = SHAPES[shape]
    if name == "circle":
        return np.hypot(px, py) - 0.9
    if name == "square":
        return _box(px, py, 0.78, 0.78)
    if name == "triangle":
        return _triangle(px, py * 1.0 + 0.1, 1.05)
    if name == "cross":
        return np.minimum(_box(px, py, 0.95, 0.3), _box(px, py, 0.3, 0.95))
    if name == "star":
        return _star(px, py, 1.05)
    if name == "ring":
        return np.abs(np.hypot(px, py) - 0.68) - 0.27
    raise ValueError(f"unknown shape index {shape}")


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int, ch: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells x cells`` grid, bilinearly zoomed."""
    grid = rng.random((n, cells, cells, ch))
    zoom = (1, size / cells, size / cells, 1)
    return np.clip(ndimage.zoom(grid, zoom, order=1, mode="nearest"), 0, 1)[:, :size, :size]


def _coords(p: Params, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-image shape coordinates (inverse similarity transform) and the pixel size."""
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    x = xx[None] - p.offset[:, 0, None, None]
    y = yy[None] - p.offset[:, 1, None, None]
    c, s = np.cos(p.angle)[:, None, None], np.sin(p.angle)[:, None, None]
    sc = p.scale[:, None, None]
    u = (c * x + s * y) / sc
    v = (-s * x + c * y) / sc
    return u, v, 2.0 / size


def _sdf(p: Params, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    d = np.empty_like(u)
    for k in np.unique(p.shape):
        idx = p.shape == k
        d[idx] = shape_sdf(int(k), u[idx], v[idx])
    return d * p.scale[:, None, None]  # back to image units


def _pattern(p: Params, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    stripes = 0.72 + 0.28 * (np.sin(u * 9.0) > 0)
    dots = 1.0 - 0.3 * ((np.sin(u * 8.0) * np.sin(v * 8.0)) > 0.45)
    pat = p.pattern[:, None, None]
    return np.where(pat == 1, stripes, np.where(pat == 2, dots, 1.0))


def _filled(p: Params, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shape fill (RGB) and its coverage, shared by photo, painting and noisy."""
    u, v, pix = _coords(p, size)
    d = _sdf(p, u, v)
    cover = np.clip(0.5 - d / pix, 0, 1)
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    shade = 0.88 + 0.14 * (p.light[:, 0, None, None] * xx + p.light[:, 1, None, None] * yy)
    fill = p.colour[:, None, None, :] * (shade * _pattern(p, u, v))[..., None]
    return np.clip(fill, 0, 1), cover[..., None]


def _muted_background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Textured, low-saturation background so it never carries a class colour."""
    base = rng.uniform(0.3, 0.7, (n, 1, 1, 1))
    tint = rng.uniform(-0.06, 0.06, (n, 1, 1, 3))
    tex = _smooth_noise(rng, n, size, 4, 1) - 0.5
    fine = _smooth_noise(rng, n, size, max(size // 4, 2), 1) - 0.5
    return np.clip(base + tint + 0.35 * tex + 0.12 * fine, 0, 1)


def render(domain: str, p: Params, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one batch of images of ``domain``.

    Args:
        domain: one of ``DOMAINS``.
        p: per-image parameters.
        size: output height and width in pixels.
        rng: generator for textures and noise (seeded by the caller: deterministic).

    Returns:
        ``uint8`` array ``[N, size, size, 3]``.
    """
    n = len(p.shape)
    if domain == "sketch":
        u, v, pix = _coords(p, size)
        d = _sdf(p, u, v)
        wobble = (_smooth_noise(rng, n, size, 5, 1)[..., 0] - 0.5) * 1.2 * pix
        width = 0.9 * pix * max(size / 32, 1) ** 0.5
        line = np.clip(0.5 - (np.abs(d + wobble) - width / 2) / pix, 0, 1)[..., None]
        paper = rng.uniform(0.88, 1.0, (n, 1, 1, 1)) - 0.04 * _smooth_noise(rng, n, size, 8, 1)
        ink = p.colour[:, None, None, :] * 0.85
        img = paper * (1 - line) + ink * line
    elif domain in ("photo", "noisy"):
        fill, cover = _filled(p, size, rng)
        bg = _muted_background(rng, n, size)
        img = bg * (1 - cover) + fill * cover
        if domain == "photo":
            img = img + rng.normal(0, 0.03, img.shape)
        else:
            img = img + rng.normal(0, 0.17, img.shape)
            salt = rng.random(img.shape[:3]) < 0.03
            img = np.where(salt[..., None], rng.random((*img.shape[:3], 1)), img)
    elif domain == "painting":
        fill, cover = _filled(p, size, rng)
        # Brush-stroke background: anisotropic colourful blobs, mildly saturated.
        hues = rng.random((n, 1, 1, 1))
        strokes = _smooth_noise(rng, n, size, 6, 3)
        bg = 0.45 + 0.25 * (strokes - 0.5) + 0.1 * np.cos(2 * np.pi * (hues + np.arange(3) / 3))
        img = bg * (1 - cover) + fill * cover
        sigma = 0.7 * size / 32
        img = ndimage.gaussian_filter(img, sigma=(0, sigma, sigma * 1.6, 0))
        gain = 1 + 0.18 * (_smooth_noise(rng, n, size, max(size // 3, 2), 1) - 0.5)
        img = (img - 0.5) * 1.15 + 0.5  # painterly contrast
        img = img * gain
    else:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def jitter_colour(rgb: np.ndarray, rng: np.random.Generator, hue: float, sat: float,
                  val: float) -> np.ndarray:
    """Jitter ``[N, 3]`` RGB colours in HSV space (hue in turns, sat/val as factors)."""
    out = np.empty_like(rgb)
    for i, (r, g, b) in enumerate(rgb):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        h = (h + rng.uniform(-hue, hue)) % 1.0
        s = float(np.clip(s * rng.uniform(1 - sat, 1 + sat), 0, 1))
        v = float(np.clip(v * rng.uniform(1 - val, 1 + val), 0, 1))
        out[i] = colorsys.hsv_to_rgb(h, s, v)
    return out
