"""Frozen open_clip teachers: any open_clip model, or the embedded teacher.

:class:`Teacher` wraps an open_clip model with its own preprocessing: it takes images as
float tensors in ``[0, 1]`` at the *data* resolution and resizes / normalises them to the
teacher's resolution and statistics itself, so teacher and student preprocessing never
get mixed up (open_clip's distillation path shares transforms; we do not).

* ``teacher.name=<open_clip model>`` with ``teacher.pretrained=<tag>`` downloads through
  open_clip (real runs), ``teacher.pretrained=/path/ckpt.pt`` loads a local checkpoint
  with ``weights_only=True``, and ``teacher.pretrained=null`` gives random weights
  (benchmarks: cost does not depend on weights).
* ``teacher.name=embedded`` trains the small CLIP in ``model_configs/`` on captions of the
  embedded world (all classes, all domains), once, and caches it on disk keyed by its
  recipe and the world (see :func:`train_embedded`). ``teacher.embedded.model`` picks the
  open_clip config: ``vldistill-rn10t-tiny`` (ResNet, the default) or ``vldistill-vit-tiny``
  (ViT, for the P4 token losses).

:func:`load_teacher` with ``lazy=True`` (what ``trainers.loop.prepare`` asks for) returns an
open_clip teacher as a :class:`LazyTeacher`: its content key and embedding width are known
without building it, so a trial that reads every teacher output from the caches never loads
the model (seconds and gigabytes per trial process for a large CLIP).

With a ViT image tower, :meth:`Teacher.encode_images_with_tokens` also returns per-block
hidden states and attention maps (``trainers/tokens.py``) for ``attn`` / ``token_nce``;
:func:`check_token_teacher` refuses a non-ViT teacher for them before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext as _nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn
from tqdm.auto import tqdm

from vldistill.trainers.config.schema import ConfigError, EmbeddedTeacherConfig, TeacherConfig
from vldistill.trainers.data.world import World, WorldSpec
from vldistill.trainers.tokens import Taps, TokenTap, tap_open_clip_vit
from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)
_CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Teacher(nn.Module):
    """A frozen CLIP with explicit preprocessing and normalised outputs.

    Attributes:
        model: the open_clip model (eval mode, no gradients).
        image_size: the resolution the image tower expects.
        embed_dim: dimension of the joint embedding.
        key: content key (model name + weights identity) for caches.
    """

    constructed = 0  # Teachers built in this process (a sweep driver's stays 0: tests assert it)

    def __init__(self, model: nn.Module, model_name: str, key: str):
        super().__init__()
        Teacher.constructed += 1
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model_name = model_name
        self.key = key
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(model.visual, "image_size", 224))
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = pp.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = pp.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.embed_dim = int(self.model.text_projection.shape[1]) if hasattr(
            self.model, "text_projection") and self.model.text_projection is not None else None
        if self.embed_dim is None:
            with torch.no_grad():
                self.embed_dim = self.encode_text(["a"]).shape[1]
        self._tap: TokenTap | None = None  # built on first encode_images_with_tokens
        self._tap_layers: tuple[int, ...] | None = None

    def _config_key(self) -> str:
        """The config key that chose this model (for error messages)."""
        shipped = (MODEL_CONFIG_DIR / f"{self.model_name}.json").is_file()
        return "teacher.embedded.model" if shipped else "teacher.name"

    def token_tap(self, layers: Sequence[int] | None = None) -> TokenTap:
        """The token tap on image-tower blocks ``layers`` (None: all), installed once.

        ``tap.width`` is the teacher token width (``token_nce``'s ``teacher_dim``),
        ``tap.layers`` the tapped blocks. Asking for other layers replaces the tap.

        Raises:
            ConfigError: naming the teacher config key if the image tower is not a ViT.
        """
        want = None if layers is None else tuple(layers)
        if self._tap is None or want != self._tap_layers:
            if self._tap is not None:
                self._tap.remove()
            self._tap = tap_open_clip_vit(self.model, layers, name=self.model_name,
                                          key=self._config_key())
            self._tap_layers = want
        return self._tap

    @torch.no_grad()
    def encode_images_with_tokens(self, images: torch.Tensor, layers: Sequence[int] | None = None,
                                  what: Sequence[str] = ("tokens", "attn"),
                                  ) -> tuple[torch.Tensor, Taps]:
        """Like :meth:`encode_images`, plus the image tower's per-block tokens and attention.

        Args:
            images: ``[B, 3, H, W]`` floats in ``[0, 1]`` at any resolution.
            layers: tower blocks to tap (None: all); lists come out in block order.
            what: which of ``"tokens"`` / ``"attn"`` to record.

        Returns:
            ``(embed [B, E] L2-normalised, {"tokens": [[B, N, W]...], "attn": [[B, H, N, N]...]})``
            computed without gradients (teacher targets), in the tower's dtype (attention
            maps in float32).
        """
        tap = self.token_tap(layers)
        with tap.record(what) as taps:
            emb = self.model.encode_image(self.preprocess(images))
        return F.normalize(emb.float(), dim=-1), taps

    def train(self, mode: bool = True) -> "Teacher":  # always frozen
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` floats in ``[0, 1]`` -> the teacher's resolution and statistics."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size),
                                   mode="bilinear", antialias=True, align_corners=False)
        return (images - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of ``[0, 1]`` images at any resolution."""
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings."""
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i:i + batch_size])).to(device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def class_embeddings(self, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """One embedding per class: the normalised mean over ``templates`` (CLIP's ensemble)."""
        per_t = torch.stack([self.encode_text([t.format(n) for n in names]) for t in templates])
        return F.normalize(per_t.mean(0), dim=-1)


def cache_root(cache_dir: str | None = None) -> Path:
    """The on-disk cache (worlds, teachers): ``cache_dir``, ``$VLDISTILL_CACHE`` or ~/.cache."""
    root = cache_dir or os.environ.get("VLDISTILL_CACHE") or Path.home() / ".cache" / "vldistill"
    return Path(root).expanduser().resolve()


def _open_clip_identity(name: str, pretrained: str | None) -> tuple[str, str | None]:
    """``(content key, pretrained resolved)`` of an open_clip teacher, without building it.

    The key is the model name plus the weights' identity: the tag, the checkpoint file's
    SHA-256, or ``random-init-seed0`` (random weights are seeded: the same in every process).
    """
    if name not in open_clip.list_models():
        known = open_clip.list_models()
        raise ConfigError(f"teacher.name: unknown open_clip model {name!r}; "
                          f"known include: {', '.join(known[:20])}, ... ({len(known)} in all) "
                          "or 'embedded'")
    key_src = pretrained or "random-init-seed0"
    if pretrained and (pretrained.endswith(_CKPT_SUFFIXES) or os.sep in pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"teacher.pretrained: checkpoint file not found: {path}")
        key_src = file_sha256(path)
        pretrained = str(path.resolve())
    return content_key(f"{name}|{key_src}"), pretrained


def load_open_clip(name: str, pretrained: str | None) -> Teacher:
    """Any open_clip model by name; ``pretrained`` is a tag, a checkpoint file or None."""
    return _build_open_clip(name, *_open_clip_identity(name, pretrained))


def _build_open_clip(name: str, key: str, pretrained: str | None) -> Teacher:
    """Build the teacher whose identity :func:`_open_clip_identity` resolved (the checkpoint
    file is hashed once, there, not again here)."""
    try:
        fork = torch.random.fork_rng() if not pretrained else _nullcontext()
        with fork:
            if not pretrained:
                torch.manual_seed(0)
            model = open_clip.create_model(name, pretrained=pretrained, weights_only=True,
                                           pretrained_text=False)
    except Exception as e:  # pickled code refused by weights_only, wrong keys, bad tag
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ConfigError(f"teacher.pretrained: {pretrained} needs pickled code to load and "
                              "is refused (torch.load weights_only=True); save a plain state_dict") from e
        raise ConfigError(f"teacher.pretrained: cannot load {pretrained!r} into {name}: {e}") from e
    return Teacher(model, name, key)


class LazyTeacher:
    """An open_clip teacher that is built the first time its model is needed.

    A trial that reads every teacher output from the caches (image embeddings of the
    replayed views, text targets, the teacher's evaluation embeddings and metrics) never
    runs the teacher: it needs only the teacher's content key (cache keys) and embedding
    width (the student's head). Building a large CLIP in every trial process costs seconds
    to tens of seconds (a ViT-L/14 checkpoint is 1.7 GB) and its memory for the whole
    trial, on the GPU too; this proxy pays that only when something calls the model.

    ``key`` and ``embed_dim`` are known up front; ``to(device)`` is remembered and applied
    when the model is built; any other attribute builds the :class:`Teacher` and is taken
    from it. ``built`` says whether that has happened (tests count it).
    """

    def __init__(self, key: str, embed_dim: int, model_name: str, build):
        self.key, self.embed_dim, self.model_name = key, embed_dim, model_name
        self._build, self._teacher, self._device = build, None, None

    @property
    def built(self) -> bool:
        return self._teacher is not None

    def materialise(self) -> Teacher:
        if self._teacher is None:
            t0 = time.time()
            teacher = self._build()
            if teacher.key != self.key or teacher.embed_dim != self.embed_dim:
                raise RuntimeError(f"teacher {self.model_name}: built key/width {teacher.key}/"
                                   f"{teacher.embed_dim} differ from the expected {self.key}/{self.embed_dim}")
            if self._device is not None:
                teacher.to(self._device)
            self._teacher = teacher
            log.info("teacher %s built in %.1f s", self.model_name, time.time() - t0)
        return self._teacher

    def to(self, device) -> "LazyTeacher":
        self._device = device
        if self._teacher is not None:
            self._teacher.to(device)
        return self

    def __getattr__(self, name: str):  # only for attributes not set in __init__
        if name.startswith("__") or name in ("_build", "_teacher", "_device"):
            raise AttributeError(name)
        return getattr(self.materialise(), name)


def load_teacher(cfg: TeacherConfig, world: WorldSpec, cache_dir: str | None = None,
                 progress: bool = True, lazy: bool = False) -> Teacher | LazyTeacher:
    """Build the configured teacher (training and caching the embedded one if needed).

    ``lazy=True``: an open_clip teacher whose config states its embedding width comes back
    as a :class:`LazyTeacher` (built on first use). The embedded teacher is small and is
    always loaded (or trained) right away.
    """
    if cfg.name == "embedded":
        return train_embedded(cfg.embedded, world, cache_dir, progress)
    if lazy:
        key, resolved = _open_clip_identity(cfg.name, cfg.pretrained)
        width = (open_clip.get_model_config(cfg.name) or {}).get("embed_dim")
        if isinstance(width, int):
            return LazyTeacher(key, width, cfg.name, lambda: _build_open_clip(cfg.name, key, resolved))
    return load_open_clip(cfg.name, cfg.pretrained)


def check_token_teacher(cfg: TeacherConfig) -> None:
    """Raise :class:`ConfigError` unless the configured teacher has an open_clip ViT tower.

    Reads only the open_clip model config (nothing is built or downloaded): the token losses
    ``attn`` / ``token_nce`` need per-block tokens of a ViT, which a ResNet or timm tower
    (e.g. the default ``vldistill-rn10t-tiny``) does not have.
    """
    key, name = (("teacher.embedded.model", cfg.embedded.model) if cfg.name == "embedded"
                 else ("teacher.name", cfg.name))
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ConfigError(f"{key}: unknown open_clip model {name!r}")
    vision = model_cfg.get("vision_cfg", {})
    if vision.get("timm_model_name") or vision.get("hf_model_name") or not isinstance(
            vision.get("layers", 12), int):
        raise ConfigError(f"{key}={name!r}: the token losses (attn, token_nce) need a ViT image "
                          "tower; this one is "
                          f"{vision.get('timm_model_name') or vision.get('hf_model_name') or 'a ResNet'} "
                          "(use teacher=embedded_vit, i.e. teacher.embedded.model=vldistill-vit-tiny)")


# ----- the embedded teacher --------------------------------------------------------------


def embedded_key(cfg: EmbeddedTeacherConfig, world: WorldSpec) -> str:
    # v3: the init is seeded by the recipe (v2 teachers depended on the process's RNG state)
    blob = json.dumps({"v": 3, "teacher": asdict(cfg), "world": world.key()}, sort_keys=True)
    return content_key(blob)


def _lr_at(step: int, cfg: EmbeddedTeacherConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def _quiet_create(name: str, **kwargs) -> nn.Module:
    # open_clip logs on the root logger and warns that random init is random: expected here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(name, pretrained=None, **kwargs)
    finally:
        root.setLevel(level)


def train_embedded(cfg: EmbeddedTeacherConfig, world_spec: WorldSpec,
                   cache_dir: str | None = None, progress: bool = True) -> Teacher:
    """Train (or load from the cache) the embedded teacher.

    Recipe (docs/foundation.md: contrastive training alone learns colour but hardly shape in
    minutes): open_clip ``ClipLoss`` on (image, caption) pairs of every class in every
    domain, plus ``aux_weight`` x cross-entropy of linear shape, colour and domain heads on
    the pooled image features; AdamW, linear warm-up then cosine. The heads are dropped
    after training; only the open_clip state dict is cached, with ``quality.json``.
    """
    key = embedded_key(cfg, world_spec)
    folder = cache_root(cache_dir) / "teachers" / key
    ckpt = folder / "teacher.pt"
    # The weights are a function of the recipe and the world alone (the content key says
    # so): the init is seeded by ``cfg.seed``, not by whatever the process drew from torch's
    # global generator before (that made two caches hold different teachers under one key),
    # and the caller's generator is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = _quiet_create(cfg.model)
        if ckpt.is_file():
            model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
            log.info("embedded teacher loaded from %s", ckpt)
            return Teacher(model, cfg.model, key)
        t0 = time.time()
        world = World(world_spec)
        teacher = _fit(model, world, cfg, progress)
        train_s = time.time() - t0
        quality = measure_quality(teacher, world, per_class=min(50, world_spec.shift_per_class))
    quality["train_seconds"] = round(train_s, 1)
    quality["recipe"] = asdict(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"teacher.pt.tmp{os.getpid()}"
    torch.save(teacher.model.state_dict(), tmp)
    (folder / "quality.json").write_text(json.dumps(quality, indent=1))
    os.replace(tmp, ckpt)
    log.info("embedded teacher trained in %.0f s, cached at %s", train_s, ckpt)
    # The content key, as when loaded: teacher-cache / teacher-metric entries built in this
    # process must not share a placeholder key with another freshly trained teacher.
    teacher.key = key
    return teacher


def _fit(model: nn.Module, world: World, cfg: EmbeddedTeacherConfig, progress: bool) -> Teacher:
    torch.manual_seed(cfg.seed)
    images, captions, labels, domains = world.pretrain_set(cfg.per_class, progress=progress)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8
    shapes = torch.tensor([_attr(world, k, "shape") for k in labels])
    colours = torch.tensor([_attr(world, k, "colour") for k in labels])
    doms = torch.from_numpy(domains)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    tokens = tokenizer(captions)
    feat_dim = _pooled_dim(model.visual, cfg.model)
    heads = nn.ModuleDict({"shape": nn.Linear(feat_dim, 6), "colour": nn.Linear(feat_dim, 6),
                           "domain": nn.Linear(feat_dim, 4)})
    params = list(model.parameters()) + list(heads.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    clip_loss = open_clip.ClipLoss()
    pp = model.visual.preprocess_cfg
    mean = torch.tensor(pp["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pp["std"]).view(1, 3, 1, 1)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x_all)
    bar = tqdm(range(cfg.steps), desc="training embedded teacher", disable=not progress)
    for step in bar:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        x = x_all[idx].float() / 255.0
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        feats, img = _pooled_and_embed(model.visual, (x - mean) / std)  # world images: tower's size
        img = F.normalize(img, dim=-1)
        txt = F.normalize(model.encode_text(tokens[idx]), dim=-1)
        loss_c = clip_loss(img, txt, model.logit_scale.exp())
        loss_a = (F.cross_entropy(heads["shape"](feats), shapes[idx])
                  + F.cross_entropy(heads["colour"](feats), colours[idx])
                  + F.cross_entropy(heads["domain"](feats), doms[idx]))
        loss = loss_c + cfg.aux_weight * loss_a
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 20 == 0:
            bar.set_postfix(clip=f"{loss_c.item():.3f}", aux=f"{loss_a.item():.3f}")
    return Teacher(model, cfg.model, "trained")


def _pooled_dim(visual: nn.Module, model_name: str) -> int:
    """Width of the pooled image features the auxiliary heads read (before the projection)."""
    if hasattr(visual, "trunk"):  # open_clip TimmModel (e.g. the resnet10t teacher)
        return int(visual.trunk.num_features)
    if isinstance(visual, VisionTransformer) and visual.attn_pool is None:
        return int(visual.transformer.width)  # ln_post keeps the width; proj maps to embed_dim
    raise ConfigError(f"teacher.embedded.model: {model_name!r} has an image tower of type "
                      f"{type(visual).__name__}; the embedded recipe supports open_clip timm towers "
                      "and open_clip VisionTransformers without attentional pooling")


def _pooled_and_embed(visual: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled features, image embedding)`` of normalised images, in one pass.

    The embedding equals ``visual(x)``; the pooled features are what comes before the
    projection (timm trunk output; the ViT's pooled CLS token after ``ln_post``), which the
    auxiliary shape/colour/domain heads classify. For the ViT this goes through
    ``VisionTransformer._embeds``/``_pool`` (open_clip 3.3.0 internals, checked against
    ``visual(x)`` in tests/unit/test_tokens.py).
    """
    if hasattr(visual, "trunk"):
        feats = visual.trunk(x)
        return feats, visual.head(feats)
    pooled, _ = visual._pool(visual.transformer(visual._embeds(x)))
    return pooled, (pooled @ visual.proj if visual.proj is not None else pooled)


def _attr(world: World, k: int, which: str) -> int:
    from vldistill.trainers.data import render as R
    c = world.classes[k]
    return R.SHAPES.index(c.shape) if which == "shape" else list(R.COLOURS).index(c.colour)


@torch.no_grad()
def measure_quality(teacher: Teacher, world: World, per_class: int = 50) -> dict:
    """Zero-shot accuracy of a teacher on the world's *data* stream (not its training stream).

    Records 36-way accuracy per domain, photo-domain base / compositional / semantic
    accuracy (within the base and novel tasks), chance and the attribute-only floors.
    """
    from vldistill.trainers.metrics import attribute_floor, mean_per_class_accuracy
    names = [c.name for c in world.classes]
    text = teacher.class_embeddings(names, ["a photo of a {}."])
    attrs = [(c.shape, c.colour) for c in world.classes]
    out: dict = {"per_class": per_class, "chance_36": 1 / 36,
                 "floor_colour_36": attribute_floor(attrs, 1),
                 "floor_shape_36": attribute_floor(attrs, 0)}
    splits = world.splits()
    for d in ("photo", "sketch", "painting", "noisy"):
        embs, labels = [], []
        for k in range(len(world.classes)):
            x, _ = world.sample(d, k, per_class)
            embs.append(teacher.encode_images(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255))
            labels += [k] * per_class
        emb, y = torch.cat(embs), torch.tensor(labels)
        out[f"zs36/{d}"] = mean_per_class_accuracy((emb @ text.T).argmax(1), y)
        for task, kinds in (("base", ["base"]), ("novel", ["compositional", "semantic"])):
            idx = [i for i, c in enumerate(world.classes) if c.kind in kinds]
            mask = torch.isin(y, torch.tensor(idx))
            pred = torch.tensor(idx)[(emb[mask] @ text[idx].T).argmax(1)]
            out[f"{task}/{d}"] = mean_per_class_accuracy(pred, y[mask])
            if task == "novel":
                for kind in ("compositional", "semantic"):
                    kidx = [world.classes.index(c) for c in world.classes if c.kind == kind]
                    out[f"novel/{kind}/{d}"] = mean_per_class_accuracy(pred, y[mask], kidx)
    out["floor_colour_base"] = attribute_floor([attrs[world.folders().index(f)]
                                                for f in splits["base"]], 1)
    out["floor_colour_novel"] = attribute_floor([attrs[world.folders().index(f)]
                                                 for f in splits["novel"]], 1)
    return out
