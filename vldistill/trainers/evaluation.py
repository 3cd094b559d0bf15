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

At the final evaluation only (:func:`final_metrics`, decisions in docs/methods.md):

* ``M_rel``, ``M_neigh``, ``M_vlalign`` (P1's representation metrics) on the novel images
  (the OOD set), with ``/base`` (held-out base images) and ``/novel`` variants;
* ``novel_acc_{k}shot`` (and ``fewshot_novel_acc``, the key reports read) with
  ``eval.few_shot = k``: a copy of the student fine-tuned on k images per novel class;
* ``linear_probe_acc`` with ``eval.linear_probe``: logistic regression on frozen student
  embeddings of the training images, tested on the held-out base images.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Callable

import torch
import torch.nn.functional as F

from vldistill.trainers.config import AugmentConfig, ConfigError, TrainConfig
from vldistill.trainers.data.folder import LabelledImages, Splits
from vldistill.trainers.data.views import make_views, view_seed
from vldistill.trainers.metrics import (attribute_floor, count_params, harmonic_mean,
                                        mean_per_class_accuracy, measure_latency_ms,
                                        neighbour_overlap, relation_to_teacher,
                                        vl_alignment_inversions)
from vldistill.trainers.text import TextTargets
from vldistill.trainers.keys import content_key

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
             device: torch.device | str = "cpu", dist=None, keep: dict | None = None) -> dict[str, float]:
    """Every OOD accuracy of one encoder (student or teacher), over the whole sets.

    ``keep``: a dict that receives the ``"base"`` and ``"novel"`` embeddings (so the final
    evaluation's representation metrics do not embed those images a second time).
    """
    text = TextTargets(text.base.cpu().float(), text.novel.cpu().float(), text.vocab.cpu().float())
    m: dict[str, float] = {}
    base = embed_images(encode, splits.val_base, batch_size, device, dist)
    m["base_acc"] = _acc(base, text.base, splits.val_base.labels)
    novel = embed_images(encode, splits.novel, batch_size, device, dist)
    if keep is not None:
        keep.update(base=base, novel=novel)
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


LATENCY_PROTOCOL = {"version": 1, "warmup": 5, "min_iters": 30, "batches": [1, 8], "threads": 1,
                    "statistic": "median ms per image", "device": "cpu"}


def device_type() -> str:
    """The CPU model the latency is measured on (``/proc/cpuinfo``, else ``platform``)."""
    import platform

    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.lower().startswith("model name"):
                return "cpu:" + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"cpu:{platform.machine()}:{platform.processor()}"


def _latency_path(cache_dir: str | None, student_cfg: dict, image_size: int, iters: int):
    """``<cache>/latency/<sha256>.json``, keyed by the student, device type and protocol."""

    from vldistill.trainers.storage import is_uri
    from vldistill.trainers.teachers import cache_root

    if is_uri(cache_dir) or is_uri(os.environ.get("VLDISTILL_CACHE")):
        return None  # an object store: no shared file to link into; measured per trial
    key = {"student": student_cfg, "image_size": image_size, "device": device_type(),
           "protocol": {**LATENCY_PROTOCOL, "iters": max(iters, LATENCY_PROTOCOL["min_iters"])}}
    digest = content_key(key, 24)
    return cache_root(cache_dir) / "latency" / f"{digest}.json", key


def cached_latency(student: torch.nn.Module, image_size: int, iters: int = 30,
                   student_cfg: dict | None = None, cache_dir: str | None = None) -> dict[str, float]:
    """Latency per image (ms) at batch 1 and 8 under :data:`LATENCY_PROTOCOL`, measured once per
    (student config, image size, device type, protocol) and shared through ``cache_dir``.

    The first trial of an architecture measures it (CPU, 1 thread, 5 warm-up forwards, the
    median of >= 30 timed ones) and links the file into place; a trial that measured at the
    same time finds the file there and takes its value, so every trial of one architecture
    reports the same number. ``student_cfg`` None: no cache (measured here).
    """
    import json
    import tempfile

    n = max(iters, LATENCY_PROTOCOL["min_iters"])

    def measure() -> dict[str, float]:
        out = {}
        for b in LATENCY_PROTOCOL["batches"]:
            ms = measure_latency_ms(student, (b, 3, image_size, image_size), iters=n,
                                    warmup=LATENCY_PROTOCOL["warmup"], threads=LATENCY_PROTOCOL["threads"])
            out["student_latency_ms" if b == 1 else f"student_latency_ms_b{b}"] = ms
        return out

    found = _latency_path(cache_dir, student_cfg, image_size, iters) if student_cfg is not None else None
    if found is None:
        return measure()
    path, key = found
    if not path.is_file():
        values = measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump({"key": key, "values": values}, f)
        try:
            os.link(f.name, path)  # first writer wins: never replaces another trial's value
        except FileExistsError:
            pass
        finally:
            os.unlink(f.name)
    return json.loads(path.read_text())["values"]


