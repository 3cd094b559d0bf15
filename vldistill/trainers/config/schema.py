"""The schema: typed, frozen configuration of one distillation trial.

Every field, its type and its default live here, and nothing else: turning a plain dict into
these dataclasses is ``convert.py``, composing the YAML of ``vldistill/conf`` is
``compose.py``, and checking values is ``check.py``. This module imports only the standard
library, so every other module (and the trainers' registries) can depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """A config value is invalid; the message names the dotted key."""


@dataclass(frozen=True)
class WorldConfig:
    """The embedded procedural world (used when ``data.source == "world"``)."""

    seed: int = 0
    image_size: int = 32
    per_class: int = 300  # images per class in the training domain (split train/val)
    shift_per_class: int = 150  # images per class in every shifted domain
    train_domain: str = "photo"
    semantic_shape: str = "star"
    semantic_colour: str = "magenta"
    n_compositional: int = 7


# P3: generic styles; the world's shifted domains (sketch, painting, noisy) and their caption
# synonyms are deliberately absent (see trainers/synth.py).
DEFAULT_STYLES = ("photo", "cartoon", "rendering", "sculpture", "embroidery", "origami",
                  "tattoo", "graffiti", "mosaic", "toy")


@dataclass(frozen=True)
class SynthConfig:
    """P3 synthetic training set (``data.synthetic``), used with ``data.train_source=synthetic``.

    Images are optimised against the frozen teacher from prompts diversified by ``strategy``
    (see trainers/synth.py for the method and every choice).
    """

    strategy: str = "contrastive"  # none | mix | random | contrastive
    images_per_class: int = 10
    steps: int = 100  # optimisation steps per image batch
    lr: float = 0.1  # Adam on the pixel logits
    batch_size: int = 64  # images optimised together
    tv_weight: float = 0.05  # squared total-variation smoothness prior
    augment: float = 0.5  # augmentation strength in [0, 1] (0: no augmentation)
    cutouts: int = 4  # augmented views per image and step
    init_std: float = 1.0  # std of the initial pixel logits
    seed: int = 0
    image_size: int = 32  # synthetic images are made at this (data) resolution
    prompt: str = "a {style} of a {}."  # {style}: the style slot, {}: the class name
    base_prompt: str = "a photo of a {}."  # strategy none, and the class anchor of the others
    styles: list[str] = field(default_factory=lambda: list(DEFAULT_STYLES))  # mix dictionary
    mix_words: int = 2  # style words mixed per image (mix)
    pseudo_words: int = 8  # learnable styles (contrastive)
    prompt_classes: int = 32  # classes sampled per pseudo-word step (all when fewer)
    prompt_steps: int = 200  # optimisation steps of the pseudo-words (contrastive)
    prompt_lr: float = 0.05  # Adam on the pseudo-words, in units of the token table's std
    contrastive_tau: float = 0.1
    contrastive_weight: float = 1.0
    class_tau: float = 0.07  # temperature of the class-keeping term (contrastive)


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are split.

    ``source: world`` writes (once, cached) the embedded world as an image folder and reads
    it back; ``source: folder`` reads ``root`` laid out as ``<domain>/<class>/<image>`` with
    ``classes.json`` (base/novel lists) and optional ``attributes.json``.
    """

    source: str = "world"  # world | folder
    root: Optional[str] = None  # folder datasets (and an explicit world location)
    train_domain: str = "photo"
    shift_domains: Optional[list[str]] = None  # None: every other domain folder
    image_size: int = 32  # images are decoded and resized to this (the loader's size)
    train_fraction: float = 0.7  # base-class images of the training domain used for training
    images_per_class: int = 40  # cap on student training images per base class (0 = all)
    split_seed: int = 0
    max_eval_per_class: int = 0  # 0 = every held-out image
    world: WorldConfig = field(default_factory=WorldConfig)
    # real: train on the dataset's training images; synthetic (P3, data-free): train on images
    # synthesised from the teacher (data.synthetic); evaluation uses the real sets either way
    train_source: str = "real"
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass(frozen=True)
class EmbeddedTeacherConfig:
    """Recipe of the embedded teacher (trained once, cached by this config + the world)."""

    model: str = "vldistill-rn10t-tiny"  # open_clip model config shipped in trainers/model_configs
    per_class: int = 80  # pre-training images per class and domain
    steps: int = 600
    batch_size: int = 128
    lr: float = 1.0e-3
    weight_decay: float = 0.1
    warmup: int = 50
    aux_weight: float = 1.0  # cross-entropy of linear shape/colour heads on pooled features
    seed: int = 0


@dataclass(frozen=True)
class TeacherConfig:
    """A frozen open_clip teacher: ``embedded`` or any open_clip model name."""

    name: str = "embedded"
    pretrained: Optional[str] = None  # open_clip tag, or a local checkpoint file
    embedded: EmbeddedTeacherConfig = field(default_factory=EmbeddedTeacherConfig)


@dataclass(frozen=True)
class StudentConfig:
    """A timm image model plus a projection head to the teacher's embedding dimension."""

    name: str = "resnet18"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    image_size: int = 32  # the student's own input resolution
    mean: Optional[list[float]] = None  # None: timm's default for the model
    std: Optional[list[float]] = None
    head: str = "linear"  # linear | mlp
    pretrained: bool = False


@dataclass(frozen=True)
class ClsConfig:
    tau: float = 0.07


