"""Distillation losses: a registry by name and a weighted composer.

A loss is a small ``nn.Module`` registered under a short name (``"cls"``, ``"im_cst"``, ...)
whose ``forward(student, teacher, batch)`` returns a dict of named terms; the terms whose
keys end in ``_loss`` are the ones that get weighted and summed. ``WeightedLoss`` builds the
active terms from a ``{name: weight}`` mapping, so an ablation is an edit of the weights
(weight 0 means the term is neither built nor computed), never a new flag.

Importing this package imports the loss modules below, which registers them.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

logger = logging.getLogger(__name__)

LOSSES: dict[str, type[nn.Module]] = {}
"""Registered loss classes by name."""

LOSS_SUFFIX = "_loss"


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering an ``nn.Module`` loss under ``name``.

    Args:
        name: The registry key; must be unused.

    Returns:
        The decorator, which returns the class unchanged.

    Raises:
        ValueError: If ``name`` is already registered to another class.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        existing = LOSSES.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"loss name {name!r} is already registered to {existing.__qualname__}"
            )
        LOSSES[name] = cls
        return cls

    return decorator


def _accepted_kwargs(cls: type[nn.Module]) -> tuple[list[str], bool]:
    """Names of the keyword arguments ``cls`` accepts, and whether it takes ``**kwargs``."""
    params = list(inspect.signature(cls).parameters.values())
    names = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return names, var_kw


def _check_known(name: str) -> type[nn.Module]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    return LOSSES[name]


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the loss registered under ``name``.

    Args:
        name: A key of ``LOSSES``.
        **kwargs: Constructor arguments of that loss.

    Returns:
        The loss module.

    Raises:
        ValueError: For an unknown name (message lists the known ones, sorted) or a keyword
            argument the loss does not accept (message names the loss, the argument and the
            accepted arguments).
    """
    cls = _check_known(name)
    accepted, var_kw = _accepted_kwargs(cls)
    if not var_kw:
        bad = sorted(k for k in kwargs if k not in accepted)
        if bad:
            raise ValueError(
                f"loss {name!r} got unknown keyword argument(s) {bad}; accepted: {accepted}"
            )
    return cls(**kwargs)


class WeightedLoss(nn.Module):
    """Weighted sum of registered losses, logging every term.

    Args:
        weights: ``{loss name: weight}``. Weight 0 disables the term (it is not built and
            not computed); weights must be finite and non-negative, and at least one > 0.
        kwargs: Optional ``{loss name: constructor kwargs}``; every name must appear in
            ``weights`` (kwargs of a zero-weight term are accepted and ignored).

    Raises:
        ValueError: On an unknown loss name, a negative or non-finite weight, all-zero
            weights, kwargs for a name not in ``weights``, or a bad constructor kwarg.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        for name in weights:  # a typo is an error even at weight 0
            _check_known(name)
        stray = sorted(set(kwargs) - set(weights))
        if stray:
            raise ValueError(
                f"kwargs given for loss(es) {stray} that have no weight; "
                f"weighted losses: {sorted(weights)}"
            )
        self.weights: dict[str, float] = {}
        for name, weight in weights.items():
            w = float(weight)
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weight of loss {name!r} must be finite and >= 0, got {weight!r}")
            if w > 0:
                self.weights[name] = w
        if not self.weights:
            raise ValueError(f"all loss weights are zero: {dict(weights)}")
        self.terms = nn.ModuleDict(
            {name: build_loss(name, **dict(kwargs.get(name, {}))) for name in self.weights}
        )
        logger.debug("WeightedLoss terms: %s", self.weights)

    @property
    def names(self) -> list[str]:
        """Names of the active (weight > 0) losses, in configuration order."""
        return list(self.weights)

    def forward(
        self, student: dict, teacher: dict, batch: dict
    ) -> tuple[Tensor, dict[str, float]]:
        """Compute every active term and their weighted sum.

        Args:
            student: Student outputs (see ``p1`` for the keys the P1 losses read).
            teacher: Teacher targets.
            batch: The batch (labels, ...).

        Returns:
            ``(total, logs)``: ``total`` is the differentiable sum of ``weight * term`` over
            the keys ending in ``_loss``; ``logs`` holds detached floats: each raw term under
            its key, ``"weighted/<key>"`` for the weighted ones, and ``"loss"`` = total.

        Raises:
            ValueError: If two losses return the same key, or a loss returns no ``_loss`` key.
        """
        total: Tensor | None = None
        logs: dict[str, float] = {}
        for name, module in self.terms.items():
            weight = self.weights[name]
            out = module(student, teacher, batch)
            n_loss_terms = 0
            for key, value in out.items():
                if key in logs:
                    raise ValueError(f"loss {name!r} returned key {key!r} already logged")
                if isinstance(value, Tensor) and value.numel() == 1:
                    logs[key] = float(value.detach())
                if key.endswith(LOSS_SUFFIX):
                    n_loss_terms += 1
                    weighted = weight * value
                    logs[f"weighted/{key}"] = float(weighted.detach())
                    total = weighted if total is None else total + weighted
            if n_loss_terms == 0:
                raise ValueError(f"loss {name!r} returned no key ending in {LOSS_SUFFIX!r}")
        assert total is not None  # at least one active term, each with a _loss key
        logs["loss"] = float(total.detach())
        return total, logs


# Imported last so that the registry exists when the modules register themselves.
from vldistill.trainers.losses import cap, p1, p2, p4  # noqa: E402,F401

__all__ = ["LOSSES", "LOSS_SUFFIX", "WeightedLoss", "build_loss", "register_loss"]
