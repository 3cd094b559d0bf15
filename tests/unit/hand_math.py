"""Scalar formulas written out with ``math``, for loss tests' hand-computed values.

Deliberately not torch: a test that checks a torch loss against the same torch formula
could not fail.
"""

from __future__ import annotations

import math


def lse(*xs: float) -> float:
    """log-sum-exp."""
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one row of logits."""
    return lse(*logits) - logits[target]


def kl(p_logits: list[float], q_logits: list[float]) -> float:
    """KL(softmax(p) || softmax(q))."""
    lp = [x - lse(*p_logits) for x in p_logits]
    lq = [x - lse(*q_logits) for x in q_logits]
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))
