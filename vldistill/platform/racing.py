"""Sequential decisions over seeds (racing): which comparisons are decided, which need seeds.

Ray-free (numpy + scipy): the searcher (``platform/searcher.py``) calls it between rounds,
the report (``platform/report/decisions.py``) replays it from the rows, the unit tests simulate it.

A comparison (``search_spaces/designs.py``) is a contrast ``d_s = sum_c w_c y_{c,s}`` over
configurations, computed per seed ``s`` from the seeds that every configuration in it
shares (paired differences), signed so that positive is better in the space's mode.

The method (docs/report.md, "Racing"):

- *Looks.* A comparison is looked at after each round, at n = min, min+1, ..., max shared
  seeds; a decision, once made, stands.
- *Interval.* At a look with n seeds: the t interval ``mean(d) +- t_df(1 - a/2) s/sqrt(n)``
  at a *nominal* level ``a`` below the target ``alpha``.
- *The seed-to-seed sd* ``s`` (``variance``, default ``pooled``): when every comparison is a
  contrast over the same t >= 3 configurations (a full or fractional factorial, the 2x2
  ``default``), the configuration-by-seed residual of the two-way layout (seeds as blocks),
  ``MSE = sum r_cs^2 / ((t-1)(n-1))`` with ``r_cs = y_cs - y_c. - y_.s + y_..``, gives
  ``s = sqrt(MSE sum_c w_c^2)`` with ``df = (t-1)(n-1)``: the factorial's textbook error
  term, the residual of all t-1 orthogonal contrasts pooled (:func:`pool_of`, :func:`spread`).
  It assumes every contrast has the same seed-to-seed variance (seed and configuration
  effects add); where that fails it is optimistic (docs/report.md gives the measured cost).
  Otherwise, or with ``variance: paired``, ``s = sd(d)`` with ``df = n-1``.
- *Error control over the looks* (a correction over the planned looks): ``a`` is chosen so
  that, for Gaussian seed noise, the chance that the interval misses the true value at *any*
  of the looks min..max is ``alpha``. The t statistic's path is pivotal (its law does not
  depend on the noise's mean or variance, only on the ``q`` = t-1 contrasts pooled), so ``a``
  is the alpha-quantile of ``min_n p_n`` over simulated standard-normal paths
  (:func:`nominal_level`; 20,000 paths, seeded, cached). Fewer looks (a failed trial, a decided comparison) only lower the error.
- *Across comparisons:* Holm at every look: the undecided comparisons, ordered by how far
  their mean lies beyond the margin in standard errors ((|mean| - margin)/se), get
  ``alpha/m, alpha/(m-1), ...`` while each decides; the first that does not stops the steps
  (the rest keep that step's level for their interval).
- *Decision:* better when the interval is above ``+margin``, worse when below ``-margin``,
  equivalent when inside ``+-margin``; undecided otherwise, and "undecided at budget" once
  its configurations hold ``max`` seeds.
- *Futility* (``seeds.futility``, default 0.1): an undecided comparison whose sd has at
  least 3 degrees of freedom (4 shared seeds paired; 2 in a pooled 2x2) stops *asking* for
  seeds when its chance of a decision at ``max`` seeds, if its effect and seed-to-seed sd
  are what it shows so far (conditional power under the current trend,
  :func:`chance_to_decide`), is below ``futility`` -- below a tenth of it while the trend
  rests on fewer than 4 seeds (a mean of 2-3 seeds is too noisy to give up on more). It
  only changes which configurations get the next seed, never how a comparison is decided:
  it is evaluated again whenever its configurations get seeds for another comparison, and
  the error control above holds unchanged (stopping early only removes looks). Without it, one
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
VARIANCES = ("pooled", "paired")
# Futility is judged once the sd has 3 degrees of freedom. Paired, that is 4 seeds: from 3
# (2 df) it cost 5 points of power at effects of twice the seed noise (0.898 -> 0.850), from
# 4 it costs 2 (0.879), and still ends races near the margin after ~4.3 seeds instead of ~7.8
# (seeded simulations, 1,000 races each, min 2, max 8, futility 0.1). A pooled 2x2 has 3 df
# at 2 seeds, but its trend is then a mean of 2 seeds: judged there at the full threshold it
# cost 7 points of power (0.794 -> 0.722, effect twice the noise, max 8); at a tenth of it
# below 4 seeds, 1.4 points (0.780), and the trials fall from 21.1 to 20.0 on average there,
# from 16.3 to 10.9 with no effect, from 16 to 13.1 at max 4 (1,000 races each;
# tests/unit/test_racing.py).
FUTILITY_MIN_DF = 3
FUTILITY_MIN_SEEDS = 4  # below it: the threshold is futility * EARLY_FUTILITY
EARLY_FUTILITY = 0.1


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
def _min_p(n_min: int, n_max: int, q: int = 1, seed: int = 0) -> np.ndarray:
    """Per simulated null path, the smallest two-sided t-test p-value over looks n_min..n_max.

    A path is ``q`` independent standard-normal contrasts over seeds; the test is on the
    first, its variance the mean of the ``q`` sample variances (``q (n-1)`` degrees of
    freedom): ``q = 1`` is the paired t test, ``q = t-1`` the pooled residual of t configurations.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((PATHS, q, n_max))
    ns = np.arange(1, n_max + 1)
    mean = np.cumsum(x, axis=2) / ns
    var = ((np.cumsum(x ** 2, axis=2) - ns * mean ** 2) / np.maximum(ns - 1, 1)).mean(axis=1)
    out = np.ones(PATHS)
    for n in range(max(n_min, 2), n_max + 1):
        t = mean[:, 0, n - 1] / np.sqrt(var[:, n - 1] / n)
        out = np.minimum(out, 2 * stats.t.sf(np.abs(t), q * (n - 1)))
    return out


