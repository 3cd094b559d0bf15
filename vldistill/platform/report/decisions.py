"""The report's first section: one line per comparison the space defines, and its effects plot.

The comparisons are the design's (each LOCO row against the base, each main effect of a
factorial with its aliases, each point against the base) or, for a grid with baselines,
main effects / each configuration against the baseline (``search_spaces/designs.py``).
The decisions are replayed from the rows with the racing procedure of
``platform/racing.py``: for a raced space its looks min..max; for fixed seeds one look at
all seeds (margin 0.01 unless the space races). Ray-free.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from vldistill.platform import racing
from vldistill.platform.report.render import Section, Table, _figure, _save

log = logging.getLogger(__name__)
COLOURS = {"better": "#2f855a", "worse": "#c53030", "equivalent": "#2b6cb0", "undecided": "#718096"}
DEFAULT_MARGIN = 0.01


def config_values(space, done: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    """``{config name: {seed: metric}}`` of the completed trials."""
    from vldistill.search_spaces.designs import config_key, space_points

    points = space_points(space)
    by_key = {config_key(p.assignment): p.name for p in points}
    out: dict[str, dict[int, float]] = {}
    for _, r in done.iterrows():
        if space.design is not None:
            name = r.get("design_point")
        else:
            name = by_key.get(config_key({k: r.get(k) for k in space.params}))
        if name is None or pd.isna(r.get(metric)) or pd.isna(r.get("seed")):
            continue
        out.setdefault(name, {})[int(r["seed"])] = float(r[metric])
    return out


def comparison_decisions(space, done: pd.DataFrame, metric: str, mode: str) -> list[racing.Decision]:
    """The decisions the report prints (see the module doc); [] without comparisons."""
    from vldistill.search_spaces.designs import space_comparisons

    comps = space_comparisons(space)
    if not comps:
        return []
    r = space.racing
    lo, hi = (r.min, r.max) if r else (len(space.seeds), len(space.seeds))
    margin, alpha = (r.margin, r.alpha) if r else (DEFAULT_MARGIN, 0.05)
    values = config_values(space, done, metric)
    return racing.race(values, comps, lo, hi, margin, alpha, -1.0 if mode == "min" else 1.0,
                       r.futility if r else 0.0, r.variance if r else "pooled")


def why_undecided(space, done: pd.DataFrame, metric: str, mode: str, decisions: list[racing.Decision],
                  margin: float, alpha: float) -> list[str]:
    """One line per undecided comparison: how wide its interval is and why, and how many seeds
    would decide it if its mean and seed-to-seed sd stayed as observed (a projection at one
    look and alpha/m, the strictest Holm step; ``racing.seeds_to_decide``)."""
    from vldistill.search_spaces.designs import space_comparisons

    comps = {c.name: c for c in space_comparisons(space)}
    values = config_values(space, done, metric)
    level = alpha / max(len(decisions), 1)
    pool = racing.pool_of(comps.values(), space.racing.variance if space.racing else "pooled")
    out = []
    for d in decisions:
        if d.decision != "undecided" or d.name not in comps:
            continue
        x = racing.spread(values, comps[d.name].weights, d.seeds, -1.0 if mode == "min" else 1.0, pool)
        if x.n < 2:
            out.append(f"why {d.name} is undecided: {x.n} shared seed(s), no interval yet.")
            continue
        sd = x.sd
        what = (f"seed-to-seed sd {sd:.4f}, pooled over the {len(pool)} configurations' residual, "
                f"{x.df} df" if pool else f"seed-to-seed sd of the paired difference {sd:.4f}")
        line = f"why {d.name} is undecided: at {x.n} seeds its interval is ±{(d.high - d.low) / 2:.4f} ({what}); "
        n, verdict = racing.seeds_to_decide(x, margin, level)
        gap = abs(abs(d.estimate) - margin)  # how far the mean lies from the margin
        gap_sd = gap / sd if sd > 0 else 0.0
        if n is not None and n <= 16:
            line += (f"at this mean and sd about {n} seeds would decide it ({verdict}): race it, "
                     f"e.g. `seeds: {{min: 2, max: {max(n + 2, 8)}, margin: {margin:g}}}`.")
        elif n is not None:
            line += (f"at this mean and sd about {n} seeds would decide it ({verdict}): more than a "
                     f"race should spend; its mean ({d.estimate:+.4f}) lies only {gap_sd:.2f} sd from "
                     f"the ±{margin:g} margin (a wider margin, or less seed-to-seed noise, decides it sooner).")
        else:
            line += (f"its mean ({d.estimate:+.4f}) lies {gap:.4f} from the ±{margin:g} margin, {gap_sd:.2f} sd: "
                     "no run of up to 64 seeds at this sd would decide it (a wider margin, or less "
                     "seed-to-seed noise, would).")
        out.append(line)
    return out


def plot_effects(path: Path, decisions: list[racing.Decision], metric: str, margin: float) -> None:
    """One row per comparison: its estimate and interval, coloured by its decision."""
    fig, (ax,) = _figure(1, w=7.5, h=1.0 + 0.45 * max(2, len(decisions)), left=2.6)
    for i, d in enumerate(reversed(decisions)):
        lo = d.low if math.isfinite(d.low) else d.estimate
        hi = d.high if math.isfinite(d.high) else d.estimate
        ax.plot([lo, hi], [i, i], color=COLOURS[d.decision], lw=2.5)
        ax.plot([d.estimate], [i], "o", color=COLOURS[d.decision])
    ax.set_yticks(range(len(decisions)))
    ax.set_yticklabels([f"{d.name} ({d.decision}, {d.seeds} seeds)" for d in reversed(decisions)],
                       fontsize=8)
    for x in (-margin, margin):
        ax.axvline(x, color="#a0aec0", ls="--", lw=1)
    ax.axvline(0, color="#2d3748", lw=0.8)
    ax.set_xlabel(f"effect on {metric} (positive = better)")
    ax.grid(alpha=.3, axis="x")
    _save(fig, path)


def section_comparisons(sw, plots: Path) -> Section:
    """The decisions: one line per comparison, its interval and seeds; the effects plot."""
    from vldistill.search_spaces.loader import SearchSpaceError, load_search_space

    sec = Section("decisions", "Decisions")
    try:
        space = load_search_space(str(sw.dir / "search_space.yaml"))
    except SearchSpaceError as e:
        sec.text.append(f"The search space could not be read ({e}): no comparisons.")
        return sec
    metric, mode = sw.primary
    decisions = comparison_decisions(space, sw.done, metric, mode) if metric in sw.done else []
    if not decisions:
        sec.text.append("This space defines no comparisons (give a design, or a baseline for "
                        "every param of a grid).")
        return sec
    r = space.racing
    margin = r.margin if r else DEFAULT_MARGIN
    if r is None:
        how = f"fixed {len(space.seeds)} seeds, one look"
    else:
        how = f"raced: seeds {r.min}-{r.max}, a seed per round to undecided comparisons"
        if r.futility:
            early = r.futility * racing.EARLY_FUTILITY
            how += (f" (stopped for futility below a {r.futility:.0%} chance of a decision by {r.max}; "
                    f"{early:.0%} before {racing.FUTILITY_MIN_SEEDS} seeds)")
    from vldistill.search_spaces.designs import space_comparisons

    pool = racing.pool_of(space_comparisons(space), r.variance if r else "pooled")
    sd = (f"their seed-to-seed sd pooled over the {len(pool)} configurations' residual "
          f"(seeds as blocks; `seeds.variance: paired` uses each comparison's own)" if pool
          else "each comparison's seed-to-seed sd from its own differences")
    sec.text.append(
        f"`{metric}` ({mode}); {how}; margin ±{margin:g}; paired differences over shared seeds, "
        f"{sd}; t intervals corrected over the planned looks and by Holm across comparisons "
        f"(alpha {r.alpha if r else 0.05:g}; docs/report.md, Racing). Positive = better.")
    design = space.design
    if design is not None and design.defining_relation:
        sec.text.append(f"Fractional design, resolution {design.resolution}: I = "
                        + " = ".join(design.defining_relation) + ". Main effects are aliased as "
                        "stated per row.")
    sec.text += [f"- {d.line()}" for d in decisions]
    why = why_undecided(space, sw.done, metric, mode, decisions, margin, r.alpha if r else 0.05)
    if why:
        sec.text.append("Undecided, and what would decide it (a projection: the same mean and seed "
                        "noise, one look at alpha/m):")
        sec.text += [f"- {w}" for w in why]
    sec.tables.append(Table("decisions", "Comparisons", pd.DataFrame([{
        "comparison": d.name, "decision": d.status,
        "effect": f"{d.estimate:+.4f}", "interval": f"[{d.low:+.4f}, {d.high:+.4f}]",
        "seeds": d.seeds, "what": d.note} for d in decisions])))
    path = plots / "effects.png"
    plot_effects(path, decisions, metric, margin)
    sec.plots.append(("Effects: estimate and interval per comparison, coloured by decision", path))
    return sec
