"""P3 (Xuan et al., ACM MM 2023): data-free surrogate images from prompts, with diversification.

No real training image is used: for each class ``c`` and each synthetic image we build a
*target* text embedding that carries the class and a style, then optimise an image so that
the frozen teacher's image embedding matches that target (maximum cosine). The student is
later distilled on these images. The module has three parts:

**Prompt targets** (``data.synthetic.strategy``, a key of the registry :data:`STRATEGIES`),
one target per synthetic image:

* ``none``: ``base_prompt`` ("a photo of a {}.") for every image: one target per class;
* ``mix``: ``prompt`` ("a {style} of a {}.") with the ``{style}`` slot holding a random
  convex combination (Dirichlet(1) weights, ``mix_words`` distinct words, seeded) of the
  token embeddings of words of the style dictionary ``styles``;
* ``random``: the slot holds a fresh pseudo-word per image, drawn from a Gaussian with the
  per-dimension mean / std of the teacher's token-embedding table (so it looks like "some
  token" to the text tower, not like an out-of-range vector);
* ``contrastive``: ``pseudo_words`` learnable pseudo-words (initialised like ``random``) are
  optimised for ``prompt_steps`` steps, before any image, on
  ``contrastive_weight * L_nce + L_cls``: ``L_nce`` is an InfoNCE over styles where the
  anchor is style ``s`` with class ``c`` and the positive is the *same* style with another
  class ``c'`` (negatives: the other styles with ``c'``), which pushes the styles apart
  while making each a consistent direction across classes (``prompt_classes`` classes are
  sampled per step, so 1000-class teachers stay cheap); ``L_cls`` is the cross-entropy
  of each styled prompt among the plain class prompts (``base_prompt``, temperature
  ``class_tau``), which keeps the class semantics. Image ``i`` of a class gets style
  ``i % pseudo_words``.

Putting an embedding in a prompt's slot needs the text tower run from token embeddings:
:func:`encode_text_from_embeddings` replicates open_clip's ``encode_text`` after its
``token_embedding`` lookup (tested equal to it). A style word that the BPE splits into
several tokens is represented by the mean of its token embeddings (one slot, so words of
different lengths can be mixed).

**Style dictionary.** The default excludes the world's *shifted* domain words and their
caption synonyms (sketch, drawing, painting, artwork, picture, noisy, grainy): the student's
``shift_acc`` measures generalisation to domains it never trained on, and a dictionary that
names them would generate training images in the test domains. ``photo`` (the training
domain) is kept. Passing the domain words in ``styles`` is the "oracle styles" ablation.
Note that the embedded teacher only ever saw the world's captions, so its token embeddings
of ``cartoon`` etc. are untrained (random-init): with it, ``mix`` over these words behaves
much like ``random`` (see docs/p3_synthesis.md); with a real CLIP teacher they are real styles.

**Images** are parameterised as pixels through a sigmoid (``x = sigmoid(theta)``, theta
seeded Gaussian with ``init_std``), optimised with Adam on ``1 - cos(T_img(aug(x)), target)``
averaged over ``cutouts`` random augmentations per image and step (scale / translation /
horizontal flip via one affine ``grid_sample``, strength ``augment`` in [0, 1]) plus
``tv_weight`` x a squared total-variation smoothness prior. P3 uses VQGAN latents; a VQGAN
would need downloaded weights (never here) and is overkill at 32 px: augmentation + TV is
the standard pixel-space image prior of CLIP-guided synthesis (it stops adversarial
high-frequency solutions that only fool one view).

**Cache.** :func:`synthesize` stores ``images uint8 [N, 3, H, W]``, ``labels int64 [N]`` and
the meta (JSON) in one file ``cache_root / "synthetic" / <key> / data.pt`` (written to a tmp
file and ``os.replace``-d, read back with ``weights_only=True``), plus a readable
``meta.json``. The key hashes the teacher's key, the class names and every
:class:`SynthConfig` field; a second call with the same key returns the stored tensors
without optimising (``meta["from_cache"]``). Concurrent callers (sweep trials started
together) serialise on a file lock in the entry's folder, so one builds and the rest load.

**Diversity** (:func:`diversity`): mean pairwise cosine between the teacher's embeddings of
distinct synthetic images (off-diagonal mean; lower = more diverse). The meta stores it over
all images (``diversity``, dominated by between-class spread) and averaged within each class
(``diversity_per_class``, what prompt diversification is meant to lower); the same
measure on the prompt targets is ``target_diversity_per_class`` (how different the
prompts are, before any image is made).

Measured numbers with the embedded teacher: docs/p3_synthesis.md.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vldistill.trainers.config.schema import DEFAULT_STYLES, ConfigError, SynthConfig  # noqa: F401
from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)

PLACEHOLDER = "*"  # one BPE token in CLIP's vocabulary; marks the style slot in a prompt
_KEY = "data.synthetic"
_SEED_MIX, _SEED_RANDOM, _SEED_PSEUDO, _SEED_IMAGES = 11, 13, 17, 19  # independent streams


def validate_synth(cfg: SynthConfig) -> None:
    """Value checks; raise :class:`ConfigError` naming the ``data.synthetic.<key>``."""

    def check(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{_KEY}.{key}: {msg}")

    check(cfg.strategy in STRATEGIES, "strategy",
          f"must be one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
    for key in ("images_per_class", "steps", "batch_size", "cutouts", "mix_words", "pseudo_words",
                "prompt_classes"):
        check(getattr(cfg, key) >= 1, key, f"must be >= 1, got {getattr(cfg, key)!r}")
    check(cfg.image_size >= 8, "image_size", f"must be >= 8, got {cfg.image_size}")
    check(cfg.prompt_steps >= 0, "prompt_steps", f"must be >= 0, got {cfg.prompt_steps}")
    for key in ("lr", "init_std", "prompt_lr", "contrastive_tau", "class_tau"):
        check(getattr(cfg, key) > 0, key, f"must be > 0, got {getattr(cfg, key)!r}")
    for key in ("tv_weight", "contrastive_weight"):
        check(getattr(cfg, key) >= 0, key, f"must be >= 0, got {getattr(cfg, key)!r}")
    check(0 <= cfg.augment <= 1, "augment", f"must be in [0, 1], got {cfg.augment}")
    check("{style}" in cfg.prompt and "{}" in cfg.prompt.replace("{style}", ""), "prompt",
          f"must contain '{{style}}' and '{{}}' (class name), got {cfg.prompt!r}")
    check("{}" in cfg.base_prompt, "base_prompt", f"must contain '{{}}', got {cfg.base_prompt!r}")
    check(all(isinstance(s, str) and s.strip() for s in cfg.styles), "styles",
          "every style must be a non-empty string")
    if cfg.strategy == "mix":
        check(len(set(cfg.styles)) >= cfg.mix_words >= 2, "styles",
              f"mix needs >= mix_words ({cfg.mix_words}) >= 2 distinct words, got {cfg.styles}")


# ----- text tower from token embeddings ----------------------------------------------------


def _text_tower(model: nn.Module) -> nn.Module:
    """The module holding the text transformer's parts (``CLIP`` itself or ``CustomTextCLIP.text``)."""
    tower = getattr(model, "text", None)
    tower = model if tower is None else tower
    if not all(hasattr(tower, a) for a in ("token_embedding", "positional_embedding",
                                           "transformer", "ln_final")):
        raise ValueError(f"{type(model).__name__}: prompt strategies need an open_clip text "
                         "transformer (token_embedding, transformer, ln_final); HF text towers "
                         "are not supported")
    if getattr(tower, "cls_emb", None) is not None:
        raise ValueError("CoCa-style text towers (appended cls token) are not supported")
    return tower


