"""Pure statistics behind the ablation report (pandas/numpy/scipy only, no I/O, no plotting).

Every function takes plain values or a DataFrame of *completed* trials whose factor columns
hold level labels (strings) and whose metric columns hold floats, and returns numbers or a
small DataFrame, so tests can check each one against a hand computation. Conventions:

- Intervals are two-sided 95% unless ``confidence`` says otherwise.
- ``t_interval``: Student t over the n trial values (seeds and repeats are the replicates),
  ``mean +- t(1 - a/2, n - 1) * sd / sqrt(n)`` with the sample sd (ddof 1); n < 2 has no interval.
- ``welch_interval``: difference of two means with Welch's unequal-variance standard error and
  Welch-Satterthwaite degrees of freedom.
- NaN metric values (a trial that did not record the metric) are dropped per metric.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats


class Interval(NamedTuple):
    """A mean with its t-interval; ``lo``/``hi`` are NaN when n < 2."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float


class Delta(NamedTuple):
    """``mean(a) - mean(b)`` with its Welch interval; NaN bounds when a group has n < 2."""

    delta: float
    lo: float
    hi: float
    df: float
    n_a: int
    n_b: int

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.lo) and (self.lo > 0 or self.hi < 0))


def _clean(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=float)
    return a[np.isfinite(a)]


def t_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of ``values`` (NaNs dropped)."""
    a = _clean(values)
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(a.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    sd = float(a.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def welch_interval(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> Delta:
    """Difference ``mean(a) - mean(b)`` with a Welch (unequal variances) t-interval.

    When both groups have zero variance the interval collapses to the difference itself
    (the data are deterministic); when a group has fewer than 2 values it is NaN.
    """
    x, y = _clean(a), _clean(b)
    nx, ny = len(x), len(y)
    if nx == 0 or ny == 0:
        return Delta(math.nan, math.nan, math.nan, math.nan, nx, ny)
    d = float(x.mean() - y.mean())
    if nx < 2 or ny < 2:
        return Delta(d, math.nan, math.nan, math.nan, nx, ny)
    vx, vy = x.var(ddof=1) / nx, y.var(ddof=1) / ny
    se2 = vx + vy
    if se2 == 0:
        return Delta(d, d, d, math.inf, nx, ny)
    dof = se2**2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(se2)
    return Delta(d, d - half, d + half, float(dof), nx, ny)


def _ordered_levels(series: pd.Series, order: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(series.dropna().tolist()))
    if order is None:
        return seen
    return [lv for lv in order if lv in seen] + [lv for lv in seen if lv not in order]


def level_stats(df: pd.DataFrame, factor: str, metric: str, order: Sequence[str] | None = None,
                confidence: float = 0.95) -> pd.DataFrame:
    """Mean and t-interval of ``metric`` per level of ``factor`` (marginal over other factors).

    Returns:
        Columns ``level, n, mean, sd, lo, hi``; one row per level present, in ``order``.
    """
    rows = []
    for lv in _ordered_levels(df[factor], order):
        iv = t_interval(df.loc[df[factor] == lv, metric], confidence)
        rows.append({"level": lv, "n": iv.n, "mean": iv.mean, "sd": iv.sd, "lo": iv.lo, "hi": iv.hi})
    return pd.DataFrame(rows, columns=["level", "n", "mean", "sd", "lo", "hi"])


def delta_vs_baseline(df: pd.DataFrame, factor: str, metric: str, baseline: str,
                      order: Sequence[str] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Welch difference of every non-baseline level of ``factor`` to its baseline level.

    Returns:
        Columns ``level, n, n_baseline, delta, lo, hi, df, excludes_zero`` (``delta`` = level
        mean - baseline mean); empty when the baseline level has no trial.
    """
    cols = ["level", "n", "n_baseline", "delta", "lo", "hi", "df", "excludes_zero"]
    base = df.loc[df[factor] == baseline, metric]
    if base.notna().sum() == 0:
        return pd.DataFrame([], columns=cols)
    rows = []
    for lv in _ordered_levels(df[factor], order):
        if lv == baseline:
            continue
        d = welch_interval(df.loc[df[factor] == lv, metric], base, confidence)
        rows.append({"level": lv, "n": d.n_a, "n_baseline": d.n_b, "delta": d.delta, "lo": d.lo,
                     "hi": d.hi, "df": d.df, "excludes_zero": d.excludes_zero})
    return pd.DataFrame(rows, columns=cols)


