"""Evaluation metric functions on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vldistill.trainers.metrics import (
    attribute_floor,
    binomial_ci_halfwidth,
    count_params,
    harmonic_mean,
    mean_per_class_accuracy,
    measure_latency_ms,
    zero_shot_logits,
)


def test_mean_per_class_accuracy_differs_from_plain_accuracy():
    # class 0: 3/3 right, class 1: 0/1 right -> plain 0.75, per-class mean 0.5
    pred = torch.tensor([0, 0, 0, 0])
    target = torch.tensor([0, 0, 0, 1])
    assert (pred == target).float().mean().item() == pytest.approx(0.75)
    assert mean_per_class_accuracy(pred, target) == pytest.approx(0.5)


def test_mean_per_class_accuracy_with_classes_ignores_empty_ones():
    pred = torch.tensor([0, 1, 1, 2])
    target = torch.tensor([0, 1, 2, 2])  # class 0: 1, class 1: 1, class 2: 1/2
    assert mean_per_class_accuracy(pred, target) == pytest.approx(2.5 / 3)
    # class 5 has no sample and is ignored; class 2 is left out
    assert mean_per_class_accuracy(pred, target, classes=[0, 1, 5]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mean_per_class_accuracy(pred, target, classes=[7])


def test_mean_per_class_accuracy_accepts_logits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    target = torch.tensor([0, 1, 1])  # class 0: 1/1, class 1: 1/2
    assert mean_per_class_accuracy(logits, target) == pytest.approx(0.75)


def test_zero_shot_logits_are_cosines():
    image = torch.tensor([[3.0, 4.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(zero_shot_logits(image, text), torch.tensor([[0.6, 0.8]]))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(0.5, 0.5, 0.5), (1.0, 0.5, 2 * 0.5 / 1.5), (0.0, 0.7, 0.0), (0.7, 0.0, 0.0)],
)
def test_harmonic_mean(a, b, expected):
    assert harmonic_mean(a, b) == pytest.approx(expected)


def test_binomial_ci_halfwidth():
    assert binomial_ci_halfwidth(0.5, 100) == pytest.approx(1.96 * 0.05)
    assert binomial_ci_halfwidth(0.0, 10) == 0.0
    assert binomial_ci_halfwidth(0.2, 400, z=1.0) == pytest.approx(math.sqrt(0.16 / 400))
    with pytest.raises(ValueError):
        binomial_ci_halfwidth(0.5, 0)
    with pytest.raises(ValueError):
        binomial_ci_halfwidth(1.5, 10)


def test_attribute_floor_colour_only_on_6x6_grid_is_one_sixth():
    grid = [(shape, colour) for shape in range(6) for colour in range(6)]
    assert attribute_floor(grid, 1) == pytest.approx(1 / 6)
    assert attribute_floor(grid, 0) == pytest.approx(1 / 6)


def test_attribute_floor_uneven_list():
    classes = [("red", "circle"), ("red", "square"), ("red", "star"), ("blue", "circle")]
    # colour: the three reds are right 1/3 of the time, blue always -> (3 * 1/3 + 1) / 4
    assert attribute_floor(classes, 0) == pytest.approx(0.5)
    # shape: circles 1/2 each, square 1, star 1 -> (0.5 + 1 + 1 + 0.5) / 4
    assert attribute_floor(classes, 1) == pytest.approx(0.75)


def test_count_params():
    assert count_params(nn.Linear(3, 4)) == 3 * 4 + 4


def test_latency_is_positive_and_restores_training_mode():
    model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.1), nn.Linear(32, 4))
    model.train()
    ms = measure_latency_ms(model, (4, 16), iters=3, warmup=1, threads=1)
    assert isinstance(ms, float) and ms > 0
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    measure_latency_ms(model, (2, 16), iters=2, warmup=0)
    assert not model.training


def test_latency_restores_thread_count():
    before = torch.get_num_threads()
    measure_latency_ms(nn.Linear(4, 4), (1, 4), iters=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before