def encode_text_from_embeddings(model: nn.Module, embeds: Tensor, token_ids: Tensor) -> Tensor:
    """open_clip's ``encode_text`` from given token embeddings (unnormalised ``[B, D]``).

    Replicates the steps after ``token_embedding(text)``: + positional embedding, the
    transformer with the causal (and, if the tower uses one, padding) mask, ``ln_final``,
    pooling at the EOT token (``text_global_pool`` on ``token_ids``: the pooling position is
    read from the ids, so a replaced slot embedding keeps the real EOT position) and
    ``text_projection``.

    Args:
        model: an open_clip ``CLIP`` or ``CustomTextCLIP`` with a transformer text tower.
        embeds: ``[B, L, W]`` token embeddings (``L`` = the context length).
        token_ids: ``[B, L]`` the token ids the embeddings stand for.
    """
    from open_clip.transformer import text_global_pool
    tower = _text_tower(model)
    cast = tower.transformer.get_cast_dtype()
    x = embeds.to(cast)
    seq_len = x.shape[1]
    attn_mask = tower.attn_mask
    if getattr(tower, "use_pad_mask", False):
        add = tower._build_additive_mask(token_ids, seq_len, x.dtype)
        attn_mask = add if attn_mask is None else attn_mask[:seq_len, :seq_len].unsqueeze(0) + add
    x = x + tower.positional_embedding[:seq_len].to(cast)
    x = tower.transformer(x, attn_mask=attn_mask)
    x = tower.ln_final(x)
    if tower is model:
        pool, eos = getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
    else:
        pool, eos = getattr(tower, "pool_type", "argmax"), getattr(tower, "eos_id", None)
    x = text_global_pool(x, token_ids, pool, eos_token_id=eos)
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


