"""The typed form of a search space: frozen dataclasses and their YAML-able dict form.

:mod:`vldistill.search_spaces.loader` builds these from YAML and checks them; this module
only holds the data, the schema's vocabulary (kinds, modes; the sampler and scheduler names
are the keys of ``registry.py``) and the small rules every consumer needs: when a parameter
is active, and how categorical values that Optuna cannot store (lists, mappings) are encoded
for it.

Encoding of non-primitive choices: Optuna's categorical distribution stores only
``None``/``bool``/``int``/``float``/``str``. A parameter any of whose choices is a list or a
mapping is handed to Optuna as the JSON text of *every* one of its choices
(``json.dumps(value, sort_keys=True)``, e.g. ``[0.5, 0.5, 0.5]`` -> ``"[0.5, 0.5, 0.5]"``,
``None`` -> ``"null"``); ``trial.params`` and ``grid_points`` therefore hold that text, and
:meth:`ParamSpec.decode` (or :func:`~vldistill.search_spaces.suggest.decode_params`) maps it
back to the YAML value by table lookup. JSON text is injective, so no two choices collide.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

KINDS = ("choice", "grid", "uniform", "loguniform", "int")
CATEGORICAL_KINDS = ("choice", "grid")  # `grid` = `choice`; the name documents intent
MODES = ("max", "min")

_PRIMITIVE = (str, int, float, bool, type(None))


class SearchSpaceError(ValueError):
    """A search space is invalid; the message names the file, the key and the valid options."""


def same_value(a: Any, b: Any) -> bool:
    """Equality of YAML values that keeps ``true`` apart from ``1`` (Python's ``True == 1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple, dict)) or isinstance(b, (list, tuple, dict)):
        return False
    return a == b


def _plain(value: Any) -> Any:
    """A YAML-dumpable copy: tuples become lists (``yaml.safe_dump`` rejects tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _encode(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True)


@dataclass(frozen=True)
class ParamSpec:
    """One swept config value.

    ``values`` holds the choices of ``choice``/``grid``; ``low``/``high`` the inclusive bounds
    of ``uniform``/``loguniform``/``int``. ``baseline`` is the factor's reference level in the
    report (``None``: no baseline). ``when`` makes the parameter active only when every listed
    (earlier) parameter took the listed value; an inactive parameter is not suggested and the
    trial keeps the base config's value.
    """

    key: str
    kind: str
    values: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    baseline: Any = None
    when: dict[str, Any] | None = None

    @property
    def categorical(self) -> bool:
        return self.kind in CATEGORICAL_KINDS

    @property
    def encoded(self) -> bool:
        """Whether Optuna sees this parameter's choices as JSON text (see the module doc)."""
        return self.categorical and any(not isinstance(v, _PRIMITIVE) for v in self.values)

    def optuna_choices(self) -> list:
        """The choices as handed to ``suggest_categorical`` / ``GridSampler``."""
        return [_encode(v) for v in self.values] if self.encoded else list(self.values)

    def decode(self, value: Any) -> Any:
        """Map a value Optuna returned back to the YAML value (identity unless encoded)."""
        if not self.encoded:
            return value
        for v in self.values:
            if _encode(v) == value:
                return v
        raise SearchSpaceError(f"params.{self.key}: {value!r} is not the encoding of any of "
                               f"the choices {list(self.values)!r}")

    def is_active(self, chosen: dict[str, Any]) -> bool:
        """Whether the condition holds for the (decoded) values chosen so far."""
        return all(k in chosen and same_value(chosen[k], v) for k, v in (self.when or {}).items())

    def check_values(self) -> list:
        """Every value a trial can set: the choices, or both bounds, plus the baseline."""
        vals = list(self.values) if self.categorical else [self.low, self.high]
        if self.baseline is not None and not self.categorical:
            vals.append(self.baseline)
        return vals

    def to_dict(self) -> dict:
        d: dict[str, Any] = {self.kind: _plain(self.values) if self.categorical
                             else [self.low, self.high]}
        if self.baseline is not None:
            d["baseline"] = _plain(self.baseline)
        if self.when:
            d["when"] = _plain(dict(self.when))
        return d


@dataclass(frozen=True)
class Scheduler:
    """Trial scheduler: ``asha`` (early stopping by epochs) or ``none``."""

    type: str = "none"
    max_t: int | None = None  # epochs; None -> optim.epochs of the base config
    grace_period: int = 1
    reduction_factor: float = 2.0

    def to_dict(self) -> dict:
        if self.type == "none":
            return {"type": "none"}
        return {"type": self.type, "max_t": self.max_t, "grace_period": self.grace_period,
                "reduction_factor": self.reduction_factor}


@dataclass(frozen=True)
class Resources:
    """Per trial: CPUs and GPUs of each worker, the number of workers, and where they go.

    ``placement`` is the Ray placement strategy of a multi-worker trial's worker group
    (``pack``: as few nodes as possible, Ray's default; ``spread``: across nodes when it can;
    ``strict_spread``: every worker on a different node -- a DDP trial that must span nodes).
    ``memory`` (GiB per worker) is a Ray resource request like ``cpu``: Ray places a trial
    only where that much memory is free, and an autoscaler counts it. The default, 2 GiB,
    covers the platform's trials (a ResNet-18 student's trial peaked at ~1.5 GB of private
    memory; with the image store that no longer grows with the dataset, see docs/cluster.md).
    ``max_concurrent`` caps the trials Tune keeps started-or-queued at once. ``None`` (the
    default) queues every trial of the space (at most 200, Tune's own default queue for
    autoscaling), or for ``sampler: tpe`` the larger of what fits the cluster now and 10
    (Optuna's TPE draws its first 10 points at random anyway, so queueing them costs the
    search nothing; later points wait for results). Queued trials are what an autoscaling
    cluster sees as demand; Ray still runs only what fits.
    """

    cpu: float = 1.0
    gpu: float = 0.0
    memory: float = 2.0
    workers: int = 1
    placement: str = "pack"
    max_concurrent: int | None = None

    def to_dict(self) -> dict:
        out = {"cpu": self.cpu, "gpu": self.gpu, "workers": self.workers}
        if self.memory != Resources.memory:
            out["memory"] = self.memory
        if self.placement != "pack":
            out["placement"] = self.placement
        if self.max_concurrent is not None:
            out["max_concurrent"] = self.max_concurrent
        return out


@dataclass(frozen=True)
class Racing:
    """``seeds: {min, max, margin, alpha, futility}``: seeds are added a round at a time, only
    to the configurations of comparisons still undecided and not futile (their chance of a
    decision by ``max`` below ``futility``, a tenth of it below 4 seeds; 0 turns that off).
    ``vldistill/platform/racing.py``.

    Decision: futility defaults to 0.1, on. A race exists to spend seeds where they decide; a
    comparison whose observed effect lies a fraction of its seed noise from the margin would
    otherwise hold every configuration it enters to ``max`` (the 2x2 ``default`` question:
    vlprox, 0.3 sd from its margin, ~55 seeds to decide). It never changes a decision.

    Decision: ``variance`` defaults to ``pooled``: a factorial's comparisons take their
    seed-to-seed sd from the configuration-by-seed residual of all its configurations
    ((t-1)(n-1) degrees of freedom instead of n-1), the textbook analysis of a factorial
    blocked by seed. At 2-4 seeds the t quantile of n-1 degrees of freedom is what keeps a
    race from deciding (12.7 at 2 seeds). It assumes the contrasts share one variance;
    ``paired`` drops that assumption (docs/report.md, Racing, has the measured cost of each).
    """

    min: int = 2
    max: int = 8
    margin: float = 0.01
    alpha: float = 0.05
    futility: float = 0.1
    variance: str = "pooled"

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "margin": self.margin, "alpha": self.alpha,
                "futility": self.futility, "variance": self.variance}


