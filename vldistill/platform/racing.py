"""Sequential decisions over seeds (racing): which comparisons are decided, which need seeds.

Ray-free (numpy + scipy): the searcher (``platform/searcher.py``) calls it between rounds,
the report (``platform/report/decisions.py``) replays it from the rows, the unit tests simulate it.

A comparison (``search_spaces/designs.py``) is a contrast ``d_s = sum_c w_c y_{c,s}`` over
configurations, computed per seed ``s`` from the seeds that every configuration in it
shares (paired differences), signed so that positive is better in the space's mode.

The method (docs/report.md, "Racing"):

- *Looks.* A comparison is looked at after each round, at n = min, min+1, ..., max shared
  seeds; a decision, once made, stands.
- *Interval.* At a look with n seeds: the t interval ``mean(d) +- t_{n-1}(1 - a/2) sd(d)/sqrt(n)``
  at a *nominal* level ``a`` below the target ``alpha``.
- *Error control over the looks* (a correction over the planned looks): ``a`` is chosen so
  that, for Gaussian seed noise, the chance that the interval misses the true value at *any*
  of the looks min..max is ``alpha``. The t statistic's path is pivotal (its law does not
  depend on the noise's mean or variance), so ``a`` is the alpha-quantile of
  ``min_n p_n`` over simulated standard-normal paths (:func:`nominal_level`; 20,000 paths,
  seeded, cached). Fewer looks (a failed trial, a decided comparison) only lower the error.
- *Across comparisons:* Holm at every look: the undecided comparisons, ordered by how far
  their mean lies beyond the margin in standard errors ((|mean| - margin)/se), get
  ``alpha/m, alpha/(m-1), ...`` while each decides; the first that does not stops the steps
  (the rest keep that step's level for their interval).
- *Decision:* better when the interval is above ``+margin``, worse when below ``-margin``,
  equivalent when inside ``+-margin``; undecided otherwise, and "undecided at budget" once
  its configurations hold ``max`` seeds.
- *Futility* (``seeds.futility``, default 0.1): an undecided comparison with at least 4
  shared seeds stops *asking* for seeds when its chance of a decision at ``max`` seeds,
  if its effect and seed-to-seed sd are what it shows so far (conditional power under the
  current trend, :func:`chance_to_decide`), is below ``futility``. It only changes which
  configurations get the next seed, never how a comparison is decided: it is evaluated
  again whenever its configurations get seeds for another comparison, and the error
  control above holds unchanged (stopping early only removes looks). Without it, one
  comparison near its margin keeps every configuration it enters running to ``max``: in
  the 2x2 ``default`` question, all four.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats

PATHS = 20_000  # simulated null paths per (min, max)
DECISIONS = ("better", "worse", "equivalent", "undecided")
# Futility is judged from 4 shared seeds on: from 3 (an sd with 2 degrees of freedom) it cost
# 5 points of power at effects of twice the seed noise (0.898 -> 0.850), from 4 it costs 2
# (0.879), and still ends races near the margin after ~4.3 seeds instead of ~7.8 (seeded
# simulations, 1,000 races each, min 2, max 8, futility 0.1; tests/unit/test_racing.py).
FUTILITY_MIN_SEEDS = 4


@dataclasses.dataclass(frozen=True)
class Decision:
    """One comparison's outcome: its decision, the interval it rests on, the seeds it took."""

    name: str
    decision: str  # better | worse | equivalent | undecided
    estimate: float
    low: float
    high: float
    seeds: int
    note: str = ""
    at_budget: bool = False
    chance: float | None = None  # undecided: its chance of a decision by max (None: not judged)
    futile: bool = False  # undecided, and that chance is below the space's futility threshold

    @property
    def status(self) -> str:
        """The decision, with why an undecided comparison stopped taking seeds."""
        if self.decision == "undecided" and self.at_budget:
            return "undecided at the budget"
        if self.decision == "undecided" and self.futile:
            return "undecided, stopped for futility"
        return self.decision

    def line(self) -> str:
        what = self.status
        if self.decision == "undecided" and self.futile and not self.at_budget:
            chance = "<1%" if self.chance < 0.005 else f"{self.chance:.0%}"
            what += f" ({chance} chance of a decision by max)"
        return (f"{self.name}: {what}, {self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}], "
                f"{self.seeds} seeds")