def _inner_ids(teacher, text: str) -> list[int]:
    """Token ids of ``text`` without start / end tokens (open_clip tokenizers pad with 0)."""
    row = teacher.tokenizer([text])[0]
    end = int(row.argmax())  # EOT is the largest id (the pooling convention of CLIP)
    return row[1:end].tolist()


class PromptSlots:
    """Token ids of ``prompt`` per class with the position of its ``{style}`` slot.

    ``embed(cls_idx, style_vecs)`` puts ``style_vecs[i]`` into the slot of class
    ``cls_idx[i]``'s prompt and returns normalised text embeddings (differentiable w.r.t.
    ``style_vecs``).
    """

    def __init__(self, teacher, prompt: str, names: Sequence[str]):
        self.teacher = teacher
        self.tower = _text_tower(teacher.model)
        ph = _inner_ids(teacher, PLACEHOLDER)
        if len(ph) != 1:
            raise ValueError(f"placeholder {PLACEHOLDER!r} is not one token for {teacher.model_name}")
        texts = [prompt.replace("{style}", PLACEHOLDER).replace("{}", n) for n in names]
        self.ids = teacher.tokenizer(texts)
        hits = (self.ids == ph[0]).sum(1)
        if not torch.all(hits == 1):
            bad = texts[int((hits != 1).nonzero()[0])]
            raise ValueError(f"{_KEY}.prompt: the style slot must appear exactly once in the "
                             f"(possibly truncated) tokens of {bad!r}")
        self.slot = (self.ids == ph[0]).int().argmax(1)
        self.width = self.tower.token_embedding.weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    def embed(self, cls_idx: Tensor, style_vecs: Tensor) -> Tensor:
        tok = self.ids[cls_idx].to(self.device)
        emb = self.tower.token_embedding(tok)
        mask = F.one_hot(self.slot[cls_idx], tok.shape[1]).bool().to(self.device)[..., None]
        emb = torch.where(mask, style_vecs.to(emb.dtype)[:, None, :], emb)
        return F.normalize(encode_text_from_embeddings(self.teacher.model, emb, tok).float(), dim=-1)

    def embed_batched(self, cls_idx: Tensor, style_vecs: Tensor, batch: int = 256) -> Tensor:
        with torch.no_grad():
            return torch.cat([self.embed(cls_idx[i:i + batch], style_vecs[i:i + batch])
                              for i in range(0, len(cls_idx), batch)])


def word_embedding(teacher, word: str) -> Tensor:
    """One slot vector for ``word``: the mean of its BPE token embeddings."""
    tower = _text_tower(teacher.model)
    ids = torch.tensor(_inner_ids(teacher, word), device=tower.token_embedding.weight.device)
    return tower.token_embedding(ids).mean(0).detach()