def bin_numeric(values: pd.Series, max_bins: int = 5, max_exact: int = 4,
                fmt: str = "{:.3g}") -> tuple[pd.Series, pd.DataFrame]:
    """Levels for a numeric factor: its values if few, else quantile bins of distinct values.

    With at most ``max_exact`` distinct values every value is its own level. Otherwise the
    sorted *distinct* values are split into ``min(max_bins, ceil(k / 2))`` consecutive groups
    of near-equal size (quantile bins over distinct values, so all seeds of one configuration
    land in one bin and each bin spans at least two sampled values).

    Returns:
        (labels aligned with ``values`` (NaN stays NaN), bins with columns ``label, lo, hi``).
    """
    distinct = np.sort(pd.unique(values.dropna().astype(float)))
    if len(distinct) <= max_exact:
        groups = [np.array([v]) for v in distinct]
    else:
        groups = np.array_split(distinct, min(max_bins, math.ceil(len(distinct) / 2)))
    rows, lookup = [], {}
    for g in groups:
        lo, hi = float(g[0]), float(g[-1])
        label = fmt.format(lo) if lo == hi else f"[{fmt.format(lo)}, {fmt.format(hi)}]"
        rows.append({"label": label, "lo": lo, "hi": hi})
        lookup.update({float(v): label for v in g})
    labels = values.map(lambda v: lookup.get(float(v)) if pd.notna(v) else np.nan)
    return labels, pd.DataFrame(rows, columns=["label", "lo", "hi"])


def pareto_front(df: pd.DataFrame, objective: str, cost: str, maximize: bool = True) -> pd.DataFrame:
    """Rows of ``df`` not dominated in (``objective``, ``cost``), cheapest first.

    A row is dominated when another row is at least as good on both and strictly better on
    one (higher objective if ``maximize``, always lower cost). Rows with NaN in either are
    ignored; exact ties are all kept.
    """
    d = df.dropna(subset=[objective, cost])
    obj = d[objective].to_numpy(float) * (1 if maximize else -1)
    c = d[cost].to_numpy(float)
    keep = []
    for i in range(len(d)):
        better_eq = (obj >= obj[i]) & (c <= c[i])
        strictly = (obj > obj[i]) | (c < c[i])
        keep.append(not np.any(better_eq & strictly))
    return d[np.array(keep, dtype=bool)].sort_values([cost, objective], ascending=[True, not maximize])


def eta_squared(df: pd.DataFrame, factors: Sequence[str], metric: str) -> pd.Series:
    """One-way eta squared per factor: between-level sum of squares / total sum of squares.

    Each factor is taken alone (marginal), so with an unbalanced design the shares need not
    add up to the explained variance of a joint model.
    """
    d = df.dropna(subset=[metric])
    y = d[metric].to_numpy(float)
    total = float(((y - y.mean()) ** 2).sum())
    out = {}
    for f in factors:
        g = d.groupby(f, dropna=True)[metric]
        between = float((g.count() * (g.mean() - y.mean()) ** 2).sum())
        out[f] = between / total if total > 0 else 0.0
    return pd.Series(out, dtype=float, name=metric)


def interaction_table(df: pd.DataFrame, factors: Sequence[str], metric: str) -> pd.DataFrame:
    """Two-way interaction sum of squares for every pair of factors, largest first.

    For factors A and B with cell means m_ab (n_ab trials), marginal means m_a, m_b and grand
    mean m: ``SS_AB = sum n_ab (m_ab - m_a - m_b + m)^2`` over the observed cells. This is the
    exact ANOVA interaction term for a balanced design and a screening approximation
    otherwise. ``share`` is SS_AB over the total sum of squares of the metric.

    Returns:
        Columns ``factor_a, factor_b, ss, share, cells, possible_cells``.
    """
    cols = ["factor_a", "factor_b", "ss", "share", "cells", "possible_cells"]
    d = df.dropna(subset=[metric, *factors])
    if d.empty:
        return pd.DataFrame([], columns=cols)
    grand = d[metric].mean()
    total = float(((d[metric] - grand) ** 2).sum())
    rows = []
    for a, b in itertools.combinations(factors, 2):
        ma = d.groupby(a)[metric].mean()
        mb = d.groupby(b)[metric].mean()
        cell = d.groupby([a, b])[metric].agg(["mean", "count"]).reset_index()
        resid = cell["mean"] - cell[a].map(ma) - cell[b].map(mb) + grand
        ss = float((cell["count"] * resid**2).sum())
        rows.append({"factor_a": a, "factor_b": b, "ss": ss, "share": ss / total if total > 0 else 0.0,
                     "cells": len(cell), "possible_cells": d[a].nunique() * d[b].nunique()})
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values("ss", ascending=False, kind="stable").reset_index(drop=True)


