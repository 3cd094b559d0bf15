"""The report's eight numbered sections and its appendix, each a :class:`Section` of tables
of formatted strings and plots (docs/report.md describes each section and its statistics).

Every function takes a loaded :class:`~vldistill.platform.report.loading.Sweep`; the
statistics come from ``stats.py``, the drawing from ``render.py``, the shared questions
(baseline, best configuration, teacher, floors) from ``queries.py``. The decisions section
that heads the report lives in ``decisions.py``.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path

import pandas as pd

from vldistill.platform.report import render as rh
from vldistill.platform.report import stats as rs
from vldistill.platform.report.loading import COSTS, REPR_METRICS, Factor, Sweep, describe, fmt_value
from vldistill.platform.report.queries import (baseline_configs, baseline_mask, best_config,
                                               config_trials, eval_sizes_text, floors_text,
                                               main_metrics, metric_mode, teacher_value)
from vldistill.platform.report.render import Section, Table, fcost, fdelta, fiv, fnum

log = logging.getLogger(__name__)

STATUS_ORDER = ("completed", "pruned", "failed")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()


def section_headline(sw: Sweep) -> Section:
    """(1) Best configuration per OOD metric vs the baseline configuration and the teacher."""
    sec = Section("headline", "1. Headline: best configurations vs baseline and teacher")
    if sw.done.empty:
        sec.text.append("No completed trials: nothing to compare.")
        return sec
    mask = baseline_mask(sw)
    base = baseline_configs(sw)
    sec.text.append(
        "Best configuration per metric = highest mean over its completed trials (seeds); "
        "intervals are 95% t-intervals over those trials, the difference to the baseline a 95% "
        "Welch interval (* = excludes zero). " + _baseline_text(sw, mask, base))
    sizes = eval_sizes_text(sw)
    if sizes:
        sec.text.append(f"Evaluation sets (images; a folder dataset keeps at most `data.max_eval_per_class` "
                        f"per class, default 300): {sizes}." + _binomial_note(sw))
    base_rows = sw.done[mask] if mask is not None else sw.done.iloc[:0]
    rows, used = [], list(base)
    for m in [m for m in sw.metrics if m not in REPR_METRICS]:
        best = best_config(sw, m)
        if best is None:
            continue
        used.append(best)
        b_iv = rs.t_interval(config_trials(sw, best, m))
        base_iv = rs.t_interval(base_rows[m])
        d = rs.welch_interval(config_trials(sw, best, m), base_rows[m])
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
    best = best_config(sw, pm)
    if best:
        sec.text.append(f"Best by the sweep objective `{pm}`: `{best}` ({cfg.loc[best, 'label']}).")
    return sec


def _binomial_note(sw: Sweep) -> str:
    """The sampling half-width of an accuracy near 0.5 on the novel set (one trial's)."""
    n = pd.to_numeric(sw.done.get("n/novel", pd.Series(dtype=float)), errors="coerce").min()
    if not n or not math.isfinite(n):
        return ""
    return (f" On {int(n):,} novel images an accuracy near 0.5 has a binomial 95% half-width of "
            f"±{1.96 * math.sqrt(0.25 / n):.3f} from the images alone (the same images for every "
            "trial: it does not enter paired differences).")


def _baseline_text(sw: Sweep, mask, base: list[str]) -> str:
    """What the headline's baseline is: a design's base point, or every factor at its baseline."""
    found = ", ".join(f"`{c}`" for c in base)
    if sw.base_point is not None:
        return (f"Baseline = the {sw.design} design's base point `{sw.base_point}`: "
                + (found or "no completed trial of it, so no differences") + ".")
    if mask is None:
        return ("Baseline: none -- no swept key gives a `baseline:` level (add one to a param, or "
                "give the space a design), so the headline has no differences.")
    free = [f.key for f in sw.factors if f.baseline is None]
    numeric = [f.key for f in sw.factors if f.baseline is not None and f.kind == "numeric"]
    return ("Baseline = the completed trials with every factor at its baseline"
            + (f" ({', '.join(numeric)}: in the bin holding the baseline value)" if numeric else "")
            + (f" (free: {', '.join(free)})" if free else "") + ": "
            + (found or "none in the sweep, so no differences") + ".")


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
    main = main_metrics(sw)
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
    if sw.design is not None:
        sec.text.append(f"This sweep is a `{sw.design}` design: its comparisons (each against the "
                        "design's base, paired by seed, with intervals and decisions) are the "
                        "Decisions section above; no second, unpaired reading here.")
        return sec
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
    metrics = main_metrics(sw)
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
        return f"stopped early by the scheduler after {fmt_value(r['epochs'])}{of} epochs"
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
        ("epochs trained", fmt_value(pd.to_numeric(t["epochs"], errors="coerce").sum()))]
    sec.text.append("Hours = Σ wall_seconds × cpu (or gpu) per worker × workers / 3600 over all "
                    "trials, including pruned and failed ones. Pruned trials' metrics are their last "
                    "intermediate values; neither they nor failed trials enter any mean.")
    sec.tables.append(Table("counts", "Sweep size",
                            pd.DataFrame(stats, columns=["what", "value"]).astype(str)))
    bad = t[t["status"] != "completed"]
    rows = [{"trial": r["trial_id"], "status": r["status"], "seed": fmt_value(r["seed"]),
             "config": r["config"], "configuration": describe(sw, r),
             "epochs": fmt_value(r["epochs"]),
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
    c = sw.configs.sort_values(sw.primary[0], ascending=metric_mode(sw, sw.primary[0]) == "min") \
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
    c = sw.configs.sort_values(pm, ascending=metric_mode(sw, pm) == "min") if pm in sw.configs else sw.configs
    cols = main_metrics(sw)
    t = pd.DataFrame({"config": c["config"], "configuration": c["label"],
                      "trials": c["n"].astype(int).astype(str), **{m: c[m].map(fnum) for m in cols},
                      **{k.replace("student_", ""): c[k].map(lambda v, k=k: fcost(k, v))
                         for k in COSTS if k in c}})
    if len(t) > limit:
        sec.text.append(f"Top {limit} of {len(t)} by `{pm}`; all are in `trials.csv`.")
    sec.tables.append(Table("configs", f"Configurations by `{pm}`", t.head(limit).reset_index(drop=True)))
    return sec