@functools.lru_cache(maxsize=256)
def nominal_level(alpha: float, n_min: int, n_max: int, q: int = 1) -> float:
    """The per-look level whose intervals miss with chance ``alpha`` over looks n_min..n_max
    (``q``: the contrasts whose variances are pooled, 1 for a paired difference)."""
    if n_max <= max(n_min, 2):
        return alpha  # one look: no correction
    return float(np.quantile(_min_p(max(n_min, 2), n_max, q), alpha))


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


def pool_of(comparisons: Iterable, variance: str = "pooled") -> tuple[str, ...] | None:
    """The configurations whose residual gives every comparison's variance, or None (each
    comparison's own paired variance): with ``variance="pooled"``, when all comparisons
    weigh the same t >= 3 configurations (a factorial's main effects)."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    supports = {frozenset(k for k, w in c.weights.items() if w) for c in comparisons}
    if variance != "pooled" or len(supports) != 1:
        return None
    (support,) = supports
    return tuple(sorted(support)) if len(support) >= 3 else None


@dataclasses.dataclass(frozen=True)
class Spread:
    """A comparison at a look: its paired contrast per seed, and the seed-to-seed sd ``sd`` of
    that contrast with ``q * (n - 1)`` degrees of freedom (q = 1 paired, t - 1 pooled)."""

    d: tuple[float, ...]
    sd: float
    q: int = 1

    @property
    def n(self) -> int:
        return len(self.d)

    @property
    def df(self) -> int:
        return self.q * (self.n - 1)

    @property
    def mean(self) -> float:
        return float(np.mean(self.d)) if self.d else math.nan


def _as_spread(d: Iterable[float] | Spread) -> Spread:
    if isinstance(d, Spread):
        return d
    x = tuple(map(float, d))
    return Spread(x, float(np.std(x, ddof=1)) if len(x) > 1 else 0.0)


def spread(values: Mapping[str, Mapping[int, float]], weights: Mapping[str, float], n: int | None = None,
           sign: float = 1.0, pool: tuple[str, ...] | None = None) -> Spread:
    """The comparison over its first ``n`` shared seeds (all with ``None``); with ``pool``, its
    sd from the configuration-by-seed residual of those configurations on the same seeds."""
    diffs = paired(values, weights, sign)
    seeds = list(diffs)[:n] if n is not None else list(diffs)
    d = tuple(diffs[s] for s in seeds)
    if len(d) < 2:
        return Spread(d, 0.0)
    if pool is None:
        return Spread(d, float(np.std(d, ddof=1)))
    y = np.array([[values[c][s] for s in seeds] for c in pool], dtype=float)  # t x n
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    t = len(pool)
    mse = float((resid ** 2).sum()) / ((t - 1) * (len(d) - 1))
    return Spread(d, math.sqrt(mse * sum(weights.get(c, 0.0) ** 2 for c in pool)), t - 1)


def interval(d: Iterable[float] | Spread, level: float) -> tuple[float, float, float]:
    """Mean and the two-sided t interval at ``level`` (error rate) of the differences (a
    :class:`Spread`, or plain values: their own sd)."""
    sp = _as_spread(d)
    m = sp.mean
    if sp.n < 2:
        return m, -math.inf, math.inf
    hw = _t_quantile(level, sp.df) * sp.sd / math.sqrt(sp.n)
    return m, m - hw, m + hw


def decide(low: float, high: float, margin: float) -> str:
    if low > margin:
        return "better"
    if high < -margin:
        return "worse"
    if low > -margin and high < margin:
        return "equivalent"
    return "undecided"


def _t(sp: Spread, margin: float = 0.0) -> float:
    """Distance of the mean beyond the margin, in standard errors (the Holm order)."""
    return (abs(sp.mean) - margin) / sp.sd * math.sqrt(sp.n) if sp.sd > 0 else math.inf


def chance_to_decide(d: Iterable[float] | Spread, margin: float, level: float, n_max: int) -> float:
    """The chance that one look at ``n_max`` seeds, at ``level``, decides, if the effect and the
    seed-to-seed sd are the observed ones (conditional power under the current trend).

    With n observed differences of mean m and sd s, the final mean is Normal(m, (N-n) s^2/N^2)
    and the final half-width ``t_{q(N-1)}(1 - level/2) s / sqrt(N)`` (s held fixed): the chance
    is P(final interval above +margin) + P(below -margin) + P(inside +-margin). 1.0 when there
    is nothing to project (fewer than 2 values, no spread, or n >= N).
    """
    sp = _as_spread(d)
    n, big_n = sp.n, n_max
    if n < 2 or n >= big_n or sp.sd == 0:
        return 1.0
    m, sd = sp.mean, sp.sd
    hw = _t_quantile(level, sp.q * (big_n - 1)) * sd / math.sqrt(big_n)
    spread_ = math.sqrt(big_n - n) * sd / big_n
    cdf = stats.norm.cdf
    p = cdf((m - margin - hw) / spread_) + cdf((-margin - hw - m) / spread_)
    if hw < margin:
        p += cdf((margin - hw - m) / spread_) - cdf((hw - margin - m) / spread_)
    return float(min(1.0, p))


def race(values: Mapping[str, Mapping[int, float]], comparisons: Iterable, n_min: int, n_max: int,
         margin: float, alpha: float = 0.05, sign: float = 1.0, futility: float = 0.0,
         variance: str = "pooled") -> list[Decision]:
    """Replay the looks n_min..n_max over the results so far; one :class:`Decision` each.

    Args:
        values: ``{config: {seed: metric}}`` of the finished trials.
        comparisons: objects with ``name``, ``weights`` (config -> weight) and ``note``.
        sign: -1 for a ``min`` metric (positive = better).
        futility: mark an undecided comparison (below max, its sd with 3+ degrees of
            freedom) ``futile`` when its :func:`chance_to_decide` at its last look's level is
            below this -- a tenth of this below 4 seeds (0: never).
        variance: ``pooled`` (the residual of a factorial's configurations, where
            :func:`pool_of` finds one) or ``paired`` (each comparison's own differences).
    """
    comps = list(comparisons)
    pool = pool_of(comps, variance)
    q = len(pool) - 1 if pool else 1
    shared = {c.name: len(paired(values, c.weights, sign)) for c in comps}
    out: dict[str, Decision] = {}
    levels: dict[str, float] = {}
    spreads: dict[str, Spread] = {}
    for n in range(max(n_min, 2), n_max + 1):
        open_ = [c for c in comps if c.name not in out or out[c.name].decision == "undecided"]
        ready = [c for c in open_ if shared[c.name] >= n]
        looked = {c.name: spread(values, c.weights, n, sign, pool) for c in ready}
        ready.sort(key=lambda c: -_t(looked[c.name], margin))
        stopped = False
        for j, c in enumerate(ready):
            spreads[c.name] = looked[c.name]
            levels[c.name] = nominal_level(alpha / (len(ready) - j), n_min, n_max, q)
            m, lo, hi = interval(looked[c.name], levels[c.name])
            verdict = "undecided" if stopped else decide(lo, hi, margin)
            stopped = stopped or verdict == "undecided"
            out[c.name] = Decision(c.name, verdict, m, lo, hi, n, getattr(c, "note", ""),
                                   at_budget=n >= n_max)
    for c in comps:  # fewer shared seeds than n_min: no interval yet
        if c.name not in out:
            d = list(paired(values, c.weights, sign).values())
            m = float(np.mean(d)) if d else math.nan
            out[c.name] = Decision(c.name, "undecided", m, -math.inf, math.inf, len(d),
                                   getattr(c, "note", ""))
    for name, dec in out.items():
        if (dec.decision == "undecided" and name in levels and dec.seeds < n_max
                and spreads[name].df >= FUTILITY_MIN_DF):
            chance = chance_to_decide(spreads[name], margin, levels[name], n_max)
            bar = futility if dec.seeds >= FUTILITY_MIN_SEEDS else futility * EARLY_FUTILITY
            out[name] = dataclasses.replace(dec, chance=chance, futile=chance < bar)
    return [out[c.name] for c in comps]


def seeds_to_decide(d: Iterable[float] | Spread, margin: float, level: float,
                    cap: int = 64) -> tuple[int | None, str]:
    """The fewest seeds (more than ``len(d)``, at most ``cap``) at which a one-look interval
    at ``level`` would decide, if the mean and seed-to-seed sd of ``d`` stayed as observed;
    and that decision. ``(None, "undecided")`` when no such count exists up to ``cap`` or
    ``d`` has fewer than 2 values. A projection for the report's "why undecided", not a test.
    """
    sp = _as_spread(d)
    if sp.n < 2:
        return None, "undecided"
    m, sd = sp.mean, sp.sd
    for n in range(sp.n + 1, cap + 1):
        hw = _t_quantile(level, sp.q * (n - 1)) * sd / math.sqrt(n)
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
