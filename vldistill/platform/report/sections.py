"""The aggregated ablation report of one sweep directory (never imports ray).

``build_report(sweep_dir)`` reads ``search_space.yaml``, ``trials.jsonl`` (last line per
``trial_id`` wins) and, when present, the Optuna journal, and writes ``report.md``,
a self-contained ``report.html``, ``trials.csv``, ``levels.csv`` and ``plots/*.png``. The
statistics live in ``report_stats`` (pure functions), the rendering in ``report_html``; this
module loads the rows, turns every swept key into a *factor* with level labels, assembles the
eight sections (see docs/report.md) as tables of formatted strings, and logs the same tables
and plots to W&B on request.

Conventions: only ``completed`` trials enter means, intervals, importance and fronts;
``pruned`` trials (their metrics are last intermediate values) and ``failed`` ones are listed
with reasons and counted in the compute hours. Accuracies are maximised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from vldistill.platform.report import render as rh
from vldistill.platform.report import stats as rs
from vldistill.platform.report.render import Section, Table, fcost, fdelta, fiv, fnum
from vldistill.trainers.strict_files import DuplicateKeyError, read_yaml

log = logging.getLogger(__name__)

CATEGORICAL = ("choice", "grid")
NUMERIC = ("uniform", "loguniform", "int", "randint", "quniform", "qloguniform", "lograndint")
REPR_METRICS = ("M_rel", "M_neigh", "M_vlalign")
COSTS = ("student_params", "student_flops", "student_latency_ms", "student_latency_ms_b8")
NON_METRIC_PREFIXES = ("teacher/", "chance/", "floor/", "n/")
MAIN_METRICS = ("novel_acc", "shift_acc", "hmean", "base_acc")
STATUS_ORDER = ("completed", "pruned", "failed")
PLOT_NAMES = ("effects", "importance", "pareto", "interaction_top", "representation")


class ReportError(Exception):
    """The sweep directory cannot be reported on (missing or malformed input)."""


@dataclass
class Factor:
    """One swept key: its level labels (bins for continuous values) and baseline label."""

    key: str
    short: str
    kind: str  # "categorical" | "numeric"
    spec: dict
    levels: list[str] = field(default_factory=list)
    baseline: str | None = None
    zero: str | None = None  # label of the level whose value is 0 (loss weights)
    log: bool = False
    binned: bool = False

    @property
    def col(self) -> str:
        """Column holding this factor's level label in ``Sweep.done``."""
        return f"{self.key}@level"


@dataclass
class Sweep:
    """Everything the sections need, loaded once."""

    dir: Path
    name: str
    objectives: list[tuple[str, str]]  # (metric, "max" | "min")
    factors: list[Factor]
    trials: pd.DataFrame  # every trial (last line wins), flat columns, plus "config"
    done: pd.DataFrame  # completed trials, plus level-label columns
    metrics: list[str]  # metric columns for statistics, in report order
    configs: pd.DataFrame  # one row per configuration of completed trials (means, costs)
    notes: list[str]

    @property
    def primary(self) -> tuple[str, str]:
        """The first objective that trials recorded (else the first metric they did)."""
        for m, mode in self.objectives:
            if m in self.metrics:
                return m, mode
        return (self.metrics[0], "max") if self.metrics else self.objectives[0]


# ---------------------------------------------------------------- loading