DESIGN_PARAM = "design"  # the one Optuna parameter of a design space: the point's name


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space (see ``loader.load_search_space``).

    ``source`` (the YAML file it came from) is not part of equality: the resolved copy a
    sweep writes next to its results loads back equal to the shipped file.
    """

    name: str
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    sampler: str
    scheduler: Scheduler
    num_samples: int
    seeds: tuple[int, ...]
    resources: Resources
    params: dict[str, ParamSpec]
    overrides: tuple[str, ...] = ()
    sampler_seed: int = 0
    description: str = ""
    source: str = field(default="", compare=False)
    # what the shared-asset stage asks Ray for (platform/assets.py): {cpu, gpu, max_actors}
    teacher_resources: dict = field(default_factory=dict)
    design: Any = None  # a designs.Design (the space's configurations), or None
    racing: Racing | None = None  # seeds raced (``seeds`` is then 0 .. racing.max - 1)

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def grid_size(self) -> int | None:
        """Product of the numbers of choices (``None`` if any parameter is continuous).

        Conditional parameters count fully: Optuna's ``GridSampler`` enumerates them even
        where they are inactive, so those grid points repeat a configuration.
        """
        if self.design is not None:
            return len(self.design.points)
        if not all(p.categorical for p in self.params.values()):
            return None
        return math.prod(len(p.values) for p in self.params.values())

    def trial_count(self) -> int:
        """Trials the sweep runs: sampled configurations times seeds (racing: at most)."""
        n = self.num_samples
        if self.sampler == "grid":
            n = min(n, self.grid_size() or n)
        return n * len(self.seeds)

    def to_dict(self) -> dict:
        """Plain dict in the YAML input schema; ``load_search_space`` reads it back equal."""
        one = len(self.metrics) == 1
        return {
            "name": self.name,
            "description": self.description,
            "metric": self.metrics[0] if one else list(self.metrics),
            "mode": self.modes[0] if one else list(self.modes),
            "sampler": self.sampler,
            "sampler_seed": self.sampler_seed,
            "scheduler": self.scheduler.to_dict(),
            "num_samples": self.num_samples,
            "seeds": self.racing.to_dict() if self.racing else list(self.seeds),
            "resources": self.resources.to_dict(),
            "overrides": list(self.overrides),
            "params": {k: p.to_dict() for k, p in self.params.items()},
            **({"teacher_resources": dict(self.teacher_resources)} if self.teacher_resources else {}),
            **({"design": _plain(self.design.spec)} if self.design is not None else {}),
        }
