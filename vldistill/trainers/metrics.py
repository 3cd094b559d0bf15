"""Small pure metric functions used by evaluation (torch only, no I/O, no state).

Accuracy here is P1's mean per-class top-1 accuracy; ``attribute_floor`` gives the chance
level of a classifier that only knows one attribute of each class (the floor a
"colour-only" shortcut reaches on a shape x colour task); ``measure_latency_ms`` is the
CPU latency reported next to the parameter count when comparing students.

``relation_to_teacher`` (``M_rel``), ``neighbour_overlap`` (``M_neigh``) and
``vl_alignment_inversions`` (``M_vlalign``) are P1's proposed representation metrics
(P1, docs/methods.md): how closely the student's embedding space reproduces the teacher's on a set of
images. They work in row chunks, so an N-image set never materialises an N x N matrix.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def mean_per_class_accuracy(
    pred: Tensor, target: Tensor, classes: Sequence[int] | None = None
) -> float:
    """Mean over classes of per-class top-1 accuracy.

    Args:
        pred: Predicted class indices [N], or logits [N, C] (then argmax is taken).
        target: True class indices [N].
        classes: Classes to average over; those with no sample in ``target`` are ignored.
            Default: the classes present in ``target``.

    Returns:
        The mean per-class accuracy in [0, 1].

    Raises:
        ValueError: On mismatched lengths, or if no class to average over has a sample.
    """
    if pred.dim() == 2:
        pred = pred.argmax(dim=-1)
    pred, target = pred.reshape(-1).cpu(), target.reshape(-1).cpu()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.numel()} entries but target has {target.numel()}")
    present = set(torch.unique(target).tolist())
    wanted = sorted(present) if classes is None else [c for c in classes if c in present]
    if not wanted:
        raise ValueError("no class to average over has a sample in target")
    accs = [(pred[target == c] == c).float().mean().item() for c in wanted]
    return float(sum(accs) / len(accs))


def zero_shot_logits(image_embed: Tensor, text_embed: Tensor) -> Tensor:
    """Cosine similarity [N, C] of images [N, D] and class texts [C, D]; normalises both."""
    return F.normalize(image_embed.float(), dim=-1) @ F.normalize(text_embed.float(), dim=-1).T


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean ``2ab / (a + b)`` of two non-negative numbers; 0 if either is 0."""
    if a <= 0 or b <= 0:
        return 0.0
    return 2.0 * a * b / (a + b)


def binomial_ci_halfwidth(p: float, n: int, z: float = 1.96) -> float:
    """Normal-approximation half-width ``z * sqrt(p (1 - p) / n)`` of an accuracy's CI.

    Args:
        p: Observed proportion in [0, 1].
        n: Number of trials (> 0).
        z: Normal quantile (1.96 for 95%).

    Raises:
        ValueError: If ``p`` is outside [0, 1] or ``n`` <= 0.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n!r}")
    return z * math.sqrt(p * (1.0 - p) / n)


def attribute_floor(class_attrs: Sequence[tuple], attr_index: int) -> float:
    """Expected mean-per-class accuracy of a classifier that knows one attribute only.

    The classifier sees attribute ``attr_index`` of the true class and guesses uniformly
    among the task's classes sharing that value, so class c is right with probability
    ``1 / #{classes with the same value}``; the result is the mean over classes.
    E.g. 36 classes = 6 shapes x 6 colours, colour only -> 1/6.

    Args:
        class_attrs: One attribute tuple per class of the task.
        attr_index: Which attribute the classifier knows.

    Raises:
        ValueError: If ``class_attrs`` is empty.
    """
    if not class_attrs:
        raise ValueError("class_attrs is empty")
    values = [attrs[attr_index] for attrs in class_attrs]
    counts = Counter(values)
    return sum(1.0 / counts[v] for v in values) / len(values)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def measure_latency_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    iters: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> float:
    """Median CPU latency per image, in milliseconds.

    Times ``iters`` forwards of a random batch of shape ``input_shape`` (after ``warmup``
    untimed ones) under ``torch.inference_mode()`` with the model in eval mode, takes the
    median wall-clock time per forward and divides it by the batch size
    (``input_shape[0]``). The model's training mode and torch's thread count are restored.

    Args:
        model: A model whose parameters are on the CPU.
        input_shape: Batch shape, batch first, e.g. ``(8, 3, 224, 224)``.
        iters: Timed forwards (>= 1).
        warmup: Untimed forwards first.
        threads: If given, ``torch.set_num_threads`` for the measurement.

    Returns:
        Median milliseconds per image.

    Raises:
        ValueError: If ``iters`` < 1, the batch size < 1, or the model is not on the CPU.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters!r}")
    batch_size = int(input_shape[0])
    if batch_size < 1:
        raise ValueError(f"batch size input_shape[0] must be >= 1, got {batch_size}")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"measure_latency_ms runs on CPU; model is on {sorted(devices)}")

    was_training = model.training
    old_threads = torch.get_num_threads()
    x = torch.randn(*input_shape)
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(iters):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
        if threads is not None:
            torch.set_num_threads(old_threads)
    return statistics.median(times) * 1000.0 / batch_size


