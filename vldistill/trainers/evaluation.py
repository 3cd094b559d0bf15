"""OOD evaluation: base, 0-shot novel (both kinds), domain shift, and student cost.

All accuracies are mean-per-class top-1 (P1). Classification is open-vocabulary: an
image embedding is compared by cosine with the teacher's text embeddings of the class
prompts, so novel classes need no training image. Tasks:

* ``base_acc``: held-out base images of the training domain, among the base classes;
* ``novel_acc``: every novel image, among the novel classes; ``novel_acc/<kind>`` is the
  same prediction averaged over the classes of one kind (compositional, semantic);
* ``hmean``: harmonic mean of base and novel accuracy;
* ``shift_acc/<domain>``: base classes rendered in another domain, among the base classes;
  ``shift_acc`` is the mean over shifted domains.

Each result comes with the number of images it was measured on (``n/...``) and, when the
dataset declares class attributes, chance and attribute-only floors (``floor/...``).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

from vldistill.trainers.data.folder import LabelledImages, Splits
from vldistill.trainers.metrics import (attribute_floor, count_params, harmonic_mean,
                                        mean_per_class_accuracy, measure_latency_ms)
from vldistill.trainers.text import TextTargets

log = logging.getLogger(__name__)
Encoder = Callable[[torch.Tensor], torch.Tensor]  # [B,3,H,W] in [0,1] -> [B,D]


@torch.no_grad()
def embed_images(encode: Encoder, data: LabelledImages, batch_size: int,
                 device: torch.device | str = "cpu", dist=None) -> torch.Tensor:
    """L2-normalised embeddings of every image of ``data`` (uint8 -> [0, 1] floats).

    Under data parallelism (``dist.world > 1``) rank r embeds images r, r + W, ... and the
    shards are all-gathered back into dataset order: every rank gets every embedding.
    """
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    index = torch.arange(rank, len(data), world)
    out = []
    for i in range(0, len(index), batch_size):
        x = data.images[index[i:i + batch_size]].to(device).float() / 255.0
        out.append(F.normalize(encode(x).float(), dim=-1).cpu())
    mine = torch.cat(out) if out else torch.empty(0, 0)  # a rank may hold no image
    if world == 1:
        return mine
    import torch.distributed as tdist
    shards: list = [None] * world
    tdist.all_gather_object(shards, mine)
    full = torch.empty(len(data), max(shard.shape[1] for shard in shards))
    for r, shard in enumerate(shards):
        full[r::world] = shard
    return full


def _acc(emb: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
         classes: list[int] | None = None) -> float:
    pred = (emb @ text.T).argmax(1)
    return mean_per_class_accuracy(pred, labels, classes)


@torch.no_grad()
def evaluate(encode: Encoder, splits: Splits, text: TextTargets, batch_size: int = 512,
             device: torch.device | str = "cpu", dist=None) -> dict[str, float]:
    """Every OOD accuracy of one encoder (student or teacher), over the whole sets."""
    text = TextTargets(text.base.cpu().float(), text.novel.cpu().float(), text.vocab.cpu().float())
    m: dict[str, float] = {}
    m["base_acc"] = _acc(embed_images(encode, splits.val_base, batch_size, device, dist), text.base,
                         splits.val_base.labels)
    novel = embed_images(encode, splits.novel, batch_size, device, dist)
    m["novel_acc"] = _acc(novel, text.novel, splits.novel.labels)
    for kind, members in splits.info.novel_kinds.items():
        idx = [splits.info.novel.index(c) for c in members]
        if idx:
            m[f"novel_acc/{kind}"] = _acc(novel, text.novel, splits.novel.labels, idx)
    m["hmean"] = harmonic_mean(m["base_acc"], m["novel_acc"])
    for d, data in splits.shift.items():
        m[f"shift_acc/{d}"] = _acc(embed_images(encode, data, batch_size, device, dist), text.base,
                                   data.labels)
    if splits.shift:
        m["shift_acc"] = sum(m[f"shift_acc/{d}"] for d in splits.shift) / len(splits.shift)
    return m


def eval_sizes(splits: Splits) -> dict[str, float]:
    """Images per evaluation set, so readers can judge sampling noise."""
    out = {"n/base": len(splits.val_base), "n/novel": len(splits.novel), "n/train": len(splits.train)}
    out.update({f"n/shift/{d}": len(v) for d, v in splits.shift.items()})
    for kind, members in splits.info.novel_kinds.items():
        idx = torch.tensor([splits.info.novel.index(c) for c in members], dtype=torch.long)
        out[f"n/novel/{kind}"] = int(torch.isin(splits.novel.labels, idx).sum())
    return out


def floors(splits: Splits) -> dict[str, float]:
    """Chance and attribute-only floors of the base and novel tasks (if attributes are known)."""
    info = splits.info
    out = {"chance/base": 1 / len(info.base), "chance/novel": 1 / len(info.novel)}
    if not info.attributes:
        return out
    names = sorted(next(iter(info.attributes.values())))
    for task, classes in (("base", info.base), ("novel", info.novel)):
        rows = [tuple(info.attributes[c][a] for a in names) for c in classes]
        for i, a in enumerate(names):
            out[f"floor/{a}/{task}"] = attribute_floor(rows, i)
            if task == "novel":  # per kind: the same guess, averaged over that kind's classes
                for kind, members in info.novel_kinds.items():
                    per = [1 / sum(r[i] == rows[classes.index(c)][i] for r in rows) for c in members]
                    if per:
                        out[f"floor/{a}/novel/{kind}"] = sum(per) / len(per)
    return out


def student_cost(student: torch.nn.Module, image_size: int, iters: int = 30) -> dict[str, float]:
    """Parameters (incl. the head) and CPU latency per image at batch 1, in ms."""
    device = next(student.parameters()).device
    cpu = student.to("cpu")
    latency = measure_latency_ms(cpu, (1, 3, image_size, image_size), iters=iters)
    student.to(device)
    return {"student_params": float(count_params(student)), "student_latency_ms": latency}