def student_cost(student: torch.nn.Module, image_size: int, iters: int = 30,
                 cfg: TrainConfig | None = None) -> dict[str, float]:
    """Parameters (incl. the head), forward FLOPs (2 x multiply-accumulates, see
    ``trainers/flops.py``), both exact, and CPU latency per image at batch 1 (and 8), in ms:
    with ``cfg``, measured once per architecture and device type (:func:`cached_latency`)."""
    import dataclasses

    from vldistill.trainers.flops import count_flops

    device = next(student.parameters()).device
    cpu = student.to("cpu")
    latency = cached_latency(cpu, image_size, iters,
                             dataclasses.asdict(cfg.student) if cfg is not None else None,
                             cfg.cache_dir if cfg is not None else None)
    flops = count_flops(cpu, (1, 3, image_size, image_size))
    student.to(device)
    return {"student_params": float(count_params(student)), "student_flops": float(flops), **latency}


# ----- final evaluation: representation metrics, few-shot, linear probe ---------------------


@torch.no_grad()
def representation_metrics(encode: "Encoder | dict[str, torch.Tensor]", teacher: "Encoder | dict[str, torch.Tensor]", splits: Splits,
                           text: TextTargets, neigh_k: int = 10, vlalign_k: int = 5,
                           batch_size: int = 512, device: torch.device | str = "cpu",
                           dist=None) -> dict[str, float]:
    """P1's ``M_rel``, ``M_neigh``, ``M_vlalign`` on held-out base and on novel images.

    Un-suffixed keys are the novel (OOD) values; ``/base`` uses the base class texts for
    ``M_vlalign``, ``/novel`` the novel ones. ``teacher``: the teacher's image encoder, or
    its precomputed normalised embeddings ``{"base": [N_val_base, D], "novel": [N_novel, D]}``
    (what trials use: :func:`teacher_eval_embeddings`, computed once per teacher and data).
    """
    m: dict[str, float] = {}
    for name, data, classes in (("base", splits.val_base, text.base), ("novel", splits.novel, text.novel)):
        s = encode[name] if isinstance(encode, dict) else embed_images(encode, data, batch_size, device, dist)
        t = teacher[name] if isinstance(teacher, dict) else embed_images(teacher, data, batch_size, device, dist)
        m[f"M_rel/{name}"] = relation_to_teacher(s, t)
        m[f"M_neigh/{name}"] = neighbour_overlap(s, t, neigh_k)
        m[f"M_vlalign/{name}"] = vl_alignment_inversions(s, t, classes.cpu().float(), vlalign_k)
    for key in ("M_rel", "M_neigh", "M_vlalign"):
        m[key] = m[f"{key}/novel"]
    return m