def _fmt_value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def _isna(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _same(a, b) -> bool:
    """Equality of YAML values; ``true`` is not ``1`` and floats compare with a tolerance."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _norm(v):
    """Hashable, rounding-stable form of a parameter value (for grouping configurations)."""
    if _isna(v):
        return None
    if isinstance(v, float):
        return float(f"{v:.12g}")
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def short_names(keys: list[str]) -> dict[str, str]:
    """Shortest dotted suffix of each key that is unique among ``keys``."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for i in range(len(parts) - 1, -1, -1):
            cand = ".".join(parts[i:])
            if sum(1 for o in keys if o == cand or o.endswith("." + cand)) == 1:
                out[k] = cand
                break
        else:
            out[k] = k
    return out


def read_trials(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of ``trials.jsonl`` with the last line per ``trial_id`` winning, plus notes."""
    notes, rows = [], {}
    if not path.exists():
        return [], [f"`{path.name}` not found: no trials."]
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.pop(row["trial_id"], None)  # re-insert: order of the winning line
            rows[row["trial_id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            notes.append(f"line {i} of `{path.name}` skipped ({type(e).__name__}).")
    return list(rows.values()), notes


def _flatten(row: dict) -> dict:
    res = row.get("resources") or {}
    flat = {"trial_id": row["trial_id"], "status": row.get("status", "unknown"),
            "error": row.get("error"), "seed": row.get("seed"), "epochs": row.get("epochs"),
            "wall_seconds": row.get("wall_seconds"), "resources.cpu": res.get("cpu"),
            "resources.gpu": res.get("gpu"), "resources.workers": res.get("workers")}
    flat.update({f"param:{k}": v for k, v in (row.get("params") or {}).items()})
    flat.update({f"metric:{k}": v for k, v in (row.get("metrics") or {}).items()})
    flat["planned_epochs"] = (row.get("config") or {}).get("optim.epochs")
    flat["design_point"] = row.get("design_point")
    return flat


def _objectives(space: dict) -> list[tuple[str, str]]:
    metric, mode = space.get("metric", "novel_acc"), space.get("mode", "max")
    metrics = metric if isinstance(metric, list) else [metric]
    modes = mode if isinstance(mode, list) else [mode] * len(metrics)
    return list(zip(metrics, modes))


def _make_factor(key: str, short: str, spec, done: pd.DataFrame) -> Factor:
    spec = spec if isinstance(spec, dict) else {"choice": list(spec)}
    kind_key = next((k for k in (*CATEGORICAL, *NUMERIC) if k in spec), None)
    raw = done[key] if key in done else pd.Series(dtype=object)
    if kind_key in NUMERIC:
        f = Factor(key, short, "numeric", spec, log=kind_key.startswith("log") or bool(spec.get("log")))
        labels, bins = rs.bin_numeric(pd.to_numeric(raw, errors="coerce"))
        done[f.col] = labels
        f.levels, f.binned = bins["label"].tolist(), len(bins) and (bins["lo"] != bins["hi"]).any()
        if "baseline" in spec and len(bins):
            b = float(spec["baseline"])
            hit = bins[(bins["lo"] <= b) & (bins["hi"] >= b)]
            f.baseline = hit["label"].iloc[0] if len(hit) else None
        return f
    choices = list(spec.get(kind_key, [])) if kind_key else []

    def canon(v):
        return next((c for c in choices if _same(c, v)), v)

    f = Factor(key, short, "categorical", spec)
    # A conditional parameter (``when``) is None where inactive: those trials have no level.
    missing = np.nan if spec.get("when") else ("None" if any(c is None for c in choices) else "unset")
    done[f.col] = raw.map(lambda v: missing if _isna(v) else _fmt_value(canon(v)))
    f.levels = [_fmt_value(c) for c in choices]
    f.levels += [lv for lv in dict.fromkeys(done[f.col].dropna()) if lv not in f.levels]
    if "baseline" in spec:
        f.baseline = _fmt_value(canon(spec["baseline"]))
    zero = next((c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)
                 and c == 0), None)
    f.zero = _fmt_value(zero) if zero is not None else None
    return f


def _metric_order(cols: list[str], objectives: list[tuple[str, str]]) -> list[str]:
    present = set(cols)
    order = (["novel_acc"] + sorted(c for c in present if c.startswith("novel_acc/"))
             + ["fewshot_novel_acc", "shift_acc"] + sorted(c for c in present if c.startswith("shift_acc/"))
             + ["hmean", "base_acc"] + [m for m, _ in objectives] + list(REPR_METRICS))
    return [m for m in dict.fromkeys(order) if m in present]


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read a sweep directory into a :class:`Sweep` (raises :class:`ReportError`)."""
    d = Path(sweep_dir).expanduser().resolve()
    if not (d / "search_space.yaml").is_file():
        raise ReportError(f"{d}: no search_space.yaml (is this a sweep directory?)")
    try:
        space = read_yaml(d / "search_space.yaml") or {}
    except DuplicateKeyError as e:
        raise ReportError(str(e)) from None
    except yaml.YAMLError as e:
        raise ReportError(f"{d / 'search_space.yaml'}: {e}") from None
    rows, notes = read_trials(d / "trials.jsonl")
    trials = pd.DataFrame([_flatten(r) for r in rows])
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "status", "error", "seed", "epochs",
                                       "wall_seconds", "resources.cpu", "resources.gpu",
                                       "resources.workers", "planned_epochs"])
    params = dict(space.get("params") or {})
    for c in trials.columns:  # swept keys the space file does not list: treat as choices
        if c.startswith("param:") and c[6:] not in params:
            params[c[6:]] = {"choice": list(dict.fromkeys(trials[c].dropna().map(_norm)))}
    trials = trials.rename(columns=lambda c: c.split(":", 1)[1] if c.startswith("param:") else c)
    metric_cols = [c for c in trials.columns if c.startswith("metric:")]
    trials = trials.rename(columns={c: (c[7:] if c[7:] not in params else c) for c in metric_cols})
    keys = list(params)
    for k in keys:
        if k not in trials:
            trials[k] = None
    cfg_key = trials[keys].apply(lambda r: tuple(_norm(v) for v in r), axis=1) if len(trials) else []
    ids = {k: f"c{i + 1}" for i, k in enumerate(dict.fromkeys(cfg_key))}
    trials["config"] = [ids[k] for k in cfg_key]
    done = trials[trials["status"] == "completed"].copy()
    names = short_names(keys)
    factors = [_make_factor(k, names[k], params[k], done) for k in keys]
    objectives = _objectives(space)
    stat_cols = [c for c in done.columns if c not in COSTS and not c.startswith(NON_METRIC_PREFIXES)
                 and c in {m[7:] if m[7:] not in params else m for m in metric_cols}]
    for c in stat_cols + [c for c in COSTS if c in done]:
        done[c] = pd.to_numeric(done[c], errors="coerce")
    metrics = _metric_order(stat_cols, objectives)
    missing = [m for m, _ in objectives if m not in metrics]
    if missing and len(done):
        notes.append(f"objective metric(s) {', '.join(missing)} not recorded by any completed trial.")
    sweep = Sweep(d, str(space.get("name") or d.name), objectives, factors, trials, done, metrics,
                  pd.DataFrame(), notes)
    sweep.configs = _config_table(sweep)
    return sweep