_CHUNK = 1024  # rows per block of the N x N similarity computations


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def _check_pair(student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings "
                         "must both be [N, D] with the same N and D")


def relation_to_teacher(student: Tensor, teacher: Tensor) -> float:
    """``M_rel``: fraction of images whose nearest teacher embedding is their own.

    For image i, ``argmax_j cos(S_i, T_j)`` over the N images; the metric is the fraction
    with ``argmax == i`` (ties go to the lowest index). Higher is better.

    Args:
        student: Student embeddings [N, D] (normalised here).
        teacher: Teacher image embeddings [N, D] of the same images, same order.
    """
    _check_pair(student, teacher)
    s, t = _unit(student), _unit(teacher)
    hits = 0
    for i in range(0, len(s), _CHUNK):
        nearest = (s[i:i + _CHUNK] @ t.T).argmax(dim=1)
        hits += int((nearest == torch.arange(i, i + len(nearest))).sum())
    return hits / len(s)


def _knn(x: Tensor, rows: slice, k: int) -> Tensor:
    sims = x[rows] @ x.T
    own = torch.arange(rows.start, rows.start + len(sims))
    sims[torch.arange(len(sims)), own] = -float("inf")  # an image is not its own neighbour
    return sims.topk(k, dim=1).indices


def neighbour_overlap(student: Tensor, teacher: Tensor, k: int) -> float:
    """``M_neigh``: mean over images of ``|kNN_S(i) & kNN_T(i)| / k``.

    Neighbours are the other images of the set by cosine (the image itself excluded),
    under the student's and under the teacher's embeddings. ``k`` is capped at ``N - 1``.
    Higher is better.

    Raises:
        ValueError: on fewer than 2 images or ``k < 1``.
    """
    _check_pair(student, teacher)
    n = len(student)
    if n < 2 or k < 1:
        raise ValueError(f"neighbour_overlap needs >= 2 images and k >= 1, got N={n}, k={k}")
    k = min(k, n - 1)
    s, t = _unit(student), _unit(teacher)
    total = 0.0
    for i in range(0, n, _CHUNK):
        rows = slice(i, min(i + _CHUNK, n))
        ns, nt = _knn(s, rows, k), _knn(t, rows, k)
        mask = torch.zeros(len(ns), n).scatter_(1, ns, 1.0)
        total += float(mask.gather(1, nt).sum())
    return total / (n * k)


def vl_alignment_inversions(student: Tensor, teacher: Tensor, text: Tensor, k: int) -> float:
    """``M_vlalign``: reversed pairs among the teacher's top-k class texts, as a fraction.

    For image i, take the k class-text embeddings most similar to ``T_i`` in the teacher's
    order ``c_1, ..., c_k`` (most similar first). A pair ``a < b`` is *reversed* when the
    student scores it the other way, ``cos(S_i, c_a) < cos(S_i, c_b)`` (strictly; ties are
    not reversed). The metric is the number of reversed pairs divided by the
    ``k (k - 1) / 2`` pairs, averaged over images: 0 = the student keeps the teacher's
    ranking, 1 = fully reversed, ~0.5 = unrelated. Lower is better. (P1's paper says
    "count"; the fraction makes values comparable across k.) ``k`` is capped at the number
    of class texts.

    Args:
        student: Student embeddings [N, D].
        teacher: Teacher image embeddings [N, D].
        text: Class text embeddings [C, D] of the task the images belong to.
        k: How many of the teacher's top classes to compare (>= 2).

    Raises:
        ValueError: on fewer than 2 class texts or ``k < 2``.
    """
    _check_pair(student, teacher)
    k = min(k, len(text))
    if k < 2:
        raise ValueError(f"vl_alignment_inversions needs k >= 2 and >= 2 class texts, got k={k}")
    s, t, c = _unit(student), _unit(teacher), _unit(text)
    a, b = torch.triu_indices(k, k, offset=1)
    total = 0.0
    for i in range(0, len(s), _CHUNK):
        order = (t[i:i + _CHUNK] @ c.T).topk(k, dim=1).indices  # teacher's order, best first
        ss = (s[i:i + _CHUNK] @ c.T).gather(1, order)  # student scores in that order
        total += float((ss[:, a] < ss[:, b]).float().mean(dim=1).sum())
    return total / len(s)