def token_stats(teacher) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std of the teacher's token-embedding table ``[W]``, ``[W]``."""
    table = _text_tower(teacher.model).token_embedding.weight.detach()
    return table.mean(0), table.std(0)


# ----- prompt strategies -----------------------------------------------------------------


def _gen(cfg: SynthConfig, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1000 + stream)


def mean_style_cosine(p: Tensor) -> float:
    """Mean off-diagonal cosine between styles of the same class; ``p`` is ``[S, C, D]``."""
    s = p.shape[0]
    if s < 2:
        return 1.0
    sim = torch.einsum("scd,tcd->cst", p, p)  # [C, S, S]
    off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
    return float((off / (s * (s - 1))).mean())


def learn_pseudo_words(teacher, names: Sequence[str], cfg: SynthConfig,
                       progress: bool = False) -> tuple[Tensor, dict]:
    """Contrastive-Prompt: optimise ``pseudo_words`` style vectors (see the module docstring).

    Returns:
        The learned slot vectors ``[K, W]`` and stats: ``style_cos_init`` / ``style_cos_final``
        (:func:`mean_style_cosine` over all classes) and ``prompt_class_acc`` (fraction of
        styled prompts whose nearest plain class prompt is their own class).
    """
    slots = PromptSlots(teacher, cfg.prompt, names)
    mean, std = token_stats(teacher)
    k, c = cfg.pseudo_words, len(names)
    z = torch.randn(k, slots.width, generator=_gen(cfg, _SEED_PSEUDO)).to(slots.device)
    z.requires_grad_(True)
    anchors = teacher.encode_text([cfg.base_prompt.format(n) for n in names])  # [C, D]
    gen = _gen(cfg, _SEED_PSEUDO + 1)

    def prompts(classes: Tensor, grad: bool) -> Tensor:  # [K, M, D] for M classes, style-major
        m = len(classes)
        vec = (mean + std * z).repeat_interleave(m, dim=0)
        cls_idx = classes.repeat(k)
        out = slots.embed(cls_idx, vec) if grad else slots.embed_batched(cls_idx, vec.detach())
        return out.view(k, m, -1)

    every = torch.arange(c)
    init = mean_style_cosine(prompts(every, grad=False))
    opt = torch.optim.Adam([z], lr=cfg.prompt_lr)
    m = min(c, cfg.prompt_classes)
    diag = torch.arange(k, device=slots.device).repeat(m)
    with torch.enable_grad():
        for _ in tqdm(range(cfg.prompt_steps), desc="P3 pseudo-words", disable=not progress):
            classes = every if m == c else torch.randperm(c, generator=gen)[:m]
            p = prompts(classes, grad=True)  # [K, M, D]
            other = torch.zeros(1, dtype=torch.long)  # one class: the positive is the anchor
            if m > 1:  # positive: the same style with another class (a cyclic shift of classes)
                other = (torch.arange(m) + 1 + torch.randint(m - 1, (1,), generator=gen)) % m
            logits = torch.einsum("scd,tcd->cst", p, p[:, other.to(slots.device)]) / cfg.contrastive_tau
            l_nce = F.cross_entropy(logits.reshape(m * k, k), diag)
            l_cls = F.cross_entropy(p.reshape(k * m, -1) @ anchors.T / cfg.class_tau,
                                    classes.to(slots.device).repeat(k))
            loss = cfg.contrastive_weight * l_nce + l_cls
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    p = prompts(every, grad=False)
    acc = float(((p.reshape(k * c, -1) @ anchors.T).argmax(1).cpu() == every.repeat(k)).float().mean())
    return (mean + std * z).detach(), {"style_cos_init": init, "style_cos_final": mean_style_cosine(p),
                                       "prompt_class_acc": acc}


def prompt_targets(teacher, names: Sequence[str], cfg: SynthConfig,
                   progress: bool = False) -> tuple[Tensor, Tensor, list[str], dict]:
    """One normalised target text embedding per synthetic image.

    Returns:
        ``targets [N, D]``, ``labels [N]`` (class-major: ``images_per_class`` per class),
        a short description of each image's style, and strategy stats.
    """
    n_per, c = cfg.images_per_class, len(names)
    labels = torch.arange(c).repeat_interleave(n_per)
    within = torch.arange(n_per).repeat(c)  # index of the image within its class
    targets, desc, stats = STRATEGIES[cfg.strategy](teacher, names, cfg, labels, within, progress)
    return targets, labels, desc, stats