def best_combination(df: pd.DataFrame, factors: Sequence[str], metric: str,
                     maximize: bool = True) -> dict[str, str] | None:
    """Levels of ``factors`` whose trials have the best mean ``metric`` (ties: first seen)."""
    d = df.dropna(subset=[metric])
    if d.empty or not factors:
        return None
    means = d.groupby(list(factors), sort=False, dropna=False)[metric].mean()
    key = means.idxmax() if maximize else means.idxmin()
    key = key if isinstance(key, tuple) else (key,)
    return dict(zip(factors, key))


def loco_effects(df: pd.DataFrame, best: dict[str, str], components: dict[str, str],
                 metric: str, confidence: float = 0.95,
                 dependents: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Leave-one-component-out: the effect of setting each loss weight to 0 in ``best``.

    Args:
        df: Completed trials with level-label columns for every key of ``best``.
        best: The combination to start from, factor -> level label (numeric factors left out
            are pooled over).
        components: Weight factor -> the label of its zero level.
        metric: Metric column.
        dependents: Component -> factors that only exist while it is on (``when``); they are
            not matched once the component is removed. A NaN level in ``best`` matches NaN.

    Returns:
        Columns ``component, best_level, n_best, n_without, best_mean, without_mean, delta,
        lo, hi, excludes_zero`` with ``delta`` = mean without the term - mean of ``best``
        (negative: the term helped); NaN where the space has no such trials. Components
        already at 0 in ``best`` are left out.
    """
    cols = ["component", "best_level", "n_best", "n_without", "best_mean", "without_mean",
            "delta", "lo", "hi", "excludes_zero"]

    def match(target: dict[str, str]) -> pd.Series:
        mask = pd.Series(True, index=df.index)
        for f, lv in target.items():
            mask &= df[f].isna() if pd.isna(lv) else df[f] == lv
        return df.loc[mask, metric]

    best_vals = match(best)
    rows = []
    for comp, zero in components.items():
        if comp not in best or best[comp] == zero:
            continue
        target = {k: v for k, v in best.items() if k not in (dependents or {}).get(comp, ())}
        without = match({**target, comp: zero})
        d = welch_interval(without, best_vals, confidence)
        rows.append({"component": comp, "best_level": best[comp], "n_best": d.n_b,
                     "n_without": d.n_a, "best_mean": _clean(best_vals).mean() if d.n_b else math.nan,
                     "without_mean": _clean(without).mean() if d.n_a else math.nan,
                     "delta": d.delta, "lo": d.lo, "hi": d.hi, "excludes_zero": d.excludes_zero})
    return pd.DataFrame(rows, columns=cols)


def compute_hours(df: pd.DataFrame) -> dict[str, float]:
    """CPU and GPU hours: sum of ``wall_seconds * cpu (or gpu) * workers / 3600`` over trials.

    Expects columns ``wall_seconds`` and ``resources.cpu``/``resources.gpu``/
    ``resources.workers``; missing values count as 0 seconds / 0 devices / 1 worker.
    """
    def col(name: str, default: float) -> pd.Series:
        s = df[name] if name in df else pd.Series(default, index=df.index)
        return pd.to_numeric(s, errors="coerce").fillna(default)

    wall, workers = col("wall_seconds", 0.0), col("resources.workers", 1.0)
    return {"cpu_hours": float((wall * col("resources.cpu", 0.0) * workers).sum() / 3600),
            "gpu_hours": float((wall * col("resources.gpu", 0.0) * workers).sum() / 3600)}


def spearman(x: Iterable[float], y: Iterable[float]) -> tuple[float, int]:
    """Spearman rank correlation over pairs where both are finite; (NaN, n) if n < 3."""
    a, b = np.asarray(list(x), float), np.asarray(list(y), float)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan, n
    return float(stats.spearmanr(a[ok], b[ok]).statistic), n