def _config_table(sw: Sweep) -> pd.DataFrame:
    """Per configuration of completed trials: factor values, n, metric means, cost means."""
    cols = [c for c in (*sw.metrics, *COSTS) if c in sw.done]
    if sw.done.empty:
        return pd.DataFrame(columns=["config", "n", "label", *cols])
    g = sw.done.groupby("config", sort=False)
    out = g[cols].mean()
    out.insert(0, "n", g.size())
    first = g.first()
    out.insert(1, "label", [describe(sw, first.loc[c]) for c in out.index])
    return out.reset_index()


def describe(sw: Sweep, row) -> str:
    """``short=value`` for every factor of a trial row."""
    return ", ".join(f"{f.short}={_fmt_value(row.get(f.key))}" for f in sw.factors)


# ---------------------------------------------------------------- formatting


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()


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


def _main_metrics(sw: Sweep) -> list[str]:
    out = [m for m in MAIN_METRICS if m in sw.metrics]
    return out + [m for m, _ in sw.objectives if m in sw.metrics and m not in out]


def _config_trials(sw: Sweep, config: str | None, metric: str) -> pd.Series:
    if config is None:
        return pd.Series(dtype=float)
    return sw.done.loc[sw.done["config"] == config, metric]


def baseline_mask(sw: Sweep) -> pd.Series | None:
    """Completed trials of the baseline configuration; None when no factor has a baseline.

    Categorical factors must sit at their baseline level, numeric factors with a baseline in
    the bin that holds it (a sampled float rarely equals the baseline exactly), factors
    without a baseline are free. Conditional factors (``when``) inactive in a trial are free.
    """
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


def _mode(sw: Sweep, metric: str) -> str:
    return dict(sw.objectives).get(metric, "min" if metric == "M_vlalign" else "max")


def _best_config(sw: Sweep, metric: str) -> str | None:
    c = sw.configs.dropna(subset=[metric]) if metric in sw.configs else pd.DataFrame()
    if c.empty:
        return None
    i = c[metric].idxmax() if _mode(sw, metric) == "max" else c[metric].idxmin()
    return str(c.loc[i, "config"])


# ---------------------------------------------------------------- sections


def section_headline(sw: Sweep) -> Section:
    """(1) Best configuration per OOD metric vs the baseline configuration and the teacher."""
    sec = Section("headline", "1. Headline: best configurations vs baseline and teacher")
    if sw.done.empty:
        sec.text.append("No completed trials: nothing to compare.")
        return sec
    mask = baseline_mask(sw)
    base = baseline_configs(sw)
    free = [f.key for f in sw.factors if f.baseline is None]
    numeric = [f.key for f in sw.factors if f.baseline is not None and f.kind == "numeric"]
    sec.text.append(
        "Best configuration per metric = highest mean over its completed trials (seeds); "
        "intervals are 95% t-intervals over those trials, the difference to the baseline a 95% "
        "Welch interval (* = excludes zero). Baseline = the completed trials with every factor "
        "at its baseline"
        + (f" ({', '.join(numeric)}: in the bin holding the baseline value)" if numeric else "")
        + (f" (free: {', '.join(free)})" if free else "") + ": "
        + (", ".join(f"`{c}`" for c in base) if base else
           "none in the sweep, so no differences" if mask is not None else "no factor has a baseline") + ".")
    base_rows = sw.done[mask] if mask is not None else sw.done.iloc[:0]
    rows, used = [], list(base)
    for m in [m for m in sw.metrics if m not in REPR_METRICS]:
        best = _best_config(sw, m)
        if best is None:
            continue
        used.append(best)
        b_iv = rs.t_interval(_config_trials(sw, best, m))
        base_iv = rs.t_interval(base_rows[m])
        d = rs.welch_interval(_config_trials(sw, best, m), base_rows[m])
        teacher = teacher_value(sw, m)
        rows.append({"metric": m, "best config": best, "best mean [95% CI]": fiv(b_iv) + f" n={b_iv.n}",
                     "baseline mean [95% CI]": fiv(base_iv) + (f" n={base_iv.n}" if base_iv.n else ""),
                     "Δ best − baseline": "(is baseline)" if base == [best] else
                     fdelta(d.delta, d.lo, d.hi, d.excludes_zero),
                     "teacher (ceiling)": fnum(teacher),
                     "best / teacher": fnum(b_iv.mean / teacher, 2)
                     if teacher and math.isfinite(teacher) else "—",
                     "chance; floors": floors_text(sw, m)})
    sec.tables.append(Table("headline", "Best per metric", pd.DataFrame(rows)))
    cfg = sw.configs.set_index("config")
    crow = []
    for c in dict.fromkeys(used):
        r = cfg.loc[c]
        crow.append({"config": c + (" (baseline)" if c in base else ""), "configuration": r["label"],
                     "trials": int(r["n"]),
                     **{k.replace("student_", ""): fcost(k, r.get(k)) for k in COSTS if k in cfg}})
    sec.tables.append(Table("headline_configs", "Configurations above and the student's cost",
                            pd.DataFrame(crow)))
    pm, _ = sw.primary
    best = _best_config(sw, pm)
    if best:
        sec.text.append(f"Best by the sweep objective `{pm}`: `{best}` ({cfg.loc[best, 'label']}).")
    return sec


