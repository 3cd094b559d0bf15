"""The embedded procedural world: a deterministic, seeded test bed for OOD distillation.

Classes are ``colour x shape`` compositions (6 x 6 = 36); pattern (solid / striped /
dotted) and size (small / large) vary per image and appear in captions. Every class is
rendered in four domains (photo, sketch, painting, noisy). The world fixes the OOD axes
the papers study:

* **base** classes: what the student trains on (training domain only);
* **compositional novel** classes: unseen combinations of a shape and a colour that both
  occur in base classes;
* **semantic novel** classes: classes with a shape or a colour that no base class has
  (``semantic_shape`` / ``semantic_colour``), which only the teacher's language space names;
* **domain shift**: the same classes in the other domains.

The world is written to disk as an image folder (``<domain>/<class>/<i>.png``) plus
``classes.json`` (base / novel split), ``attributes*.json`` (class -> sentences, full,
partial and noisy sources), ``captions.json``, ``templates.txt`` and ``vocabulary.txt``;
the student reads it back through the same loader that serves a real dataset
(``folder.py``), so the demo exercises the real data path.

Images are a pure function of ``(seed, stream, domain, class, index)``: the teacher's
pre-training stream and the written (student) stream never share an image.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vldistill.trainers.data import render as R
from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)

SHAPE_DESCRIPTIONS = {
    "circle": "a round outline and no corners",
    "square": "four equal sides and four corners",
    "triangle": "three sides and three corners",
    "cross": "two crossing bars",
    "star": "five pointed tips",
    "ring": "a hole in its centre",
}
COLOUR_DESCRIPTIONS = {
    "red": "the colour of a ripe tomato",
    "yellow": "the colour of a lemon",
    "green": "the colour of fresh grass",
    "cyan": "the colour of tropical water",
    "blue": "the colour of a deep sea",
    "magenta": "a vivid purple pink colour",
}
DOMAIN_PHRASES = {
    "photo": ("a photo of", "an image of", "a picture of"),
    "sketch": ("a sketch of", "a line drawing of", "a drawing of"),
    "painting": ("a painting of", "an artwork of", "a painted picture of"),
    "noisy": ("a noisy photo of", "a grainy image of", "a noisy picture of"),
}
TEMPLATES = ("a photo of a {}.", "a sketch of a {}.", "a painting of a {}.",
             "a noisy photo of a {}.", "an image of a {}.")
STREAMS = {"pretrain": 0, "data": 1}


@dataclass(frozen=True)
class WorldSpec:
    """What defines a world (mirrors ``config.WorldConfig``; kept here so data has no config import)."""

    seed: int = 0
    image_size: int = 32
    per_class: int = 300
    shift_per_class: int = 150
    train_domain: str = "photo"
    semantic_shape: str = "star"
    semantic_colour: str = "magenta"
    n_compositional: int = 7

    def key(self) -> str:
        """Content key of the written world (changes whenever any image would)."""
        blob = json.dumps({"v": 4, **asdict(self)}, sort_keys=True).encode()
        return content_key(blob)


def world_problems(spec) -> list[tuple[str, str]]:
    """Every invalid value of a world recipe (a :class:`WorldSpec` or the config's
    ``WorldConfig``, same fields), as ``(dotted key, rule)``; the config's validator reports
    them as config errors before anything runs."""
    checks = (
        (spec.semantic_shape in R.SHAPES, "semantic_shape",
         f"must be one of {list(R.SHAPES)}, got {spec.semantic_shape!r}"),
        (spec.semantic_colour in R.COLOURS, "semantic_colour",
         f"must be one of {list(R.COLOURS)}, got {spec.semantic_colour!r}"),
        (spec.train_domain in R.DOMAINS, "train_domain",
         f"must be one of {list(R.DOMAINS)}, got {spec.train_domain!r}"),
        (0 <= spec.n_compositional <= 10, "n_compositional",
         f"must be in [0, 10] (each base shape/colour keeps >= 3 base classes), got {spec.n_compositional}"),
        (spec.image_size >= 16, "image_size", f"must be >= 16, got {spec.image_size}"),
        (spec.per_class >= 2, "per_class", f"must be >= 2 (a training and a validation image), got {spec.per_class}"),
        (spec.shift_per_class >= 1, "shift_per_class", f"must be >= 1, got {spec.shift_per_class}"),
    )
    return [(f"data.world.{key}", rule) for ok, key, rule in checks if not ok]


@dataclass(frozen=True)
class WorldClass:
    folder: str  # e.g. "red_circle"
    name: str  # e.g. "red circle"
    shape: str
    colour: str
    kind: str  # "base" | "compositional" | "semantic"


class World:
    """The class structure, text sources and image streams of one world."""

    def __init__(self, spec: WorldSpec = WorldSpec()):
        problems = world_problems(spec)
        if problems:
            raise ValueError("; ".join(f"{key}: {rule}" for key, rule in problems))
        self.spec = spec
        self.classes = self._make_classes()

    def _make_classes(self) -> list[WorldClass]:
        s = self.spec
        shapes = [x for x in R.SHAPES if x != s.semantic_shape]
        colours = [x for x in R.COLOURS if x != s.semantic_colour]
        # Compositional novel cells walk the diagonals of the 5x5 grid (0, 2, 4, ...), so
        # every remaining shape and colour keeps base classes.
        comp: set[tuple[str, str]] = set()
        for diag in (0, 2, 4, 1, 3):
            for i in range(len(shapes)):
                if len(comp) < s.n_compositional:
                    comp.add((shapes[i], colours[(i + diag) % len(colours)]))
        out = []
        for shape in R.SHAPES:
            for colour in R.COLOURS:
                if shape == s.semantic_shape or colour == s.semantic_colour:
                    kind = "semantic"
                elif (shape, colour) in comp:
                    kind = "compositional"
                else:
                    kind = "base"
                out.append(WorldClass(f"{colour}_{shape}", f"{colour} {shape}", shape, colour, kind))
        return out

    # ----- class lists -------------------------------------------------------------
    def folders(self, *kinds: str) -> list[str]:
        return [c.folder for c in self.classes if not kinds or c.kind in kinds]

    @property
    def shift_domains(self) -> list[str]:
        return [d for d in R.DOMAINS if d != self.spec.train_domain]

    def splits(self) -> dict:
        """The ``classes.json`` content: base / novel lists and novel kinds."""
        return {
            "base": self.folders("base"),
            "novel": self.folders("compositional", "semantic"),
            "novel_kinds": {"compositional": self.folders("compositional"),
                            "semantic": self.folders("semantic")},
            "names": {c.folder: c.name for c in self.classes},
            "attributes": {c.folder: {"shape": c.shape, "colour": c.colour} for c in self.classes},
        }

    # ----- text sources --------------------------------------------------------------
    def attributes(self, source: str = "full") -> dict[str, list[str]]:
        """Class -> descriptor sentences. ``full`` | ``partial`` (shape only) | ``noisy``.

        ``noisy`` replaces each descriptor, with probability 0.4 (seeded), by the descriptor
        of another value of the same attribute: a stand-in for unreliable LLM descriptions.
        """
        rng = np.random.default_rng([self.spec.seed, 99])
        out = {}
        for c in self.classes:
            shape_d, colour_d = SHAPE_DESCRIPTIONS[c.shape], COLOUR_DESCRIPTIONS[c.colour]
            if source == "full":
                out[c.folder] = [shape_d, colour_d, f"{c.colour} colour"]
            elif source == "partial":
                out[c.folder] = [shape_d]
            elif source == "noisy":
                sents = []
                for table, own in ((SHAPE_DESCRIPTIONS, c.shape), (COLOUR_DESCRIPTIONS, c.colour)):
                    value = own
                    if rng.random() < 0.4:
                        value = str(rng.choice([k for k in table if k != own]))
                    sents.append(table[value])
                out[c.folder] = sents
            else:
                raise ValueError(f"unknown world attribute source {source!r}; known: full, partial, noisy")
        return out

    def vocabulary(self) -> list[str]:
        """Generic concept prompts (no novel class name) for vlprox's prompt vocabulary."""
        v = [f"a photo of a {c} shape." for c in R.COLOURS]
        v += [f"a photo of a {s}." for s in R.SHAPES]
        v += [f"a photo of a {p} shape." for p in R.PATTERNS]
        v += [f"a photo of a {z} shape." for z in R.SIZES]
        v += [f"{phrases[0]} a shape." for phrases in DOMAIN_PHRASES.values()]
        v += [f"a shape with {d}." for d in SHAPE_DESCRIPTIONS.values()]
        v += [f"a shape in {d}." for d in COLOUR_DESCRIPTIONS.values()]
        return v

    def sentence_bank(self, n: int, seed: int = 0) -> list[str]:
        """``n`` *unpaired* sentences for P2 (DIME-FM ``vld``), written like captions.

        Each sentence draws a shape and a colour uniformly over ALL shapes and colours
        (novel and semantic ones included: the bank is text-only data, it never names a
        training image), a pattern, a size and a domain phrase, and is phrased by the
        caption writer. The draws come from their own stream ``(world seed, 2, seed)``, so
        the bank is a pure function of ``(spec.seed, n, seed)`` and independent of every
        image stream; it is not written to disk (``write`` and ``key`` are unchanged).
        """
        if n < 1:
            raise ValueError(f"distill.vld.bank_size must be >= 1 for the embedded world, got {n}")
        rng = np.random.default_rng([self.spec.seed, 2, seed])
        colours = list(R.COLOURS)
        out = []
        for _ in range(n):
            shape = R.SHAPES[int(rng.integers(0, len(R.SHAPES)))]
            colour = colours[int(rng.integers(0, len(colours)))]
            domain = R.DOMAINS[int(rng.integers(0, len(R.DOMAINS)))]
            c = WorldClass(f"{colour}_{shape}", f"{colour} {shape}", shape, colour, "bank")
            out.append(self._caption(c, domain, int(rng.integers(0, len(R.PATTERNS))),
                                     int(rng.integers(0, len(R.SIZES))), rng))
        return out

    # ----- images --------------------------------------------------------------------
    def sample(self, domain: str, cls: int, n: int, stream: str = "data",
               size: int | None = None) -> tuple[np.ndarray, list[str]]:
        """``n`` images of class index ``cls`` in ``domain`` with one caption each.

        Returns:
            ``uint8 [n, H, W, 3]`` images and their captions.
        """
        c = self.classes[cls]
        di = R.DOMAINS.index(domain)
        rng = np.random.default_rng([self.spec.seed, STREAMS[stream], di, cls])
        size_attr = rng.integers(0, len(R.SIZES), n)
        scale = np.where(size_attr == 0, rng.uniform(0.42, 0.54, n), rng.uniform(0.62, 0.76, n))
        hue = 0.05 if domain == "painting" else 0.03
        base_rgb = np.tile(np.array(R.COLOURS[c.colour]), (n, 1))
        angle = np.deg2rad(rng.uniform(-20, 20, n))
        light = rng.normal(size=(n, 2))
        light /= np.linalg.norm(light, axis=1, keepdims=True)
        params = R.Params(
            shape=np.full(n, R.SHAPES.index(c.shape)),
            colour=R.jitter_colour(base_rgb, rng, hue, 0.15, 0.12),
            pattern=rng.integers(0, len(R.PATTERNS), n),
            scale=scale,
            angle=angle,
            offset=rng.uniform(-0.18, 0.18, (n, 2)),
            light=light,
            seed=rng.integers(0, 2**31, n),
        )
        images = R.render(domain, params, size or self.spec.image_size, rng)
        captions = [self._caption(c, domain, int(params.pattern[i]), int(size_attr[i]), rng)
                    for i in range(n)]
        return images, captions

    @staticmethod
    def _caption(c: WorldClass, domain: str, pattern: int, size: int,
                 rng: np.random.Generator) -> str:
        dom = str(rng.choice(DOMAIN_PHRASES[domain]))
        pat, sz = R.PATTERNS[pattern], R.SIZES[size]
        form = int(rng.integers(0, 5))
        if form == 0:
            return f"{dom} a {sz} {pat} {c.colour} {c.shape}."
        if form == 1:
            return f"{dom} a {c.colour} {c.shape}."
        if form == 2:
            return f"{dom} a {c.colour} shape with {SHAPE_DESCRIPTIONS[c.shape]}."
        if form == 3:
            return f"{dom} a {c.shape} in {COLOUR_DESCRIPTIONS[c.colour]}."
        return f"a {pat} {c.shape}, {c.colour}, {dom.split(' of')[0]}."

    def pretrain_set(self, per_class: int, size: int | None = None, progress: bool = True):
        """The teacher's pre-training stream: every class in every domain, with captions.

        Returns:
            images ``uint8 [N, H, W, 3]``, captions, class indices ``[N]``, domain indices ``[N]``.
        """
        imgs, caps, labels, doms = [], [], [], []
        jobs = [(d, k) for d in R.DOMAINS for k in range(len(self.classes))]
        for d, k in tqdm(jobs, desc="rendering teacher pre-training set", disable=not progress,
                         leave=False):
            x, c = self.sample(d, k, per_class, stream="pretrain", size=size)
            imgs.append(x)
            caps += c
            labels += [k] * per_class
            doms += [R.DOMAINS.index(d)] * per_class
        return np.concatenate(imgs), caps, np.array(labels), np.array(doms)

    def write(self, root: str | os.PathLike, progress: bool = True) -> Path:
        """Write the world as an image folder dataset; atomic (written aside, then renamed).

        Layout: ``root/<domain>/<class folder>/<00000>.png`` with ``per_class`` images per
        class in the training domain and ``shift_per_class`` in every other domain, plus the
        metadata files listed in the module docstring.
        """
        root = Path(root)
        if (root / "world.json").exists():
            return root
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        captions: dict[str, str] = {}
        jobs = [(d, k) for d in R.DOMAINS for k in range(len(self.classes))]
        for d, k in tqdm(jobs, desc=f"writing world to {root}", disable=not progress, leave=False):
            n = self.spec.per_class if d == self.spec.train_domain else self.spec.shift_per_class
            x, caps = self.sample(d, k, n)
            folder = tmp / d / self.classes[k].folder
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(x[i]).save(folder / f"{i:05d}.png", compress_level=1)
                captions[f"{d}/{self.classes[k].folder}/{i:05d}.png"] = caps[i]
        meta = {
            "classes.json": self.splits(),
            "attributes.json": self.attributes("full"),
            "attributes_partial.json": self.attributes("partial"),
            "attributes_noisy.json": self.attributes("noisy"),
            "captions.json": captions,
        }
        for name, obj in meta.items():
            (tmp / name).write_text(json.dumps(obj, indent=1))
        (tmp / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
        (tmp / "vocabulary.txt").write_text("\n".join(self.vocabulary()) + "\n")
        (tmp / "world.json").write_text(json.dumps(asdict(self.spec), indent=1))
        try:
            tmp.rename(root)
        except OSError:  # another process won the race: its copy is identical
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        return root