@dataclass(frozen=True)
class ImCstConfig:
    tau: float = 0.07


@dataclass(frozen=True)
class VLProxConfig:
    k: int = 256
    tau: float = 0.07
    filter: bool = True


@dataclass(frozen=True)
class CapConfig:
    tau: float = 0.07


@dataclass(frozen=True)
class VLDConfig:
    """DIME-FM ``vld`` and its bank of unpaired sentences (see docs/methods.md, P2).

    ``sentences_file`` and ``bank_size``/``bank_seed`` choose the bank and are consumed by
    the training loop; the other keys are the loss's constructor arguments.
    """

    temperature: float = 1.0
    logit_scale: float = 100.0
    both_directions: bool = True
    sentences_file: Optional[str] = None  # None: <data root>/sentences.txt, or the world's bank
    bank_size: int = 1000  # world: sentences generated; a file: seeded subset if larger (0 = all)
    bank_seed: int = 0


@dataclass(frozen=True)
class PVLDConfig:
    temperature: float = 3.0
    logit_scale: float = 100.0


@dataclass(frozen=True)
class UDistConfig:
    temperature: float = 7.0
    logit_scale: float = 100.0


@dataclass(frozen=True)
class TextConfig:
    """How class text embeddings are built: an attribute source (``trainers/text.py``)."""

    template: str = "a photo of a {}."
    vocabulary: bool = True  # vlprox: add the dataset's vocabulary.txt to the base prompts
    source: str = "classname"  # classname | templates | descriptions | descriptors (registry)
    templates_file: Optional[str] = None  # source=templates; None: <data root>/templates.txt
    attributes: str = "full"  # full | partial | noisy (the world's files) or a JSON file path


@dataclass(frozen=True)
class TokensConfig:
    """ViT blocks the P4 losses read (block indices, negative from the end; None = all)."""

    student_layers: Optional[list[int]] = None
    teacher_layers: Optional[list[int]] = None


@dataclass(frozen=True)
class AttnConfig:
    layer_map: Optional[list[list[int]]] = None  # [[student idx, teacher idx], ...] into the tapped lists


@dataclass(frozen=True)
class TokenNCEConfig:
    queue_size: int = 4096
    tau: float = 0.07
    layer_map: Optional[list[list[int]]] = None


@dataclass(frozen=True)
class DistillConfig:
    """Which losses, with which weights; an ablation sets a weight to 0."""

    name: str = "cls"
    weights: dict[str, float] = field(default_factory=lambda: {"cls": 1.0})
    cls: ClsConfig = field(default_factory=ClsConfig)
    mse: dict[str, Any] = field(default_factory=dict)
    im_cst: ImCstConfig = field(default_factory=ImCstConfig)
    vlprox: VLProxConfig = field(default_factory=VLProxConfig)
    text: TextConfig = field(default_factory=TextConfig)
    cap: CapConfig = field(default_factory=CapConfig)
    vld: VLDConfig = field(default_factory=VLDConfig)
    pvld: PVLDConfig = field(default_factory=PVLDConfig)
    udist: UDistConfig = field(default_factory=UDistConfig)
    labels: bool = True  # false: label-free training (P2); the training set carries no labels
    tokens: TokensConfig = field(default_factory=TokensConfig)  # P4: tapped ViT blocks
    attn: AttnConfig = field(default_factory=AttnConfig)
    token_nce: TokenNCEConfig = field(default_factory=TokenNCEConfig)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2.0e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    grad_clip: float = 5.0


@dataclass(frozen=True)
class AugmentConfig:
    """Student views: replayable from (seed, epoch, index), see ``data/views.py``."""

    scale_min: float = 0.6
    translate: float = 0.1
    flip: bool = True
    views: int = 0  # 0: a new view every epoch; K > 0: epoch e replays view e % K (cacheable)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 512
    every: int = 1  # evaluate every N epochs (the last epoch always)
    latency_iters: int = 30
    # Final evaluation only (see docs/methods.md, P1):
    neigh_k: int = 10  # M_neigh: k nearest neighbours
    vlalign_k: int = 5  # M_vlalign: the teacher's top-k class texts
    few_shot: int = 0  # k images per novel class to fine-tune a copy of the student (0 = off)
    few_shot_steps: int = 50
    few_shot_lr: float = 1.0e-4
    linear_probe: bool = False  # logistic regression on frozen student embeddings
    linear_probe_steps: int = 100  # L-BFGS iterations
    linear_probe_wd: float = 1.0e-4  # L2 penalty on the probe's weights


@dataclass(frozen=True)
class TrainConfig:
    """One trial."""

    seed: int = 0
    out_dir: Optional[str] = None
    cache_dir: Optional[str] = None  # None: $VLDISTILL_CACHE or ~/.cache/vldistill
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    progress: bool = True
    teacher_cache: bool = True  # with augment.views > 0, read teacher targets from the cache
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16
    channels_last: Optional[bool] = None  # None: on CUDA only (the fast layout there)
    compile: bool = False  # torch.compile the student
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def bf16_on(self, device_type: str) -> bool:
        """bf16 autocast on this device: ``precision=bf16``, or ``auto`` on CUDA."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    def channels_last_on(self, device_type: str) -> bool:
        """channels_last memory layout on this device: as set, or (``None``) on CUDA only."""
        return device_type == "cuda" if self.channels_last is None else self.channels_last