def _factor_tables(sw: Sweep, f: Factor, levels_rows: list[dict]) -> Table:
    counts = sw.done[f.col].value_counts()
    lvls = [lv for lv in f.levels if lv in counts.index]
    rows = []
    for m in sw.metrics:
        st = rs.level_stats(sw.done, f.col, m, lvls).set_index("level")
        dl = (rs.delta_vs_baseline(sw.done, f.col, m, f.baseline, lvls).set_index("level")
              if f.baseline in lvls else pd.DataFrame())
        row = {"metric": m}
        for lv in lvls:
            s = st.loc[lv]
            iv = rs.Interval(s["mean"], s["lo"], s["hi"], int(s["n"]), s["sd"])
            cell = fiv(iv) + (f" (n={iv.n})" if iv.n != counts[lv] and iv.n > 1 else "")
            row[f"{lv}{' (baseline)' if lv == f.baseline else ''} n={counts[lv]}"] = cell
            rec = {"factor": f.key, "metric": m, "level": lv, "baseline": lv == f.baseline,
                   "n": iv.n, "mean": iv.mean, "sd": iv.sd, "lo": iv.lo, "hi": iv.hi}
            if lv in dl.index:
                d = dl.loc[lv]
                rec.update({"delta": d["delta"], "delta_lo": d["lo"], "delta_hi": d["hi"],
                            "delta_df": d["df"], "excludes_zero": bool(d["excludes_zero"])})
            levels_rows.append(rec)
        for lv in dl.index:
            d = dl.loc[lv]
            row[f"Δ {lv} − {f.baseline}"] = fdelta(d["delta"], d["lo"], d["hi"], bool(d["excludes_zero"]))
        row["teacher"] = fnum(teacher_value(sw, m))
        row["chance; floors"] = floors_text(sw, m)
        rows.append(row)
    what = ("quantile bins of its distinct sampled values" if f.binned else "one level per value") \
        if f.kind == "numeric" else "its choices"
    note = f"`{f.key}` ({f.kind}; levels = {what}); " + (
        f"baseline level `{f.baseline}`." if f.baseline in lvls
        else "no baseline level in the sweep: no differences.")
    return Table(f"factor_{_slug(f.key)}", f"Factor `{f.key}`", pd.DataFrame(rows), note)


def section_factors(sw: Sweep, plots: Path, levels_rows: list[dict]) -> Section:
    """(2) Per factor x metric: level means with t-intervals, Welch deltas to the baseline."""
    sec = Section("factors", "2. Effect of each factor")
    sec.text.append(
        "For every swept key and metric: the mean over completed trials at each level (pooled "
        "over the other factors, as sampled), its 95% t-interval over those trials (seeds and "
        "repeats), and the difference to the factor's baseline level with a 95% Welch interval; "
        "* marks an interval that excludes zero. Continuous factors are cut into quantile bins of "
        "their distinct sampled values (all seeds of one configuration share a bin); their plot "
        "shows the bin means against the bin median with the interval as a band.")
    if sw.done.empty:
        return sec
    main = _main_metrics(sw)
    for f in sw.factors:
        sec.tables.append(_factor_tables(sw, f, levels_rows))
        lvls = [lv for lv in f.levels if lv in set(sw.done[f.col])]
        panels = [(m, rs.level_stats(sw.done, f.col, m, lvls)) for m in main]
        path = plots / f"factor_{_slug(f.key)}.png"
        if f.kind == "numeric":
            x = pd.to_numeric(sw.done[f.key], errors="coerce")
            med = x.groupby(sw.done[f.col]).median()
            rh.plot_trend(path, f.key, [(m, med.reindex(st["level"]).to_numpy(), st, x, sw.done[m])
                                         for m, st in panels], log=f.log)
        else:
            rh.plot_levels(path, f.key, panels, f.baseline)
        sec.plots.append((f"`{f.key}`: level means with 95% intervals", path))
    return sec


def section_loco(sw: Sweep) -> Section:
    """(3) Leave-one-component-out from the best combination of categorical factors."""
    sec = Section("loco", "3. Leave one loss component out")
    weights = {f.col: f.zero for f in sw.factors
               if f.key.startswith("distill.weights.") and f.kind == "categorical" and f.zero}
    if not weights:
        sec.text.append("No loss-weight factor (`distill.weights.*` with a 0 level) in this sweep.")
        return sec
    if sw.done.empty or sw.primary[0] not in sw.done:
        sec.text.append("No completed trial recorded the objective: nothing to compare.")
        return sec
    cat = [f for f in sw.factors if f.kind == "categorical"]
    pm, mode = sw.primary
    best = rs.best_combination(sw.done, [f.col for f in cat], pm, mode == "max")
    pooled = [f.key for f in sw.factors if f.kind != "categorical"]
    sec.text.append(
        f"Starting point: the combination of categorical factors with the best mean `{pm}` — "
        + ", ".join(f"{f.short}={best[f.col]}" for f in cat if not pd.isna(best[f.col]))
        + (f" (pooled over {', '.join(pooled)})" if pooled else "")
        + ". Each row sets one weight to 0 and keeps the rest; Δ = mean without the term − mean "
        "with it (negative: the term helps), 95% Welch interval, * excludes zero. "
        "\"not in sweep\" = no completed trial has that combination.")
    names = {f.col: f.key for f in cat}
    rows = []
    metrics = _main_metrics(sw)
    deps = {w: [f.col for f in sw.factors if names[w] in (f.spec.get("when") or {})] for w in weights}
    effects = {m: rs.loco_effects(sw.done, best, weights, m, dependents=deps).set_index("component")
               for m in metrics}
    for comp in effects[metrics[0]].index:
        e0 = effects[pm if pm in effects else metrics[0]].loc[comp]
        row = {"component removed": names[comp], "level in best": e0["best_level"],
               "trials best / without": f"{int(e0['n_best'])} / {int(e0['n_without'])}"}
        for m in metrics:
            e = effects[m].loc[comp]
            row[f"Δ {m}"] = "not in sweep" if e["n_without"] == 0 else \
                fdelta(e["delta"], e["lo"], e["hi"], bool(e["excludes_zero"]))
        rows.append(row)
    if not rows:
        sec.text.append("Every loss weight is already 0 in the best combination.")
    sec.tables.append(Table("loco", "Leave-one-component-out", pd.DataFrame(rows)))
    return sec


