"""Token and attention taps on ViTs: the inputs of the P4 losses ``attn`` and ``token_nce``.

A :class:`TokenTap` puts forward hooks on chosen transformer blocks of a ViT and, inside
``with tap.record() as taps:``, fills ``taps["tokens"]`` and ``taps["attn"]`` with, per
tapped block and in block order,

- the block's output hidden states ``[B, N, D]``: batch first, the CLS token first, then
  the n x n patch grid in row-major order (the layout ``losses/p4.py`` reads);
- the block's attention probabilities ``[B, H, N, N]`` (softmax over keys, rows sum to 1).

Why recompute attention: timm's ``Attention`` (when ``fused_attn``) and open_clip's
``nn.MultiheadAttention`` (``need_weights=False``) run fused kernels that never materialise
the probabilities. Rather than switching the model to its slow path (which changes its
outputs in the last bits), a pre-hook on the attention module takes the module's *input*
and recomputes ``softmax(q k^T * scale)`` from the module's own q/k projections (with its
q/k norms, or open_clip's scaled-cosine logits). The model's forward is not touched, so
its outputs are bit-identical with or without the tap. The recomputation follows the
ambient autograd mode: on the student (grad enabled) ``attn`` backpropagates into the qkv
weights and everything before them; on the teacher, call it under ``torch.no_grad()``
(:meth:`Teacher.encode_images_with_tokens` does). Cost: one extra q/k projection and one
``[B, H, N, N]`` map per tapped block.

Supported: timm ``VisionTransformer`` with a class token and no register/distillation
tokens (``num_prefix_tokens == 1``), no patch dropout, blocks whose ``attn`` is
``timm.layers.Attention``; open_clip ``VisionTransformer`` (its blocks' ``attn`` is
``nn.MultiheadAttention`` or open_clip's ``Attention``), batch- or sequence-first.
Anything else raises :class:`ConfigError` naming the config key and model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vldistill.trainers.config.schema import ConfigError

Taps = dict[str, list[Tensor]]
AttnFn = Callable[[nn.Module, Tensor], Tensor]  # (attention module, its input [B, N, D]) -> probs
WHAT = ("tokens", "attn")


# --- attention probabilities recomputed from q and k ----------------------------------------


def _heads(x: Tensor, heads: int) -> Tensor:
    """``[B, N, H * d]`` -> ``[B, H, N, d]``."""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


def _softmax_scores(q: Tensor, k: Tensor, scale: float | Tensor) -> Tensor:
    """``softmax(q k^T * scale)`` over keys, in float32 (bf16 scores lose the small ones)."""
    return ((q.float() @ k.float().transpose(-2, -1)) * scale).softmax(dim=-1)


def timm_attention_probs(attn: nn.Module, x: Tensor) -> Tensor:
    """Attention probabilities ``[B, H, N, N]`` of a ``timm.layers.Attention`` on input ``x``.

    Mirrors ``Attention.forward``: ``qkv`` projection, ``q_norm``/``k_norm``, logits
    ``q k^T * head_dim**-0.5`` (no mask: ViT self-attention over all tokens).
    """
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return _softmax_scores(q, k, attn.scale)


def open_clip_attention_probs(attn: nn.Module, x: Tensor) -> Tensor:
    """Attention probabilities ``[B, H, N, N]`` of an open_clip block's attention on ``x``.

    ``x`` is batch first. ``nn.MultiheadAttention``: q and k from ``in_proj_weight`` /
    ``in_proj_bias``, logits scaled by ``head_dim**-0.5``. open_clip ``Attention``: the same
    projection layout, then either scaled-cosine logits (``logit_scale``, clamped as in its
    forward) or ``ln_q``/``ln_k`` and ``head_dim**-0.5``.
    """
    d = x.shape[-1]
    heads = attn.num_heads
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(x, w[:d], None if bias is None else bias[:d])
    k = F.linear(x, w[d:2 * d], None if bias is None else bias[d:2 * d])
    q, k = _heads(q, heads), _heads(k, heads)
    if isinstance(attn, nn.MultiheadAttention):
        return _softmax_scores(q, k, (d // heads) ** -0.5)
    if attn.logit_scale is not None:  # scaled cosine attention
        scale = torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp().float()
        return _softmax_scores(F.normalize(q, dim=-1), F.normalize(k, dim=-1), scale)
    return _softmax_scores(attn.ln_q(q), attn.ln_k(k), attn.scale)


# --- the tap ---------------------------------------------------------------------------------


def _check_layers(layers: Sequence[int] | None, depth: int, key: str) -> list[int]:
    """Block indices (negative counts from the end) -> sorted, unique, in ``[0, depth)``."""
    if layers is None:
        return list(range(depth))
    out = set()
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth:
            raise ConfigError(f"{key}: block index {i!r} out of range for a ViT with {depth} "
                              f"blocks (use 0..{depth - 1}, or negative from the end)")
        out.add(i % depth)
    if not out:
        raise ConfigError(f"{key}: empty list of blocks (use null for all {depth})")
    return sorted(out)


class TokenTap:
    """Forward hooks recording hidden states and attention maps of chosen ViT blocks.

    Build it with :func:`tap_timm_vit` or :func:`tap_open_clip_vit`. Hooks only record
    inside :meth:`record`; outside it they return at once, so a tap can stay installed.

    Attributes:
        layers: the tapped block indices (sorted; lists come out in this order).
        depth: number of blocks of the model.
        width: hidden width D of the tokens.
        heads: attention heads H.
        num_tokens: tokens per image N = 1 + grid^2 at the model's configured input size.
    """

    def __init__(self, blocks: Sequence[nn.Module], attn_fn: AttnFn, *, width: int, heads: int,
                 num_tokens: int, layers: Sequence[int] | None = None, seq_first: bool = False,
                 key: str = "layers") -> None:
        self.depth, self.width, self.heads, self.num_tokens = len(blocks), width, heads, num_tokens
        self.layers = _check_layers(layers, len(blocks), key)
        self._attn_fn = attn_fn
        self._seq_first = seq_first  # open_clip with batch_first=False runs blocks on [N, B, D]
        self._current: Taps | None = None
        self._what: tuple[str, ...] = WHAT
        self._handles = []
        for i in self.layers:
            block = blocks[i]
            self._handles.append(block.register_forward_hook(self._on_block))
            self._handles.append(block.attn.register_forward_pre_hook(self._on_attn))

    def _batch_first(self, x: Tensor) -> Tensor:
        return x.transpose(0, 1) if self._seq_first else x

    def _on_attn(self, module: nn.Module, args: tuple) -> None:
        if self._current is None or "attn" not in self._what:
            return
        self._current["attn"].append(self._attn_fn(module, self._batch_first(args[0])))

    def _on_block(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if self._current is None or "tokens" not in self._what:
            return
        self._current["tokens"].append(self._batch_first(output))

    @contextmanager
    def record(self, what: Sequence[str] = WHAT) -> Iterator[Taps]:
        """Record one forward pass: ``with tap.record() as taps: model(x)``.

        Args:
            what: which of ``"tokens"`` / ``"attn"`` to record (the other list stays empty,
                and skipping ``attn`` skips its recomputation).

        Yields:
            ``{"tokens": [...], "attn": [...]}``, filled as the tapped blocks run, one entry
            per tapped block in block order.

        Raises:
            RuntimeError: if more than one forward pass ran inside one ``record``.
        """
        bad = sorted(set(what) - set(WHAT))
        if bad:
            raise ValueError(f"TokenTap.record: unknown outputs {bad}; choose from {list(WHAT)}")
        if self._current is not None:
            raise RuntimeError("TokenTap.record is already active (nested record)")
        taps: Taps = {"tokens": [], "attn": []}
        self._current, self._what = taps, tuple(what)
        try:
            yield taps
        finally:
            self._current = None
        for name in what:
            if len(taps[name]) > len(self.layers):
                raise RuntimeError(f"TokenTap: {len(taps[name])} {name} maps for {len(self.layers)} "
                                   "tapped blocks; run one forward pass per record()")

    def remove(self) -> None:
        """Remove the hooks (the tap cannot record afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def is_timm_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (any token layout)."""
    from timm.models.vision_transformer import VisionTransformer
    return isinstance(model, VisionTransformer)


def check_timm_vit(model: nn.Module, name: str, key: str = "student.name") -> None:
    """Raise :class:`ConfigError` (naming ``key``/``name``) unless :func:`tap_timm_vit` can tap it."""
    from timm.layers import Attention
    if not is_timm_vit(model):
        raise ConfigError(f"{key}={name!r}: {type(model).__name__} is not a timm VisionTransformer; "
                          "the token losses (attn, token_nce) need a ViT student")
    extra = model.num_prefix_tokens - (1 if model.cls_token is not None else 0)
    if model.cls_token is None or extra:
        raise ConfigError(f"{key}={name!r}: the token losses need exactly one CLS token then the "
                          f"patch grid; this model has class_token={model.cls_token is not None} "
                          f"and {extra} register/distillation token(s)")
    if not isinstance(model.patch_drop, nn.Identity):
        raise ConfigError(f"{key}={name!r}: patch dropout drops grid tokens; set patch_drop_rate=0")
    gh, gw = model.patch_embed.grid_size
    if gh != gw:
        raise ConfigError(f"{key}={name!r}: the token losses need a square patch grid, got {gh}x{gw}")
    for i, blk in enumerate(model.blocks):
        if not isinstance(getattr(blk, "attn", None), Attention):
            raise ConfigError(f"{key}={name!r}: block {i} has no timm.layers.Attention "
                              f"({type(getattr(blk, 'attn', None)).__name__}); cannot tap it")


def tap_timm_vit(model: nn.Module, layers: Sequence[int] | None = None, name: str = "model",
                 key: str = "student.name") -> TokenTap:
    """Tap blocks ``layers`` (default all) of a timm ViT; see :class:`TokenTap`.

    Args:
        model: a timm ``VisionTransformer`` (classifier removed or not: blocks are the same).
        layers: block indices; None taps every block.
        name, key: the model name and config key named in errors (``student.name``).
    """
    check_timm_vit(model, name, key)
    gh, _ = model.patch_embed.grid_size
    attn = model.blocks[0].attn
    return TokenTap(list(model.blocks), timm_attention_probs, width=model.embed_dim,
                    heads=attn.num_heads, num_tokens=1 + gh * gh, layers=layers,
                    key=f"{key}={name!r} layers")


def tap_open_clip_vit(model: nn.Module, layers: Sequence[int] | None = None, name: str = "model",
                      key: str = "teacher.name") -> TokenTap:
    """Tap blocks ``layers`` (default all) of an open_clip ViT image tower; see :class:`TokenTap`.

    Args:
        model: an open_clip CLIP (its ``visual`` is tapped) or the ``VisionTransformer`` itself.
        layers: block indices; None taps every block.
        name, key: the model name and config key named in errors.
    """
    from open_clip.transformer import Attention, VisionTransformer
    visual = getattr(model, "visual", model)
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"{key}={name!r}: image tower {type(visual).__name__} is not an open_clip "
                          "VisionTransformer; the token losses (attn, token_nce) need a ViT teacher "
                          "(e.g. teacher.embedded.model=vldistill-vit-tiny)")
    gh, gw = visual.grid_size
    if gh != gw:
        raise ConfigError(f"{key}={name!r}: the token losses need a square patch grid, got {gh}x{gw}")
    blocks = list(visual.transformer.resblocks)
    for i, blk in enumerate(blocks):
        if not isinstance(getattr(blk, "attn", None), (nn.MultiheadAttention, Attention)):
            raise ConfigError(f"{key}={name!r}: block {i} attention "
                              f"{type(getattr(blk, 'attn', None)).__name__} cannot be tapped")
    return TokenTap(blocks, open_clip_attention_probs, width=visual.transformer.width,
                    heads=blocks[0].attn.num_heads, num_tokens=1 + gh * gh, layers=layers,
                    seq_first=not visual.transformer.batch_first, key=f"{key}={name!r} layers")