Strategy = Callable[[Any, Sequence[str], SynthConfig, Tensor, Tensor, bool],
                    tuple[Tensor, list[str], dict]]
"""``(teacher, names, cfg, labels, within, progress) -> (targets, styles, stats)``: one
normalised target per image (``labels``: its class, ``within``: its index in the class)."""


def _plain_prompts(teacher, names: Sequence[str], cfg: SynthConfig, labels: Tensor, within: Tensor,
                   progress: bool) -> tuple[Tensor, list[str], dict]:
    """``none``: the plain class prompt ``base_prompt`` for every image."""
    plain = teacher.encode_text([cfg.base_prompt.format(n) for n in names])
    return plain[labels.to(plain.device)], ["none"] * len(labels), {}


def _mixed_styles(teacher, names: Sequence[str], cfg: SynthConfig, labels: Tensor, within: Tensor,
               progress: bool) -> tuple[Tensor, list[str], dict]:
    """``mix``: the slot holds a Dirichlet(1) combination of ``mix_words`` style words per image."""
    slots = PromptSlots(teacher, cfg.prompt, names)
    n = len(labels)
    words = list(dict.fromkeys(cfg.styles))  # distinct, in order
    table = torch.stack([word_embedding(teacher, w) for w in words])  # [V, W]
    gen = _gen(cfg, _SEED_MIX)
    picks = torch.stack([torch.randperm(len(words), generator=gen)[:cfg.mix_words] for _ in range(n)])
    w = -torch.log(torch.rand(n, cfg.mix_words, generator=gen).clamp_min(1e-12))
    w = w / w.sum(1, keepdim=True)  # Dirichlet(1): uniform on the simplex
    vecs = (w.to(table.device)[..., None] * table[picks.to(table.device)]).sum(1)
    desc = [" + ".join(f"{float(a):.2f} {words[int(i)]}" for a, i in zip(wr, pr))
            for wr, pr in zip(w, picks)]
    return slots.embed_batched(labels, vecs), desc, {}


def _random_pseudo_words(teacher, names: Sequence[str], cfg: SynthConfig, labels: Tensor, within: Tensor,
                  progress: bool) -> tuple[Tensor, list[str], dict]:
    """``random``: the slot holds a fresh Gaussian pseudo-word (token-table statistics) per image."""
    slots = PromptSlots(teacher, cfg.prompt, names)
    n = len(labels)
    mean, std = token_stats(teacher)
    vecs = mean + std * torch.randn(n, slots.width, generator=_gen(cfg, _SEED_RANDOM)).to(mean.device)
    return slots.embed_batched(labels, vecs), [f"random#{i}" for i in range(n)], {}


def _learned_pseudo_words(teacher, names: Sequence[str], cfg: SynthConfig, labels: Tensor,
                       within: Tensor, progress: bool) -> tuple[Tensor, list[str], dict]:
    """``contrastive``: the slot holds learned pseudo-word ``i % pseudo_words`` for image ``i``."""
    slots = PromptSlots(teacher, cfg.prompt, names)
    pseudo, stats = learn_pseudo_words(teacher, names, cfg, progress)
    style = within % cfg.pseudo_words
    vecs = pseudo[style.to(pseudo.device)]
    return slots.embed_batched(labels, vecs), [f"pseudo#{int(s)}" for s in style], stats


STRATEGIES: dict[str, Strategy] = {"none": _plain_prompts, "mix": _mixed_styles,
                                   "random": _random_pseudo_words, "contrastive": _learned_pseudo_words}
"""The prompt strategies by the name ``data.synthetic.strategy`` gives; :func:`validate_synth`
accepts exactly these keys."""


# ----- image synthesis ---------------------------------------------------------------------