def optuna_importance(sw: Sweep) -> tuple[pd.Series | None, str]:
    """PED-ANOVA importances from ``optuna.journal``; (None, why) when unusable."""
    path = sw.dir / "optuna.journal"
    if not path.is_file():
        return None, "no `optuna.journal` in the sweep directory"
    try:
        import optuna
        from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        storage = JournalStorage(JournalFileBackend(str(path)))
        names = optuna.get_all_study_names(storage)
        name = sw.name if sw.name in names else (names[0] if len(names) == 1 else None)
        if name is None:
            return None, f"no study named `{sw.name}` in `optuna.journal` (found {names})"
        study = optuna.load_study(study_name=name, storage=storage)
        n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if n < 10:
            return None, f"the Optuna study has only {n} COMPLETE trials (PED-ANOVA needs >= 10)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except Exception as e:  # a damaged journal must not cost the whole report
        log.warning("optuna importance failed: %s", e)
        return None, f"reading the Optuna study failed ({type(e).__name__}: {e})"
    keys = {f.key for f in sw.factors}
    imp = {(k.replace("/", ".") if k.replace("/", ".") in keys else k): v for k, v in imp.items()}
    target = ("reaching the Pareto front of " if len(study.directions) > 1 else "") + \
        ", ".join(m for m, _ in sw.objectives)
    return pd.Series(imp, dtype=float), (
        f"Optuna PED-ANOVA (`PedAnovaImportanceEvaluator`, top 10% of {n} COMPLETE trials vs all, "
        f"normalised to sum 1) for {target}, from study `{name}`")


def section_importance(sw: Sweep, plots: Path) -> Section:
    """(4) Factor importance: Optuna PED-ANOVA when the journal is usable, else eta squared."""
    sec = Section("importance", "4. Factor importance")
    pm, _ = sw.primary
    imp, method = optuna_importance(sw)
    eta = pd.DataFrame({m: rs.eta_squared(sw.done, [f.col for f in sw.factors], m)
                        for m in sw.metrics}) if not sw.done.empty else pd.DataFrame()
    if imp is None:
        why = method
        method = (f"eta squared (between-level sum of squares / total sum of squares of `{pm}` "
                  "over completed trials, each factor alone)")
        imp = eta[pm].rename(index={f.col: f.key for f in sw.factors}) if pm in eta else None
        sec.text.append(f"Method: {method}; Optuna importance not used: {why}.")
    else:
        sec.text.append(f"Method: {method}.")
    if imp is not None and len(imp):
        imp = imp.sort_values(ascending=False)
        sec.tables.append(Table("importance", "Importance", pd.DataFrame(
            {"factor": imp.index, "importance": [fnum(v) for v in imp.to_numpy()]})))
        path = plots / "importance.png"
        rh.plot_bars(path, f"Factor importance ({method.split(' (')[0]})", imp)
        sec.plots.append(("Factor importance", path))
    if not eta.empty:
        t = eta.map(fnum)
        t.insert(0, "factor", [f.key for f in sw.factors])
        sec.tables.append(Table(
            "eta_squared", "Variance decomposition per metric (eta squared)", t.reset_index(drop=True),
            "One-way eta squared: the share of each metric's variance between the levels of one "
            "factor alone; shares of different factors overlap when the design is unbalanced."))
    return sec


