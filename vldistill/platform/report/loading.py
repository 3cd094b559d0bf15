"""Loading a sweep directory into a :class:`Sweep`: rows, factors, levels, configurations.

:func:`load_sweep` reads ``search_space.yaml`` and ``trials.jsonl`` (last line per
``trial_id`` wins), flattens each row (``params`` and ``metrics`` become columns), turns
every swept key into a :class:`Factor` with level labels (quantile bins for continuous
values, ``report/stats.py bin_numeric``), groups the completed trials into configurations
and keeps notes about anything skipped. Only ``completed`` trials enter ``Sweep.done``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from vldistill.platform.report import stats as rs
from vldistill.trainers.strict_files import DuplicateKeyError, read_yaml

CATEGORICAL = ("choice", "grid")
NUMERIC = ("uniform", "loguniform", "int", "randint", "quniform", "qloguniform", "lograndint")
REPR_METRICS = ("M_rel", "M_neigh", "M_vlalign")
COSTS = ("student_params", "student_flops", "student_latency_ms", "student_latency_ms_b8")
NON_METRIC_PREFIXES = ("teacher/", "chance/", "floor/", "n/")
MAIN_METRICS = ("novel_acc", "shift_acc", "hmean", "base_acc")


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
    design: str | None = None  # the space's design type (loco, add_one, ..., full_factorial)
    base_point: str | None = None  # the design point that is the baseline ("base"; "(1)" for factorials)

    @property
    def primary(self) -> tuple[str, str]:
        """The first objective that trials recorded (else the first metric they did)."""
        for m, mode in self.objectives:
            if m in self.metrics:
                return m, mode
        return (self.metrics[0], "max") if self.metrics else self.objectives[0]



def fmt_value(v) -> str:
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
    done[f.col] = raw.map(lambda v: missing if _isna(v) else fmt_value(canon(v)))
    f.levels = [fmt_value(c) for c in choices]
    f.levels += [lv for lv in dict.fromkeys(done[f.col].dropna()) if lv not in f.levels]
    if "baseline" in spec:
        f.baseline = fmt_value(canon(spec["baseline"]))
    zero = next((c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)
                 and c == 0), None)
    f.zero = fmt_value(zero) if zero is not None else None
    return f


def _design_baselines(factors: list[Factor], base_rows: pd.DataFrame) -> None:
    """A design's factors take their baseline level from its base point (the rows given),
    so that factor differences read against the design's baseline like a grid's."""
    for f in factors:
        if f.baseline is None and f.col in base_rows and base_rows[f.col].notna().any():
            f.baseline = str(base_rows[f.col].dropna().iloc[0])


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
    design = (space.get("design") or {}).get("type") if isinstance(space.get("design"), dict) else None
    base_point = None if design is None else "(1)" if design.endswith("factorial") else "base"
    if base_point is not None and "design_point" in done:
        _design_baselines(factors, done[done["design_point"] == base_point])
    sweep = Sweep(d, str(space.get("name") or d.name), objectives, factors, trials, done, metrics,
                  pd.DataFrame(), notes, design, base_point)
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
    return ", ".join(f"{f.short}={fmt_value(row.get(f.key))}" for f in sw.factors)


def trials_csv_frame(sw: Sweep) -> pd.DataFrame:
    """``trials.csv``: trial_id, status, error, seed, run facts, every param, every metric."""
    t = sw.trials
    head = ["trial_id", "status", "error", "seed", "config", "epochs", "wall_seconds",
            "resources.cpu", "resources.gpu", "resources.workers"]
    params = [f.key for f in sw.factors]
    first = [*head, *params, *sw.metrics, *COSTS]
    rest = sorted(c for c in t.columns if c not in first and c != "planned_epochs")
    return t[[c for c in dict.fromkeys(first) if c in t] + rest]
