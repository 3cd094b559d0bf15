"""``evaluate()`` on embeddings placed by hand: base, novel (per kind) and per-domain shift
accuracies known by construction; a swapped class list, a novel class scored against the
base texts, or a wrong domain each change the result."""

from pathlib import Path

import pytest
import torch

from vldistill.trainers.data.folder import DatasetInfo, LabelledImages, Splits
from vldistill.trainers.evaluation import evaluate
from vldistill.trainers.text import TextTargets

D = 8
E = torch.eye(D)
BASE, NOVEL = ["b0", "b1", "b2"], ["n0", "n1"]
TEXT = TextTargets(base=E[[0, 1, 2]], novel=E[[3, 4]], vocab=E[:3])
EMB: list[torch.Tensor] = []  # image id -> the embedding the encoder returns for it


def _images(points: list[tuple[int, torch.Tensor]], classes: list[str]) -> LabelledImages:
    """One 1x1 image per (label, embedding); its pixel holds the image's id in EMB."""
    ids = []
    for _, emb in points:
        ids.append(len(EMB))
        EMB.append(emb)
    imgs = torch.tensor(ids, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 1, 1).contiguous()
    return LabelledImages(imgs, torch.tensor([lab for lab, _ in points]), classes)


def encode(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([EMB[int(i)] for i in (x[:, 0, 0, 0] * 255).round().long()])


def _splits(swap_domains: bool = False) -> Splits:
    info = DatasetInfo(Path("."), BASE, NOVEL, {"near": ["n0"], "far": ["n1"]}, {},
                       ["photo", "sketch", "painting"], "photo")
    # base: b0 2/2, b1 1/2 (one image points at b2), b2 2/2 -> (1 + 0.5 + 1) / 3
    val = _images([(0, E[0]), (0, E[0]), (1, E[1]), (1, E[2]), (2, E[2]), (2, E[2] + 0.2 * E[0])], BASE)
    # novel: n0 (near) 2/2; n1 (far) 1/2, its other image points at n0. Each also leans to a
    # base text (b0), so scoring against the base texts gives another answer.
    nov = _images([(0, E[3] + 0.3 * E[0]), (0, E[3] + 0.3 * E[1]), (1, E[4] + 0.3 * E[0]),
                   (1, E[3] + 0.3 * E[2])], NOVEL)
    sketch = _images([(0, E[0]), (1, E[1]), (2, E[2])], BASE)  # 3/3
    painting = _images([(0, E[0]), (1, E[2]), (2, E[0])], BASE)  # 1/3
    shift = {"sketch": painting, "painting": sketch} if swap_domains else {"sketch": sketch, "painting": painting}
    return Splits(info, val, val, nov, shift)


def test_accuracies_known_by_construction():
    m = evaluate(encode, _splits(), TEXT)
    assert m["base_acc"] == pytest.approx(2.5 / 3)
    assert m["novel_acc/near"] == pytest.approx(1.0) and m["novel_acc/far"] == pytest.approx(0.5)
    assert m["novel_acc"] == pytest.approx(0.75)
    assert m["hmean"] == pytest.approx(2 * (2.5 / 3) * 0.75 / (2.5 / 3 + 0.75))
    assert m["shift_acc/sketch"] == pytest.approx(1.0)
    assert m["shift_acc/painting"] == pytest.approx(1 / 3)
    assert m["shift_acc"] == pytest.approx(2 / 3)


def test_each_mistake_changes_the_result():
    right = evaluate(encode, _splits(), TEXT)
    swapped = TextTargets(base=TEXT.base, novel=TEXT.novel[[1, 0]], vocab=TEXT.vocab)
    assert evaluate(encode, _splits(), swapped)["novel_acc"] != pytest.approx(right["novel_acc"])
    swapped_base = TextTargets(base=TEXT.base[[1, 0, 2]], novel=TEXT.novel, vocab=TEXT.vocab)
    assert evaluate(encode, _splits(), swapped_base)["base_acc"] != pytest.approx(right["base_acc"])
    against_base = TextTargets(base=TEXT.base, novel=TEXT.base[:2], vocab=TEXT.vocab)
    assert evaluate(encode, _splits(), against_base)["novel_acc"] != pytest.approx(right["novel_acc"])
    wrong = evaluate(encode, _splits(swap_domains=True), TEXT)
    assert wrong["shift_acc/sketch"] == pytest.approx(1 / 3) != right["shift_acc/sketch"]