def section_pareto(sw: Sweep, plots: Path) -> Section:
    """(5) Pareto fronts of OOD accuracy against student cost, over configurations."""
    sec = Section("pareto", "5. Accuracy vs student cost (Pareto front)")
    objs = [m for m in ("novel_acc", "shift_acc") if m in sw.configs]
    costs = [c for c in ("student_params", "student_latency_ms") if c in sw.configs]
    sec.text.append("Points are configurations (mean over their completed trials). A configuration "
                    "is on the front when no other has higher-or-equal accuracy at lower-or-equal "
                    "cost with one of the two strictly better.")
    if not objs or not costs:
        sec.text.append("No accuracy or cost metric recorded: no front.")
        return sec
    rows, panels = [], []
    pairs = [(m, c) for m in objs for c in costs]
    configs = sw.configs
    if len(sw.objectives) > 1 and all(m in configs for m, _ in sw.objectives[:2]):
        (m, mode), (c, cmode) = sw.objectives[:2]  # multi-objective: the space's own front
        configs = configs.copy()
        if cmode == "max":  # pareto_front minimises the second axis
            configs[c] = -configs[c]
        if mode == "min":
            configs[m] = -configs[m]
        pairs = [(m, c)]
        sec.text.append(f"Multi-objective space: the front of its objectives {m} ({mode}) and "
                        f"{c} ({cmode}; plotted with the sign that makes lower better).")
    sec.text.append("Latency is measured once per architecture and device type (trainers/"
                    "evaluation.py, `cached_latency`), so configurations of one architecture "
                    "share one value and are never split by timing noise.")
    for m, c in pairs:
        front = rs.pareto_front(configs, m, c)
        panels.append((m, c, configs, front))
        rows += [{"accuracy": m, "cost": c, "config": r["config"], "mean": fnum(r[m]),
                  "trials": int(r["n"]), "cost value": fcost(c, r[c]), "configuration": r["label"]}
                 for _, r in front.iterrows()]
    sec.tables.append(Table("pareto", "Pareto-optimal configurations", pd.DataFrame(rows)))
    path = plots / "pareto.png"
    rh.plot_pareto(path, panels)
    sec.plots.append(("Accuracy against cost; the front is the line", path))
    return sec


def section_interactions(sw: Sweep, plots: Path, top: int = 5) -> Section:
    """(6) Top pairwise interactions by two-way interaction sum of squares."""
    sec = Section("interactions", "6. Interactions worth a look")
    sec.text.append(
        "For each pair of factors (continuous ones by their bins): SS_AB = Σ n_ab (m_ab − m_a − "
        "m_b + m)², from cell means m_ab, level means m_a, m_b and the grand mean m of completed "
        "trials; exact two-way ANOVA interaction for balanced designs, a screening approximation "
        "otherwise. Share = SS_AB / total sum of squares of the metric.")
    if len(sw.factors) < 2 or sw.done.empty:
        sec.text.append("Fewer than two factors or no completed trial: no interactions.")
        return sec
    names = {f.col: f.key for f in sw.factors}
    rows, pm = [], sw.primary[0]
    tables = {}
    for m in dict.fromkeys([pm] + [x for x in ("novel_acc", "shift_acc") if x in sw.metrics]):
        if m not in sw.done:
            continue
        tables[m] = t = rs.interaction_table(sw.done, list(names), m)
        rows += [{"metric": m, "factor A": names[r["factor_a"]], "factor B": names[r["factor_b"]],
                  "SS_AB": f"{r['ss']:.3g}", "share": fnum(r["share"]),
                  "cells observed / possible": f"{r['cells']} / {r['possible_cells']}"}
                 for _, r in t.head(top).iterrows()]
    sec.tables.append(Table("interactions", f"Top {top} pairs per metric", pd.DataFrame(rows)))
    t = tables.get(pm)
    if t is not None and len(t):
        a, b = t.iloc[0]["factor_a"], t.iloc[0]["factor_b"]
        fa = next(f for f in sw.factors if f.col == a)
        fb = next(f for f in sw.factors if f.col == b)
        path = plots / "interaction_top.png"
        rh.plot_interaction(path, sw.done, a, b, pm, fa.key, fb.key, fa.levels, fb.levels)
        sec.plots.append((f"Top interaction for `{pm}`: {fa.key} x {fb.key}", path))
    return sec


def _reason(r) -> str:
    if isinstance(r["error"], str) and r["error"].strip():
        return r["error"].strip().splitlines()[0][:300]
    if r["status"] == "pruned":
        planned = r.get("planned_epochs")
        of = f" of {int(planned)}" if pd.notna(planned) else ""
        return f"stopped early by the scheduler after {_fmt_value(r['epochs'])}{of} epochs"
    return "no error recorded"


def section_trials(sw: Sweep, pm: str) -> Section:
    """(7) Counts, compute used, failed and pruned trials with their reasons."""
    sec = Section("trials", "7. Trials, compute, failures")
    t = sw.trials
    hours = rs.compute_hours(t)
    counts = t["status"].value_counts()
    stats = [("trials", len(t))] + [(s, int(counts.get(s, 0))) for s in STATUS_ORDER] + \
        [(s, int(n)) for s, n in counts.items() if s not in STATUS_ORDER] + [
        ("seeds", t["seed"].nunique()), ("configurations (all / completed)",
                                         f"{t['config'].nunique()} / {sw.done['config'].nunique()}"),
        ("CPU hours", f"{hours['cpu_hours']:.3f}"), ("GPU hours", f"{hours['gpu_hours']:.3f}"),
        ("epochs trained", _fmt_value(pd.to_numeric(t["epochs"], errors="coerce").sum()))]
    sec.text.append("Hours = Σ wall_seconds × cpu (or gpu) per worker × workers / 3600 over all "
                    "trials, including pruned and failed ones. Pruned trials' metrics are their last "
                    "intermediate values; neither they nor failed trials enter any mean.")
    sec.tables.append(Table("counts", "Sweep size",
                            pd.DataFrame(stats, columns=["what", "value"]).astype(str)))
    bad = t[t["status"] != "completed"]
    rows = [{"trial": r["trial_id"], "status": r["status"], "seed": _fmt_value(r["seed"]),
             "config": r["config"], "configuration": describe(sw, r),
             "epochs": _fmt_value(r["epochs"]),
             f"last {pm}": fnum(pd.to_numeric(pd.Series([r.get(pm)]), errors="coerce").iloc[0]),
             "reason": _reason(r)} for _, r in bad.iterrows()]
    sec.tables.append(Table("failed_pruned", "Failed and pruned trials", pd.DataFrame(rows)))
    return sec


