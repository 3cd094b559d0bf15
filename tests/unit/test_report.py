"""The ablation report: statistics against hand computations, files, and W&B logging.

The fixture sweep (tests/fixtures/sweep_rows, see its README.md) has six completed
configurations x 3 seeds; every accuracy of a configuration sits at centre - 0.01, centre,
centre + 0.01 over its seeds (so each configuration has sd 0.01), plus one failed and one
pruned trial and one trial_id whose first line is superseded. Reports are always written into
a copy in tmp_path, never into tests/fixtures.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from vldistill.platform import report as rp
from vldistill.platform.report import loading, queries, sections
from vldistill.platform.report import stats as rs

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sweep_rows"
T_975 = {1: 12.706, 2: 4.303, 4: 2.776, 4.5: 2.659, 8: 2.306, 15.96: 2.120}  # t(0.975, df), from tables


def _copy(dst: Path) -> Path:
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("generate.py", "README.md"))
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    sweep = _copy(tmp_path_factory.mktemp("report") / "sweep")
    return sweep, rp.build_report(sweep)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> rp.Sweep:
    return rp.load_sweep(_copy(tmp_path_factory.mktemp("load") / "sweep"))


def _factor(sw: rp.Sweep, key: str) -> rp.Factor:
    return next(f for f in sw.factors if f.key == key)


# ---------------------------------------------------------------- pure statistics


def test_t_interval_uses_sample_sd_and_t_quantile():
    iv = rs.t_interval([0.29, 0.30, 0.31])
    # mean 0.30, sd 0.01 (ddof 1), half-width 4.303 * 0.01 / sqrt(3) = 0.024843
    assert iv.n == 3 and iv.mean == pytest.approx(0.30) and iv.sd == pytest.approx(0.01)
    assert iv.hi - iv.mean == pytest.approx(T_975[2] * 0.01 / math.sqrt(3), abs=1e-5)
    assert iv.mean - iv.lo == pytest.approx(0.024843, abs=1e-5)


def test_t_interval_of_one_value_has_no_interval_and_drops_nan():
    iv = rs.t_interval([0.4, float("nan")])
    assert iv.n == 1 and iv.mean == 0.4 and math.isnan(iv.lo) and math.isnan(iv.hi)


def test_welch_interval_equal_variances():
    d = rs.welch_interval([0.45, 0.46, 0.47], [0.39, 0.40, 0.41])
    # se = sqrt(1e-4/3 + 1e-4/3) = 0.0081650, df = 4, half = 2.776 * 0.0081650 = 0.022667
    assert d.delta == pytest.approx(0.06)
    assert d.df == pytest.approx(4.0)
    assert d.hi - d.delta == pytest.approx(T_975[4] * 0.0081650, abs=1e-5)
    assert d.excludes_zero


def test_welch_interval_unequal_variances_and_sizes():
    d = rs.welch_interval([1.0, 3.0], [0.0, 2.0, 4.0, 6.0, 8.0])
    # a: mean 2, var 2, n 2 -> 1.0; b: mean 4, var 10, n 5 -> 2.0; se = sqrt(3)
    # df = 3^2 / (1^2/1 + 2^2/4) = 4.5; half = 2.659 * 1.7321 = 4.605
    assert d.delta == pytest.approx(-2.0)
    assert d.df == pytest.approx(4.5)
    assert d.hi - d.delta == pytest.approx(T_975[4.5] * math.sqrt(3), abs=2e-3)
    assert not d.excludes_zero


def test_eta_squared_and_interaction_on_a_two_by_two():
    # cells (A, B): (0,0)=1, (0,1)=2, (1,0)=3, (1,1)=6; grand mean 3, total SS 4+1+0+9 = 14
    df = pd.DataFrame({"A": ["0", "0", "1", "1"], "B": ["0", "1", "0", "1"], "y": [1.0, 2.0, 3.0, 6.0]})
    eta = rs.eta_squared(df, ["A", "B"], "y")
    # A: 2*(1.5-3)^2 + 2*(4.5-3)^2 = 9 -> 9/14; B: 2*(2-3)^2 + 2*(4-3)^2 = 4 -> 4/14
    assert eta["A"] == pytest.approx(9 / 14) and eta["B"] == pytest.approx(4 / 14)
    t = rs.interaction_table(df, ["A", "B"], "y")
    # residuals m_ab - m_a - m_b + m = +-0.5 in every cell -> SS_AB = 4 * 0.25 = 1
    assert t.loc[0, "ss"] == pytest.approx(1.0) and t.loc[0, "share"] == pytest.approx(1 / 14)
    assert (t.loc[0, "cells"], t.loc[0, "possible_cells"]) == (4, 4)


def test_interaction_is_zero_for_additive_effects_and_pairs_are_ranked():
    df = pd.DataFrame({"A": list("0011") * 2, "B": list("0101") * 2, "C": list("00001111"),
                       "y": [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]})
    df.loc[df["C"] == "1", "y"] += [0.0, 1.0, 1.0, 0.0]  # an A x B x C pattern only inside C=1
    t = rs.interaction_table(df, ["A", "B", "C"], "y")
    assert list(t["ss"]) == sorted(t["ss"], reverse=True)
    additive = rs.interaction_table(df[df["C"] == "0"], ["A", "B"], "y")
    assert additive.loc[0, "ss"] == pytest.approx(0.0, abs=1e-12)


def test_pareto_front_keeps_non_dominated_points_and_ties():
    df = pd.DataFrame({"id": list("pqrstu"), "acc": [0.5, 0.4, 0.4, 0.3, 0.6, 0.6],
                       "cost": [2.0, 1.0, 1.5, 1.0, 5.0, 5.0]})
    # r is dominated by q (same acc, higher cost); s by q (lower acc, same cost); t and u tie
    assert list(rs.pareto_front(df, "acc", "cost")["id"]) == ["q", "p", "t", "u"]
    assert list(rs.pareto_front(df, "acc", "cost", maximize=False)["id"]) == ["s"]


def test_bin_numeric_exact_levels_then_quantile_bins_of_distinct_values():
    labels, bins = rs.bin_numeric(pd.Series([1.0, 2.0, 2.0, 4.0]))
    assert list(bins["label"]) == ["1", "2", "4"] and list(labels) == ["1", "2", "2", "4"]
    vals = pd.Series([1e-4, 1e-4, 3e-4, 1e-3, 3e-3, 5e-3, 1e-2, float("nan")])
    labels, bins = rs.bin_numeric(vals)  # 6 distinct -> 3 bins of 2 distinct values
    assert list(bins["label"]) == ["[0.0001, 0.0003]", "[0.001, 0.003]", "[0.005, 0.01]"]
    assert labels.iloc[1] == labels.iloc[2] == "[0.0001, 0.0003]" and pd.isna(labels.iloc[-1])


def test_compute_hours_counts_workers():
    df = pd.DataFrame({"wall_seconds": [3600.0, 1800.0], "resources.cpu": [2, 1],
                       "resources.gpu": [0, 1], "resources.workers": [1, 4]})
    assert rs.compute_hours(df) == {"cpu_hours": pytest.approx(4.0), "gpu_hours": pytest.approx(2.0)}


# ---------------------------------------------------------------- the fixture sweep


def test_loader_last_line_wins_and_only_completed_enter_statistics(sweep):
    assert len(sweep.trials) == 20  # 21 lines, one trial_id twice
    superseded = sweep.trials.set_index("trial_id").loc["fxc_00007"]
    assert superseded["status"] == "completed" and superseded["wall_seconds"] == 60.0
    assert len(sweep.done) == 18 and set(sweep.done["status"]) == {"completed"}
    assert 0.05 not in set(sweep.done["novel_acc"])  # the pruned trial's last value
    assert [f.kind for f in sweep.factors] == ["categorical"] * 3 + ["numeric"]


def test_level_stats_on_fixture_by_hand(sweep):
    f = _factor(sweep, "distill.weights.mse")
    st = rs.level_stats(sweep.done, f.col, "novel_acc", f.levels).set_index("level")
    # mse=0: configs A, C, E (novel centres 0.30, 0.40, 0.28), 9 trials, mean 0.98/3 = 0.326667
    # SS = within 3 * 2e-4 + between 3 * (0.026667^2 + 0.073333^2 + 0.046667^2) = 0.0006 + 0.0248
    # var = 0.0254 / 8 = 0.003175, sd = 0.056347, half = 2.306 * 0.056347 / 3 = 0.043312
    assert st.loc["0", "n"] == 9
    assert st.loc["0", "mean"] == pytest.approx(0.326667, abs=1e-6)
    assert st.loc["0", "sd"] == pytest.approx(0.056347, abs=1e-6)
    assert st.loc["0", "hi"] - st.loc["0", "mean"] == pytest.approx(T_975[8] * 0.056347 / 3, abs=1e-5)
    # mse=1: B, D, F (0.34, 0.46, 0.42): mean 0.406667, var (0.0224 + 0.0006) / 8 = 0.002875
    assert st.loc["1", "mean"] == pytest.approx(0.406667, abs=1e-6)
    assert st.loc["1", "sd"] == pytest.approx(math.sqrt(0.002875), abs=1e-6)


def test_delta_vs_baseline_on_fixture_by_hand(sweep):
    f = _factor(sweep, "distill.weights.mse")
    d = rs.delta_vs_baseline(sweep.done, f.col, "novel_acc", f.baseline).set_index("level")
    # se = sqrt(0.003175/9 + 0.002875/9) = 0.025927; df = se^4 / ((v1/9)^2/8 + (v2/9)^2/8) = 15.96
    assert d.loc["1", "delta"] == pytest.approx(0.08, abs=1e-9)
    assert d.loc["1", "df"] == pytest.approx(15.96, abs=0.01)
    assert d.loc["1", "lo"] == pytest.approx(0.08 - T_975[15.96] * 0.025927, abs=2e-4)
    assert d.loc["1", "hi"] == pytest.approx(0.08 + T_975[15.96] * 0.025927, abs=2e-4)
    assert bool(d.loc["1", "excludes_zero"])
    s = _factor(sweep, "student.name")
    d = rs.delta_vs_baseline(sweep.done, s.col, "novel_acc", s.baseline).set_index("level")
    # mobilenet: E, F (0.28, 0.42) mean 0.35 vs resnet18 A-D mean 0.375 -> -0.025, not significant
    assert d.loc["mobilenetv3_small_100", "delta"] == pytest.approx(-0.025)
    assert not d.loc["mobilenetv3_small_100", "excludes_zero"]


def test_numeric_factor_is_binned_without_baseline(sweep):
    lr = _factor(sweep, "optim.lr")
    assert lr.levels == ["[0.0001, 0.0003]", "[0.001, 0.003]", "[0.005, 0.01]"] and lr.baseline is None
    st = rs.level_stats(sweep.done, lr.col, "novel_acc", lr.levels).set_index("level")
    # bin 2 = configs C, D: centres 0.40, 0.46 -> mean 0.43 over 6 trials
    assert st.loc["[0.001, 0.003]", "n"] == 6 and st.loc["[0.001, 0.003]", "mean"] == pytest.approx(0.43)


def test_pareto_set_of_fixture_configurations(sweep):
    front = rs.pareto_front(sweep.configs, "novel_acc", "student_params")
    # mobilenet F (0.42 at 1.5M) and resnet18 D (0.46 at 11.2M); E (0.28 at 1.5M) is dominated
    assert list(front["config"]) == ["c6", "c4"]
    assert list(front["novel_acc"]) == pytest.approx([0.42, 0.46])
    front = rs.pareto_front(sweep.configs, "shift_acc", "student_latency_ms")
    assert list(front["config"]) == ["c6", "c4"]


def test_loco_effects_from_best_combination(sweep):
    cat = [f for f in sweep.factors if f.kind == "categorical"]
    best = rs.best_combination(sweep.done, [f.col for f in cat], "novel_acc")
    assert [best[f.col] for f in cat] == ["1", "1", "resnet18"]  # config D
    comps = {f.col: f.zero for f in cat if f.key.startswith("distill.weights.")}
    e = rs.loco_effects(sweep.done, best, comps, "novel_acc").set_index("component")
    # removing mse -> config C (0.40) vs D (0.46): -0.06; removing im_cst -> B (0.34): -0.12
    # both groups sd 0.01, n 3 -> Welch df 4, half = 2.776 * sqrt(2e-4/3) = 0.022667
    mse, im = _factor(sweep, "distill.weights.mse").col, _factor(sweep, "distill.weights.im_cst").col
    assert e.loc[mse, "delta"] == pytest.approx(-0.06) and e.loc[im, "delta"] == pytest.approx(-0.12)
    assert e.loc[mse, "hi"] - e.loc[mse, "delta"] == pytest.approx(T_975[4] * math.sqrt(2e-4 / 3), abs=1e-5)
    assert (e.loc[im, "n_best"], e.loc[im, "n_without"]) == (3, 3)


def test_loco_reports_missing_combination_as_empty(sweep):
    f = _factor(sweep, "distill.weights.im_cst")
    s = _factor(sweep, "student.name")
    best = {f.col: "1", s.col: "mobilenetv3_small_100"}  # im_cst=0 with mobilenet: only E (mse 0)
    e = rs.loco_effects(sweep.done[sweep.done[_factor(sweep, "distill.weights.mse").col] == "1"],
                        best, {f.col: "0"}, "novel_acc")
    assert e.loc[0, "n_without"] == 0 and math.isnan(e.loc[0, "delta"])


def test_compute_hours_of_fixture_include_failed_and_pruned(sweep):
    # completed: 12 x 60 s + 6 x 36 s = 936 cpu-s; failed 12 s x 2 cpu = 24; pruned 90 s x 1 x 2 workers
    # = 180 -> 1140 / 3600 = 0.316667 h; GPU: only the pruned trial, 90 s x 1 gpu x 2 workers = 0.05 h
    h = rs.compute_hours(sweep.trials)
    assert h["cpu_hours"] == pytest.approx(1140 / 3600) and h["gpu_hours"] == pytest.approx(0.05)


def test_baseline_configuration_and_short_names(sweep):
    assert queries.baseline_configs(sweep) == ["c1"]  # mse=0, im_cst=0, resnet18 (lr free)
    assert loading.short_names(["a.b.k", "c.d.k", "x.lr"]) == {"a.b.k": "b.k", "c.d.k": "d.k", "x.lr": "lr"}


def test_conditional_factor_is_levelled_only_where_active(tmp_path):
    """A p1_losses-like space: vlprox.k exists only when vlprox is on; lr has a baseline."""
    d = tmp_path / "cond"
    d.mkdir()
    (d / "search_space.yaml").write_text(
        "name: cond\nmetric: novel_acc\nmode: max\nparams:\n"
        "  distill.weights.vlprox: {choice: [0.0, 1.0], baseline: 0.0}\n"
        "  distill.vlprox.k: {choice: [1, 256], baseline: 256, when: {distill.weights.vlprox: 1.0}}\n"
        "  optim.lr: {loguniform: [1.0e-4, 1.0e-2], baseline: 2.0e-3}\n")
    configs = {"p": (0.0, None, 2e-3, 0.30), "q": (1.0, 1, 1e-3, 0.35), "r": (1.0, 256, 4e-3, 0.45)}
    lines = []
    for name, (w, k, lr, novel) in configs.items():
        for seed, off in ((0, -0.01), (1, 0.01)):
            lines.append(json.dumps({
                "trial_id": f"{name}{seed}", "status": "completed", "error": None, "seed": seed,
                "params": {"distill.weights.vlprox": w, "distill.vlprox.k": k, "optim.lr": lr},
                "metrics": {"novel_acc": novel + off}, "epochs": 1, "wall_seconds": 1.0,
                "resources": {"cpu": 1, "gpu": 0, "workers": 1}}))
    (d / "trials.jsonl").write_text("\n".join(lines) + "\n")
    sw = rp.load_sweep(d)
    k = _factor(sw, "distill.vlprox.k")
    assert k.levels == ["1", "256"] and sw.done[k.col].isna().sum() == 2  # inactive in p
    assert queries.baseline_configs(sw) == ["c1"]  # p: vlprox 0 (k inactive), lr in the 0.002 level
    cat = [f for f in sw.factors if f.kind == "categorical"]
    best = rs.best_combination(sw.done, [f.col for f in cat], "novel_acc")
    vl = _factor(sw, "distill.weights.vlprox").col
    e = rs.loco_effects(sw.done, best, {vl: "0"}, "novel_acc", dependents={vl: [k.col]})
    # from r (0.45) to p (0.30): k is dropped from the match once vlprox is off
    assert e.loc[0, "n_without"] == 2 and e.loc[0, "delta"] == pytest.approx(-0.15)
    md = rp.build_report(d, tmp_path / "out")["report.md"].read_text()
    assert "| distill.weights.vlprox | 1 | 2 / 2 | -0.150" in md


# ---------------------------------------------------------------- the written report


def test_build_report_writes_every_file(built):
    sweep, files = built
    for name in ("report.md", "report.html", "trials.csv", "levels.csv"):
        assert files[name] == sweep / name and files[name].stat().st_size > 0
    plots = {k for k in files if k.startswith("plots/")}
    assert {"plots/pareto.png", "plots/importance.png", "plots/factor_optim_lr.png",
            "plots/factor_distill_weights_mse.png", "plots/interaction_top.png"} <= plots
    assert all(files[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for k in plots)


def test_trials_csv_has_one_row_per_trial_and_every_param_and_metric(built):
    sweep, files = built
    t = pd.read_csv(files["trials.csv"])
    assert list(t.columns[:4]) == ["trial_id", "status", "error", "seed"]
    rows = [json.loads(x) for x in (FIXTURE / "trials.jsonl").read_text().splitlines()]
    assert len(t) == len({r["trial_id"] for r in rows}) == 20
    keys = set().union(*(r["params"] for r in rows), *(r["metrics"] for r in rows))
    assert keys <= set(t.columns)
    failed = t.set_index("trial_id").loc["fxfail_00018"]
    assert failed["status"] == "failed" and failed["error"].startswith("NonFiniteLossError")


def test_report_md_contains_the_hand_computed_numbers(built):
    md = built[1]["report.md"].read_text()
    assert ("| novel_acc | 0.327 [0.283, 0.370] | 0.407 [0.365, 0.448] | +0.080 [+0.025, +0.135] \\* "
            "| 0.700 | chance 0.056; colour 0.333 |") in md
    # headline: best novel_acc = D 0.46 +- 4.303 * 0.01 / sqrt(3), baseline A 0.30, teacher 0.70
    assert "| novel_acc | c4 | 0.460 [0.435, 0.485] n=3 | 0.300 [0.275, 0.325] n=3 |" in md
    assert "chance 0.056; colour 0.333" in md and "| 0.700 |" in md
    assert "| 11.20M | 36.00M | 2.90 ms |" in md  # cost of the best configuration
    assert "-0.060 [-0.083, -0.037] \\*" in md and "-0.120 [-0.143, -0.097] \\*" in md  # LOCO
    assert "| CPU hours | 0.317 |" in md and "| GPU hours | 0.050 |" in md
    assert "Method: eta squared" in md and "M_vlalign" in md


def test_failed_and_pruned_trials_are_listed_with_reasons_not_averaged(built):
    sweep, files = built
    md = files["report.md"].read_text()
    assert "| fxfail_00018 | failed | 1 | c7 |" in md
    assert "NonFiniteLossError: loss is nan at epoch 3 |" in md  # first line of the error only
    assert "| fxprune_00019 | pruned | 0 | c8 |" in md
    assert "stopped early by the scheduler after 2 of 10 epochs" in md
    lv = pd.read_csv(files["levels.csv"])
    mb = lv[(lv["factor"] == "student.name") & (lv["metric"] == "novel_acc")
            & (lv["level"] == "mobilenetv3_small_100")].iloc[0]
    assert mb["n"] == 6 and mb["mean"] == pytest.approx(0.35)  # E and F only, no pruned 0.05


def test_html_is_self_contained(built):
    page = built[1]["report.html"].read_text()
    assert page.count("data:image/png;base64,") >= 5
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page


def test_optuna_journal_switches_importance_to_ped_anova(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import create_trial

    sweep_dir = _copy(tmp_path / "sweep")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="fixture_losses", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal"))))
    dists = {"distill/weights/mse": CategoricalDistribution([0.0, 1.0]),  # Tune's "/" flattening
             "distill/weights/im_cst": CategoricalDistribution([0.0, 1.0]),
             "student/name": CategoricalDistribution(["resnet18", "mobilenetv3_small_100"]),
             "optim/lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for line in (sweep_dir / "trials.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["status"] == "completed":
            p = {k.replace(".", "/"): v for k, v in r["params"].items()}
            study.add_trial(create_trial(params=p, distributions=dists, value=r["metrics"]["novel_acc"]))
    sw = rp.load_sweep(sweep_dir)
    imp, method = sections.optuna_importance(sw)
    assert set(imp.index) == {f.key for f in sw.factors} and imp.sum() == pytest.approx(1.0)
    assert "PED-ANOVA" in method
    sec = sections.section_importance(sw, tmp_path / "plots")
    assert sec.text[0].startswith("Method: Optuna PED-ANOVA")


def test_empty_and_all_failed_sweeps_still_report(tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    shutil.copy(FIXTURE / "search_space.yaml", d)
    row = json.loads((FIXTURE / "trials.jsonl").read_text().splitlines()[-2])  # the failed one
    (d / "trials.jsonl").write_text(json.dumps(row) + "\n" + "not json\n")
    files = rp.build_report(d, tmp_path / "out")
    md = files["report.md"].read_text()
    assert "No completed trials" in md and "fxfail_00018" in md and "line 2 of `trials.jsonl` skipped" in md


def test_report_main_exit_codes(tmp_path, capsys):
    assert rp.report_main(str(tmp_path), None, False) == 2
    assert "no search_space.yaml" in capsys.readouterr().err


# ---------------------------------------------------------------- W&B


def test_wandb_offline_run_is_written_without_secrets(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    key = "fake0secret0key0" + "a1b2c3d4e5f6a7b8c9d0e1f2"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    sweep_dir = _copy(tmp_path / "sweep")
    rp.build_report(sweep_dir, tmp_path / "out", wandb_run=True)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    record = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"fixture_losses-report" in record and b"report/headline" in record
    for p in (tmp_path / "wb").rglob("*"):
        if p.is_file():
            assert key.encode() not in p.read_bytes(), p


def test_missing_wandb_logs_one_warning_and_skips(monkeypatch, caplog, sweep):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with caplog.at_level("WARNING", logger="vldistill.platform.report"):
        assert rp.log_to_wandb(sweep, [], Path("/nonexistent")) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "wandb" in caplog.text


def test_a_failing_wandb_warns_and_the_report_is_written(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")

    def refuse(*args, **kwargs):  # as a full disk or an unreachable server would
        raise OSError("No space left on device")

    monkeypatch.setattr(wandb, "init", refuse)
    sweep_dir = _copy(tmp_path / "sweep")
    with caplog.at_level("WARNING", logger="vldistill.platform.report"):
        files = rp.build_report(sweep_dir, wandb_run=True)
    assert files["report.md"].is_file() and files["report.html"].is_file()
    assert any("W&B" in r.getMessage() and "No space left" in r.getMessage() for r in caplog.records)