def few_shot_split(labels: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of k support images per class and of the remaining (query) images.

    Each class's images are ordered by a permutation seeded with ``(seed, class)``; the
    first k are the support set, so the supports of k < k' are nested.

    Raises:
        ConfigError: naming ``eval.few_shot`` when a class has no image left to test on.
    """
    support, query = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) <= k:
            raise ConfigError(f"eval.few_shot={k}: novel class {c} has only {len(idx)} images, "
                              "none would be left to test on")
        perm = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed * 1009 + c))]
        support.append(perm[:k])
        query.append(perm[k:])
    return torch.sort(torch.cat(support)).values, torch.sort(torch.cat(query)).values


def few_shot_accuracy(student: torch.nn.Module, data: LabelledImages, class_text: torch.Tensor,
                      k: int, steps: int, lr: float, seed: int, augment: AugmentConfig,
                      tau: float = 0.07, batch_size: int = 512,
                      device: torch.device | str = "cpu") -> float:
    """Mean per-class accuracy on the query images after fine-tuning a copy on k shots.

    The copy (the student itself is untouched) is trained in train mode with AdamW (no
    weight decay) for ``steps`` full-support steps of P1's ``cls`` loss: cross-entropy of
    ``cos(S(x), class_text) / tau``, on augmented views replayed from ``(image, step)``
    (supports larger than 256 images use a seeded 256-image batch per step). Deterministic
    from ``seed`` on the CPU.
    """
    support, query = few_shot_split(data.labels, k, seed)
    text = F.normalize(class_text.float(), dim=-1).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = copy.deepcopy(student).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        for step in range(steps):
            idx = support if len(support) <= 256 else (
                support[torch.randperm(len(support), generator=gen)[:256]])
            x = make_views(data.images[idx], view_seed(idx, step), augment).to(device)
            s = F.normalize(model(x)["embed"].float(), dim=-1)
            loss = F.cross_entropy(s @ text.T / tau, data.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        q = LabelledImages(data.images[query], data.labels[query], data.classes)
        emb = embed_images(lambda im: model(im)["embed"], q, batch_size, device)
    return _acc(emb, text.cpu(), q.labels)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, steps: int = 100, weight_decay: float = 1e-4) -> float:
    """Mean per-class accuracy of a multinomial logistic regression on frozen features.

    Features are L2-normalised; weights and biases start at zero and are fit by full-batch
    L-BFGS (strong Wolfe line search, ``steps`` iterations) on the mean cross-entropy plus
    ``weight_decay * ||W||^2``: a convex problem from a fixed start, so deterministic.
    """
    x = F.normalize(train_x.float().cpu(), dim=-1)
    xt = F.normalize(test_x.float().cpu(), dim=-1)
    y = train_y.cpu().long()
    n_cls = int(max(y.max(), test_y.max())) + 1
    w = torch.zeros(n_cls, x.shape[1], requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return mean_per_class_accuracy((xt @ w.T + b).argmax(1), test_y.cpu())


def teacher_eval_embeddings(teacher, splits: Splits, batch_size: int = 512,
                            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The teacher's normalised embeddings of the held-out base and the novel images (the
    fixed side of P1's representation metrics; computed once, not in every trial)."""
    return {"base": embed_images(teacher.encode_images, splits.val_base, batch_size, device),
            "novel": embed_images(teacher.encode_images, splits.novel, batch_size, device)}


def final_metrics(student: torch.nn.Module, teacher, splits: Splits, text: TextTargets,
                  cfg: TrainConfig, device: torch.device | str = "cpu", dist=None,
                  student_embeds: dict | None = None) -> dict[str, float]:
    """The final evaluation's extras: representation metrics, few-shot, linear probe.

    ``teacher``: a Teacher, or its :func:`teacher_eval_embeddings` (what the loop passes);
    ``student_embeds``: the student's base/novel embeddings kept by :func:`evaluate`.
    """
    ev = cfg.eval
    encode = lambda im: student(im)["embed"]  # noqa: E731
    was = student.training
    student.eval()
    t_side = teacher if isinstance(teacher, dict) else teacher.encode_images
    m = representation_metrics(student_embeds or encode, t_side, splits, text, ev.neigh_k, ev.vlalign_k,
                               ev.batch_size, device, dist)
    if ev.linear_probe:
        tr = embed_images(encode, splits.train, ev.batch_size, device, dist)
        te = embed_images(encode, splits.val_base, ev.batch_size, device, dist)
        m["linear_probe_acc"] = linear_probe_accuracy(tr, splits.train.labels, te, splits.val_base.labels,
                                                      ev.linear_probe_steps, ev.linear_probe_wd)
    if ev.few_shot > 0:
        acc = few_shot_accuracy(student, splits.novel, text.novel, ev.few_shot, ev.few_shot_steps,
                                ev.few_shot_lr, cfg.seed, cfg.augment, cfg.distill.cls.tau,
                                ev.batch_size, device)
        m[f"novel_acc_{ev.few_shot}shot"] = acc
        m["fewshot_novel_acc"] = acc
    student.train(was)
    return m