def section_representation(sw: Sweep, plots: Path) -> Section:
    """(8) P1's representation metrics beside accuracy, and their rank correlation with it."""
    sec = Section("representation", "8. Representation metrics (P1)")
    ms = [m for m in REPR_METRICS if m in sw.metrics]
    if not ms:
        sec.text.append("No trial recorded M_rel / M_neigh / M_vlalign.")
        return sec
    sec.text.append("M_rel: fraction of images whose nearest teacher embedding is their own (higher "
                    "is better); M_neigh: k-NN overlap student vs teacher (higher is better); "
                    "M_vlalign: reversed pairs among the teacher's top-k class texts (lower is "
                    "better). Spearman ρ over completed trials.")
    accs = [m for m in ("novel_acc", "shift_acc", "base_acc") if m in sw.metrics]
    rows = []
    for m in ms:
        row = {"metric": m}
        for a in accs:
            rho, n = rs.spearman(sw.done[m], sw.done[a])
            row[f"ρ with {a}"] = f"{fnum(rho, 2)} (n={n})"
        rows.append(row)
    sec.tables.append(Table("repr_corr", "Rank correlation with accuracy", pd.DataFrame(rows)))
    c = sw.configs.sort_values(sw.primary[0], ascending=_mode(sw, sw.primary[0]) == "min") \
        if sw.primary[0] in sw.configs else sw.configs
    t = pd.DataFrame({"config": c["config"], "trials": c["n"].astype(int).astype(str),
                      **{m: c[m].map(fnum) for m in accs + ms}})
    sec.tables.append(Table("repr_configs", "Per configuration", t.reset_index(drop=True)))
    if accs:
        path = plots / "representation.png"
        rh.plot_scatter(path, [(m, sw.done[m], accs[0], sw.done[accs[0]]) for m in ms])
        sec.plots.append((f"Representation metrics against {accs[0]} (one point per trial)", path))
    return sec


def section_configs(sw: Sweep, limit: int = 100) -> Section:
    """Appendix: every configuration of completed trials with its means and cost."""
    sec = Section("configs", "Appendix: configurations")
    if sw.configs.empty:
        sec.text.append("No completed configuration.")
        return sec
    pm = sw.primary[0]
    c = sw.configs.sort_values(pm, ascending=_mode(sw, pm) == "min") if pm in sw.configs else sw.configs
    cols = _main_metrics(sw)
    t = pd.DataFrame({"config": c["config"], "configuration": c["label"],
                      "trials": c["n"].astype(int).astype(str), **{m: c[m].map(fnum) for m in cols},
                      **{k.replace("student_", ""): c[k].map(lambda v, k=k: fcost(k, v))
                         for k in COSTS if k in c}})
    if len(t) > limit:
        sec.text.append(f"Top {limit} of {len(t)} by `{pm}`; all are in `trials.csv`.")
    sec.tables.append(Table("configs", f"Configurations by `{pm}`", t.head(limit).reset_index(drop=True)))
    return sec


# ---------------------------------------------------------------- assembly


def trials_csv_frame(sw: Sweep) -> pd.DataFrame:
    """``trials.csv``: trial_id, status, error, seed, run facts, every param, every metric."""
    t = sw.trials
    head = ["trial_id", "status", "error", "seed", "config", "epochs", "wall_seconds",
            "resources.cpu", "resources.gpu", "resources.workers"]
    params = [f.key for f in sw.factors]
    first = [*head, *params, *sw.metrics, *COSTS]
    rest = sorted(c for c in t.columns if c not in first and c != "planned_epochs")
    return t[[c for c in dict.fromkeys(first) if c in t] + rest]


