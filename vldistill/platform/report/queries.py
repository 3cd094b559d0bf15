"""What every section asks of a loaded sweep: its main metrics, the baseline set, the best
configuration per metric (in the metric's direction), the teacher's value and the chance /
attribute-only floors of a metric's task.
"""

from __future__ import annotations

import math

import pandas as pd

from vldistill.platform.report.loading import MAIN_METRICS, Sweep
from vldistill.platform.report.render import fnum


def _task(metric: str) -> str | None:
    if metric.startswith(("base_acc", "shift_acc")):
        return "base"  # shifted domains are classified among the base classes
    if "novel_acc" in metric:
        return "novel"
    return None


def floors_text(sw: Sweep, metric: str) -> str:
    """Chance and attribute-only floors of the metric's task, e.g. ``chance 0.056; colour 0.278``."""
    task = _task(metric)
    if task is None:
        return "—"
    parts = []
    for c in sorted(sw.done.columns):
        if c == f"chance/{task}" or (c.startswith("floor/") and c.endswith(f"/{task}")):
            v = pd.to_numeric(sw.done[c], errors="coerce").mean()
            name = "chance" if c.startswith("chance/") else c.split("/")[1]
            parts.append(f"{name} {fnum(v)}")
    return "; ".join(parts) or "—"


def teacher_value(sw: Sweep, metric: str) -> float:
    c = f"teacher/{metric}"
    return float(pd.to_numeric(sw.done[c], errors="coerce").mean()) if c in sw.done else math.nan


def main_metrics(sw: Sweep) -> list[str]:
    out = [m for m in MAIN_METRICS if m in sw.metrics]
    return out + [m for m, _ in sw.objectives if m in sw.metrics and m not in out]


def config_trials(sw: Sweep, config: str | None, metric: str) -> pd.Series:
    if config is None:
        return pd.Series(dtype=float)
    return sw.done.loc[sw.done["config"] == config, metric]


def baseline_mask(sw: Sweep) -> pd.Series | None:
    """Completed trials of the baseline configuration; None when no factor has a baseline.

    A design sweep's baseline is its base point (``Sweep.base_point``).

    Categorical factors must sit at their baseline level, numeric factors with a baseline in
    the bin that holds it (a sampled float rarely equals the baseline exactly), factors
    without a baseline are free. Conditional factors (``when``) inactive in a trial are free.
    """
    if sw.base_point is not None and "design_point" in sw.done:
        return sw.done["design_point"] == sw.base_point  # a design: its base point
    with_base = [f for f in sw.factors if f.baseline is not None]
    if not with_base:
        return None
    mask = pd.Series(True, index=sw.done.index)
    for f in with_base:
        mask &= (sw.done[f.col] == f.baseline) | (sw.done[f.col].isna() & bool(f.spec.get("when")))
    return mask


def baseline_configs(sw: Sweep) -> list[str]:
    """Configuration ids in the baseline set, most trials first."""
    mask = baseline_mask(sw)
    return [] if mask is None else sw.done.loc[mask, "config"].value_counts().index.tolist()


def metric_mode(sw: Sweep, metric: str) -> str:
    return dict(sw.objectives).get(metric, "min" if metric == "M_vlalign" else "max")


def best_config(sw: Sweep, metric: str) -> str | None:
    c = sw.configs.dropna(subset=[metric]) if metric in sw.configs else pd.DataFrame()
    if c.empty:
        return None
    i = c[metric].idxmax() if metric_mode(sw, metric) == "max" else c[metric].idxmin()
    return str(c.loc[i, "config"])


def eval_sizes_text(sw: Sweep) -> str | None:
    """The evaluation sets' sizes the trials recorded (``n/*``), e.g. ``novel 360, base 360,
    shift/sketch 120``; a range where trials differ; None when no trial recorded them."""
    cols = [c for c in sw.done.columns if c.startswith("n/") and c != "n/train"]
    if not cols:
        return None
    order = sorted(cols, key=lambda c: (not c.startswith("n/novel"), not c.startswith("n/base"), c))
    parts = []
    for c in order:
        v = pd.to_numeric(sw.done[c], errors="coerce").dropna()
        if v.empty:
            continue
        lo, hi = int(v.min()), int(v.max())
        parts.append(f"{c[2:]} {lo:,}" if lo == hi else f"{c[2:]} {lo:,}-{hi:,}")
    return ", ".join(parts) or None