@functools.lru_cache(maxsize=32)
def _min_p(n_min: int, n_max: int, seed: int = 0) -> np.ndarray:
    """Per simulated null path, the smallest two-sided t-test p-value over looks n_min..n_max."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((PATHS, n_max))
    ns = np.arange(1, n_max + 1)
    mean = np.cumsum(x, axis=1) / ns
    var = (np.cumsum(x ** 2, axis=1) - ns * mean ** 2) / np.maximum(ns - 1, 1)
    out = np.ones(PATHS)
    for n in range(max(n_min, 2), n_max + 1):
        t = mean[:, n - 1] / np.sqrt(var[:, n - 1] / n)
        out = np.minimum(out, 2 * stats.t.sf(np.abs(t), n - 1))
    return out


@functools.lru_cache(maxsize=256)
def nominal_level(alpha: float, n_min: int, n_max: int) -> float:
    """The per-look level whose intervals miss with chance ``alpha`` over looks n_min..n_max."""
    if n_max <= max(n_min, 2):
        return alpha  # one look: no correction
    return float(np.quantile(_min_p(max(n_min, 2), n_max), alpha))


def paired(values: Mapping[str, Mapping[int, float]], weights: Mapping[str, float],
           sign: float = 1.0) -> dict[int, float]:
    """``{seed: sign * sum_c w_c y_{c,seed}}`` over the seeds every weighted config has."""
    configs = [c for c, w in weights.items() if w]
    if not configs or any(c not in values for c in configs):
        return {}
    shared = set.intersection(*(set(values[c]) for c in configs))
    return {s: sign * sum(weights[c] * values[c][s] for c in configs)
            for s in sorted(shared) if all(math.isfinite(values[c][s]) for c in configs)}


@functools.lru_cache(maxsize=4096)
def _t_quantile(level: float, df: int) -> float:
    return float(stats.t.ppf(1 - level / 2, df))


def interval(d: Iterable[float], level: float) -> tuple[float, float, float]:
    """Mean and the two-sided t interval at ``level`` (error rate) of the differences."""
    x = np.asarray(list(d), dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, -math.inf, math.inf
    hw = _t_quantile(level, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, m - hw, m + hw


def decide(low: float, high: float, margin: float) -> str:
    if low > margin:
        return "better"
    if high < -margin:
        return "worse"
    if low > -margin and high < margin:
        return "equivalent"
    return "undecided"


def _t(d: list[float], margin: float = 0.0) -> float:
    """Distance of the mean beyond the margin, in standard errors (the Holm order)."""
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    return (abs(float(np.mean(d))) - margin) / sd * math.sqrt(len(d)) if sd > 0 else math.inf


def chance_to_decide(d: Iterable[float], margin: float, level: float, n_max: int) -> float:
    """The chance that one look at ``n_max`` seeds, at ``level``, decides, if the effect and the
    seed-to-seed sd are the observed ones (conditional power under the current trend).

    With n observed differences of mean m and sd s, the final mean is Normal(m, (N-n) s^2/N^2)
    and the final half-width ``t_{N-1}(1 - level/2) s / sqrt(N)`` (s held fixed): the chance is
    P(final interval above +margin) + P(below -margin) + P(inside +-margin). 1.0 when there is
    nothing to project (fewer than 2 values, no spread, or n >= N).
    """
    x = np.asarray(list(d), dtype=float)
    n, big_n = len(x), n_max
    if n < 2 or n >= big_n:
        return 1.0
    m, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0:
        return 1.0
    hw = _t_quantile(level, big_n - 1) * sd / math.sqrt(big_n)
    spread = math.sqrt(big_n - n) * sd / big_n
    cdf = stats.norm.cdf
    p = cdf((m - margin - hw) / spread) + cdf((-margin - hw - m) / spread)
    if hw < margin:
        p += cdf((margin - hw - m) / spread) - cdf((hw - margin - m) / spread)
    return float(min(1.0, p))


def race(values: Mapping[str, Mapping[int, float]], comparisons: Iterable, n_min: int, n_max: int,
         margin: float, alpha: float = 0.05, sign: float = 1.0, futility: float = 0.0) -> list[Decision]:
    """Replay the looks n_min..n_max over the results so far; one :class:`Decision` each.

    Args:
        values: ``{config: {seed: metric}}`` of the finished trials.
        comparisons: objects with ``name``, ``weights`` (config -> weight) and ``note``.
        sign: -1 for a ``min`` metric (positive = better).
        futility: mark an undecided comparison (4+ seeds, below max) ``futile`` when its
            :func:`chance_to_decide` at its last look's level is below this (0: never).
    """
    comps = list(comparisons)
    diffs = {c.name: paired(values, c.weights, sign) for c in comps}
    out: dict[str, Decision] = {}
    levels: dict[str, float] = {}
    for n in range(max(n_min, 2), n_max + 1):
        open_ = [c for c in comps if c.name not in out or out[c.name].decision == "undecided"]
        ready = [c for c in open_ if len(diffs[c.name]) >= n]
        ready.sort(key=lambda c: -_t(list(diffs[c.name].values())[:n], margin))
        stopped = False
        for j, c in enumerate(ready):
            d = list(diffs[c.name].values())[:n]
            levels[c.name] = nominal_level(alpha / (len(ready) - j), n_min, n_max)
            m, lo, hi = interval(d, levels[c.name])
            verdict = "undecided" if stopped else decide(lo, hi, margin)
            stopped = stopped or verdict == "undecided"
            out[c.name] = Decision(c.name, verdict, m, lo, hi, n, getattr(c, "note", ""),
                                   at_budget=n >= n_max)
    for c in comps:  # fewer shared seeds than n_min: no interval yet
        if c.name not in out:
            d = list(diffs[c.name].values())
            m = float(np.mean(d)) if d else math.nan
            out[c.name] = Decision(c.name, "undecided", m, -math.inf, math.inf, len(d),
                                   getattr(c, "note", ""))
    for name, dec in out.items():
        if dec.decision == "undecided" and name in levels and FUTILITY_MIN_SEEDS <= dec.seeds < n_max:
            chance = chance_to_decide(list(diffs[name].values())[:dec.seeds], margin, levels[name], n_max)
            out[name] = dataclasses.replace(dec, chance=chance, futile=chance < futility)
    return [out[c.name] for c in comps]


def seeds_to_decide(d: Iterable[float], margin: float, level: float, cap: int = 64) -> tuple[int | None, str]:
    """The fewest seeds (more than ``len(d)``, at most ``cap``) at which a one-look interval
    at ``level`` would decide, if the mean and seed-to-seed sd of ``d`` stayed as observed;
    and that decision. ``(None, "undecided")`` when no such count exists up to ``cap`` or
    ``d`` has fewer than 2 values. A projection for the report's "why undecided", not a test.
    """
    x = np.asarray(list(d), dtype=float)
    if len(x) < 2:
        return None, "undecided"
    m, sd = float(x.mean()), float(x.std(ddof=1))
    for n in range(len(x) + 1, cap + 1):
        hw = _t_quantile(level, n - 1) * sd / math.sqrt(n)
        verdict = decide(m - hw, m + hw, margin)
        if verdict != "undecided":
            return n, verdict
    return None, "undecided"


def to_extend(decisions: Iterable[Decision], comparisons: Iterable, seeds_of: Mapping[str, int],
              n_max: int) -> list[str]:
    """Configurations that take one more seed: those of an undecided comparison that is not
    futile, below max."""
    undecided = {d.name for d in decisions if d.decision == "undecided" and not d.futile}
    out: list[str] = []
    for c in comparisons:
        if c.name in undecided:
            out += [k for k, w in c.weights.items() if w and seeds_of.get(k, 0) < n_max and k not in out]
    return out