def build_sections(sw: Sweep, plots: Path, levels_rows: list[dict]) -> list[Section]:
    from vldistill.platform.report.decisions import section_comparisons

    return [section_comparisons(sw, plots), section_headline(sw), section_factors(sw, plots, levels_rows), section_loco(sw),
            section_importance(sw, plots), section_pareto(sw, plots), section_interactions(sw, plots),
            section_trials(sw, sw.primary[0]), section_representation(sw, plots), section_configs(sw)]


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *,
                 wandb_run: bool = False) -> dict[str, Path]:
    """Write the ablation report of ``sweep_dir`` into ``out_dir`` (default: the sweep dir).

    Args:
        sweep_dir: Directory with ``search_space.yaml``, ``trials.jsonl`` and optionally
            ``optuna.journal``.
        out_dir: Where to write; created if missing.
        wandb_run: Also log the tables and plots to one W&B run ``<name>-report`` (offline
            unless ``WANDB_MODE`` says otherwise).

    Returns:
        Written files by name relative to ``out_dir``: ``report.md``, ``report.html``,
        ``trials.csv``, ``levels.csv`` and ``plots/<name>.png``.

    Raises:
        ReportError: When ``sweep_dir`` is not a sweep directory.
    """
    sw = load_sweep(sweep_dir)
    out = Path(out_dir).expanduser().resolve() if out_dir else sw.dir
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png"):  # our plots from an earlier report (factors may differ)
        if old.stem in PLOT_NAMES or old.stem.startswith("factor_"):
            old.unlink()
    levels_rows: list[dict] = []
    sections = build_sections(sw, plots, levels_rows)
    meta = {"name": sw.name, "sweep_dir": str(sw.dir),
            "objective": ", ".join(f"{m} ({mode})" for m, mode in sw.objectives),
            "factors": ", ".join(f.key for f in sw.factors), "notes": sw.notes}
    files = {"trials.csv": out / "trials.csv", "levels.csv": out / "levels.csv",
             "report.md": out / "report.md", "report.html": out / "report.html"}
    trials_csv_frame(sw).to_csv(files["trials.csv"], index=False)
    pd.DataFrame(levels_rows).to_csv(files["levels.csv"], index=False)
    files["report.md"].write_text(rh.render_markdown(sections, meta, out), encoding="utf-8")
    files["report.html"].write_text(rh.render_html(sections, meta), encoding="utf-8")
    files.update({f"plots/{p.name}": p for p in sorted(plots.glob("*.png"))})
    if wandb_run:
        log_to_wandb(sw, sections, out)
    log.info("report of %s written to %s", sw.name, out)
    return files


def log_to_wandb(sw: Sweep, sections: list[Section], out: Path) -> str | None:
    """Log every report table and plot to one W&B run in the sweep's group; returns its
    directory, or None when W&B is missing or fails (a warning: the report is on disk).

    The group is the sweep's own (``wandb_logger.sweep_group``: kept in the sweep directory,
    so a resumed sweep's summary lands beside the first); the mode is the trials' mode
    (``wandb_logger.wandb_mode``: offline unless ``WANDB_MODE=online`` with a key); run files
    go to ``WANDB_DIR`` or ``out``. Only report content is logged (no environment, no
    config secrets).
    """
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed: the report is not logged to W&B")
        return None
    from vldistill.platform.wandb_logger import sweep_group, wandb_mode

    try:
        group = sweep_group(sw.dir, sw.name)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vldistill"), name=f"{sw.name}-report",
                         group=group, job_type="report", mode=wandb_mode(),
                         dir=os.environ.get("WANDB_DIR") or str(out), reinit="create_new",
                         config={"sweep": sw.name, "objective": [m for m, _ in sw.objectives],
                                 "factors": [f.key for f in sw.factors]},
                         settings=wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                                 save_code=False, disable_git=True))
    except Exception as e:  # noqa: BLE001  (W&B is a view of the report, never its record)
        log.warning("W&B: the report run could not start (%s: %s); the report is on disk",
                    type(e).__name__, str(e)[:300])
        return None
    try:
        _log_report(run, sw, sections)
        return str(Path(run.dir).parent)
    except Exception as e:  # noqa: BLE001
        log.warning("W&B: logging the report failed (%s: %s); the report is on disk",
                    type(e).__name__, str(e)[:300])
        return None
    finally:
        with contextlib.suppress(Exception):
            run.finish()


def _log_report(run, sw: Sweep, sections: list[Section]) -> None:
    import wandb

    for sec in sections:
        for t in sec.tables:
            if len(t.frame):
                run.log({f"report/{t.slug}": wandb.Table(dataframe=t.frame.astype(str))})
        for caption, path in sec.plots:
            run.log({f"plots/{path.stem}": wandb.Image(str(path), caption=caption)})
    trials = trials_csv_frame(sw)
    run.log({"report/trials": wandb.Table(dataframe=trials.astype(str))})
    for m in sw.metrics:
        best = _best_config(sw, m)
        if best is not None:
            run.summary[f"best/{m}"] = float(sw.configs.set_index("config").loc[best, m])


def report_main(sweep_dir: str, out_dir: str | None, wandb: bool) -> int:
    """CLI entry (``vldistill report SWEEP_DIR``): 0 on success, 2 on a bad sweep directory."""
    from vldistill.trainers.storage import Remote, is_uri, local_copy_dir, pull_sweep, push_files

    remote = None
    try:
        if is_uri(sweep_dir):  # a sweep on object storage: report from a local copy, upload back
            try:
                remote, local = Remote(sweep_dir), local_copy_dir(sweep_dir, "report")
                pull_sweep(remote, local, skip=("tune", "train", "wandb", ".lock"))
            except (ValueError, OSError) as e:
                raise ReportError(f"{sweep_dir}: cannot read the sweep from storage: {e}") from None
            sweep_dir = str(local)
        files = build_report(sweep_dir, None if is_uri(out_dir or "") else out_dir, wandb_run=wandb)
        target = Remote(out_dir) if out_dir and is_uri(out_dir) else (remote if out_dir is None else None)
        if target is not None:
            push_files(target, Path(files["report.md"]).parent,
                       ["report.md", "report.html", "trials.csv", "levels.csv", "plots"])
            print(f"report uploaded to {target.uri}")
    except ReportError as e:
        print(f"vldistill report: {e}", file=sys.stderr)
        return 2
    print(f"report: {files['report.md']}\n        {files['report.html']}\n        {files['trials.csv']}")
    return 0