def _augment(x: Tensor, cutouts: int, strength: float, gen: torch.Generator) -> Tensor:
    """``cutouts`` random views of each image, view-major (row ``j * B + i`` is image ``i``).

    Zoom-in scale in ``[1 - 0.5 a, 1]``, a translation that keeps the crop inside the image
    plus ``0.1 a`` jitter (reflection padding), horizontal flip with probability 0.5 when
    ``a > 0``; one affine ``grid_sample`` (differentiable w.r.t. the pixels).
    """
    xs = x.repeat(cutouts, 1, 1, 1)
    if strength <= 0:
        return xs
    n = xs.shape[0]
    scale = 1 - 0.5 * strength * torch.rand(n, generator=gen)
    room = (1 - scale) + 0.1 * strength
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * room[:, None]
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(xs.shape), align_corners=False)
    return F.grid_sample(xs, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def total_variation(x: Tensor) -> Tensor:
    """Mean squared difference of vertically and horizontally adjacent pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


@torch.no_grad()
def _cosine(teacher, images: Tensor, targets: Tensor) -> Tensor:
    return (teacher.encode_images(images) * targets).sum(-1)


def synthesize_images(teacher, targets: Tensor, cfg: SynthConfig,
                      progress: bool = False) -> tuple[Tensor, dict]:
    """Optimise one image per target; returns ``uint8 [N, 3, H, W]`` and cosine stats.

    ``cos_before`` / ``cos_after``: mean cosine between the teacher's embedding of the
    un-augmented image (initial noise / final uint8 image) and its target.
    """
    device = targets.device
    gen = _gen(cfg, _SEED_IMAGES)
    n, size = len(targets), cfg.image_size
    out, before, after = [], [], []
    batches = range(0, n, cfg.batch_size)
    bar = tqdm(total=len(batches) * cfg.steps, desc=f"P3 images ({cfg.strategy})", disable=not progress)
    for start in batches:
        tgt = targets[start:start + cfg.batch_size]
        b = len(tgt)
        theta = (cfg.init_std * torch.randn(b, 3, size, size, generator=gen)).to(device)
        before.append(_cosine(teacher, torch.sigmoid(theta), tgt))
        theta.requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=cfg.lr)
        tgt_views = tgt.repeat(cfg.cutouts, 1)
        with torch.enable_grad():
            for _ in range(cfg.steps):
                x = torch.sigmoid(theta)
                views = _augment(x, cfg.cutouts, cfg.augment, gen)
                emb = F.normalize(teacher.model.encode_image(teacher.preprocess(views)).float(), dim=-1)
                loss = (1 - (emb * tgt_views).sum(-1)).mean() + cfg.tv_weight * total_variation(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
        img = (torch.sigmoid(theta.detach()) * 255).round().to(torch.uint8)
        after.append(_cosine(teacher, img.float() / 255, tgt))
        out.append(img.cpu())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return torch.cat(out), {"cos_before": float(torch.cat(before).mean()),
                            "cos_after": float(torch.cat(after).mean())}


# ----- diversity, cache, entry point -------------------------------------------------------


def _mean_offdiag(e: Tensor) -> float:
    n = len(e)
    sim = e @ e.T
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def _embed(teacher, images: Tensor, batch_size: int = 256) -> Tensor:
    device = teacher.mean.device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        out.append(teacher.encode_images(x))
    return torch.cat(out)


def diversity(teacher, images: Tensor, labels: Tensor | None = None) -> float:
    """Mean pairwise cosine of the teacher's embeddings of distinct images (lower = more diverse).

    Args:
        images: ``uint8 [N, 3, H, W]`` or floats in ``[0, 1]``.
        labels: if given, the within-class mean pairwise cosine averaged over the classes
            with at least two images (each class weighs the same).
    """
    return embedding_diversity(_embed(teacher, images), labels)


def embedding_diversity(e: Tensor, labels: Tensor | None = None) -> float:
    """:func:`diversity` of given normalised embeddings ``[N, D]`` (images or prompt targets)."""
    if labels is None:
        if len(e) < 2:
            raise ValueError("diversity needs at least two images")
        return _mean_offdiag(e)
    labels = labels.to(e.device)
    per = [_mean_offdiag(e[labels == c]) for c in labels.unique().tolist()
           if int((labels == c).sum()) >= 2]
    if not per:
        raise ValueError("diversity per class needs a class with at least two images")
    return sum(per) / len(per)


def synth_key(teacher_key: str, names: Sequence[str], cfg: SynthConfig) -> str:
    blob = json.dumps({"v": 1, "teacher": teacher_key, "classes": list(names), "cfg": asdict(cfg)},
                      sort_keys=True)
    return content_key(blob)


def synthesize(teacher, class_names: Sequence[str], cfg: SynthConfig, cache_root: Path,
               progress: bool = True) -> tuple[Tensor, Tensor, dict]:
    """The P3 synthetic training set of ``class_names`` (cached on disk, see the module docstring).

    Args:
        teacher: a frozen :class:`vldistill.trainers.teachers.Teacher` (its ``key`` must
            identify its weights: it is part of the cache key).
        class_names: class names as they go into the prompts; label ``k`` is ``class_names[k]``.
        cfg: the (validated here) synthesis config.
        cache_root: the vldistill cache root; entries live under ``cache_root/synthetic/<key>``.

    Returns:
        ``images uint8 [N, 3, H, W]``, ``labels int64 [N]`` (class-major), and the meta:
        timings, ``cos_before`` / ``cos_after``, ``zero_shot_acc`` (teacher, among the
        ``base_prompt`` class prompts), ``diversity`` / ``diversity_per_class`` /
        ``target_diversity_per_class``, per-image ``styles``, strategy stats, ``from_cache``.
    """
    validate_synth(cfg)
    names = list(class_names)
    if not names:
        raise ValueError("synthesize needs at least one class name")
    key = synth_key(teacher.key, names, cfg)
    folder = Path(cache_root) / "synthetic" / key
    path = folder / "data.pt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # Trials started together wait on the lock; the first builds, the others then load.
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not path.is_file():
                    return _build(teacher, names, cfg, key, folder, progress)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    log.info("P3 synthetic set loaded from %s", path)
    return blob["images"], blob["labels"], {**json.loads(blob["meta"]), "from_cache": True}


def _build(teacher, names: list[str], cfg: SynthConfig, key: str, folder: Path,
           progress: bool) -> tuple[Tensor, Tensor, dict]:
    path = folder / "data.pt"
    t0 = time.time()
    targets, labels, styles, stats = prompt_targets(teacher, names, cfg, progress)
    t_prompts = time.time() - t0
    images, cos = synthesize_images(teacher, targets, cfg, progress)
    t_images = time.time() - t0 - t_prompts
    plain = teacher.encode_text([cfg.base_prompt.format(n) for n in names])
    pred = (_embed(teacher, images) @ plain.T).argmax(1).cpu()
    meta = {"key": key, "teacher": teacher.key, "classes": names, "n": len(labels),
            "config": asdict(cfg), "seconds_prompts": round(t_prompts, 2),
            "seconds_images": round(t_images, 2), **cos, **stats,
            "zero_shot_acc": float((pred == labels).float().mean()),
            "diversity": diversity(teacher, images) if len(images) > 1 else 1.0,
            "diversity_per_class": (diversity(teacher, images, labels)
                                    if cfg.images_per_class > 1 else 1.0),
            "target_diversity_per_class": (embedding_diversity(targets.float(), labels)
                                           if cfg.images_per_class > 1 else 1.0),
            "styles": styles}
    meta["seconds"] = round(time.time() - t0, 2)
    tmp = folder / f".data.pt.tmp{os.getpid()}"
    tmp_meta = folder / f".meta.json.tmp{os.getpid()}"
    try:
        torch.save({"images": images, "labels": labels, "meta": json.dumps(meta)}, tmp)
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, folder / "meta.json")
        os.replace(tmp, path)  # data.pt last: its presence means the entry is complete
    finally:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    log.info("P3 synthetic set (%s, %d images) built in %.0f s, cached at %s",
             cfg.strategy, len(labels), meta["seconds"], path)
    return images, labels, {**meta, "from_cache": False}
