"""Racing: the sequential error control by seeded simulation, the replay of decisions, and
what the searcher hands out and tells Optuna (the mean over each configuration's seeds)."""

import statistics
from types import SimpleNamespace

import numpy as np
import pytest

from vldistill.platform.racing import Decision, decide, nominal_level, paired, race, seeds_to_decide, to_extend

ALPHA = 0.05


def _simulate(rng, effect: float, noise: float, margin: float, n_min=2, n_max=8) -> Decision:
    """One race of one comparison (a config against the base), adding a seed per round."""
    comp = SimpleNamespace(name="x", weights={"x": 1.0, "base": -1.0}, note="")
    values: dict[str, dict[int, float]] = {"x": {}, "base": {}}
    for n in range(1, n_max + 1):
        d = rng.normal(effect, noise)  # the per-seed paired difference
        values["base"][n], values["x"][n] = 0.5, 0.5 + d
        if n >= n_min:
            dec = race(values, [comp], n_min, n_max, margin, ALPHA)[0]
            if dec.decision != "undecided" or n == n_max:
                return dec
    raise AssertionError("unreachable")


@pytest.mark.parametrize("margin", [0.01, 0.0])
def test_null_races_rarely_decide_better_or_worse(margin):
    # No true effect, realistic seed noise (sd 0.03 of the paired novel_acc difference).
    rng = np.random.default_rng(16)
    decisions = [_simulate(rng, 0.0, 0.03, margin).decision for _ in range(1000)]
    wrong = sum(d in ("better", "worse") for d in decisions) / len(decisions)
    assert wrong <= ALPHA + 0.01, wrong


def test_effects_of_twice_the_seed_noise_are_decided_by_max():
    # Seed noise = the sd over seeds of the paired difference the race measures (0.03).
    rng = np.random.default_rng(17)
    decisions = [_simulate(rng, 0.06, 0.03, 0.01) for _ in range(1000)]
    right = sum(d.decision == "better" for d in decisions) / len(decisions)
    assert right >= 0.80, right
    assert not any(d.decision == "worse" for d in decisions)
    assert statistics.mean(d.seeds for d in decisions) < 8  # some decided before the budget


def test_nominal_level_corrects_for_the_looks():
    one = nominal_level(ALPHA, 8, 8)
    seven = nominal_level(ALPHA, 2, 8)
    assert one == ALPHA and 0.005 < seven < ALPHA
    assert nominal_level(ALPHA, 2, 8) == seven  # cached and seeded: the same every time


def test_paired_uses_shared_seeds_and_the_sign():
    values = {"a": {0: 0.5, 1: 0.7, 2: 0.9}, "b": {0: 0.4, 2: 0.6}}
    assert paired(values, {"a": 1.0, "b": -1.0}) == pytest.approx({0: 0.1, 2: 0.3})
    assert paired(values, {"a": 1.0, "b": -1.0}, sign=-1.0) == pytest.approx({0: -0.1, 2: -0.3})
    assert decide(0.02, 0.05, 0.01) == "better" and decide(-0.005, 0.005, 0.01) == "equivalent"
    assert decide(-0.05, -0.02, 0.01) == "worse" and decide(-0.02, 0.05, 0.01) == "undecided"


def test_only_configurations_of_undecided_comparisons_get_seeds():
    comps = [SimpleNamespace(name="x", weights={"base": 1.0, "no_x": -1.0}, note=""),
             SimpleNamespace(name="y", weights={"base": 1.0, "no_y": -1.0}, note="")]
    values = {"base": {0: 0.60, 1: 0.61}, "no_x": {0: 0.30, 1: 0.31}, "no_y": {0: 0.55, 1: 0.66}}
    dec = race(values, comps, 2, 4, 0.01)
    assert [d.decision for d in dec] == ["better", "undecided"] and dec[0].seeds == 2
    assert to_extend(dec, comps, {"base": 2, "no_x": 2, "no_y": 2}, 4) == ["base", "no_y"]
    assert to_extend(dec, comps, {"base": 4, "no_x": 2, "no_y": 4}, 4) == []


# ----- the searcher: what Optuna records ----------------------------------------------------


def _drive(space, value):
    """Run the searcher's suggest/complete loop as Tune would (two trials at a time, at
    most ``trial_count()`` trials: Tune's num_samples)."""
    from vldistill.platform.searcher import DefineByRun, SeededOptunaSearch
    from vldistill.search_spaces.loader import grid_sampler

    searcher = SeededOptunaSearch(space=DefineByRun(space), metric="novel_acc", mode="max",
                                  sampler=grid_sampler(space), seeds=space.seeds, search_space=space)
    running, n, taken = [], 0, []
    while True:
        while len(running) < 2 and n < space.trial_count():
            cfg = searcher.suggest(f"t{n}")
            if cfg is None or cfg == searcher.FINISHED:
                break
            running.append((f"t{n}", cfg))
            n += 1
        if not running:
            break
        tid, cfg = running.pop(0)
        taken.append(cfg)
        searcher.on_trial_complete(tid, {"novel_acc": value(cfg), "epoch": 1, "epochs": 1})
    return searcher, taken


def _recorded(searcher) -> dict:
    return {t.params["design"] if "design" in t.params else tuple(sorted(t.params.items())): t.value
            for t in searcher._ot_study.trials}


def test_optuna_records_the_mean_over_seeds_under_racing():
    from vldistill.search_spaces import search_space_from_dict

    space = search_space_from_dict({
        "name": "r", "metric": "novel_acc", "mode": "max", "scheduler": "none",
        "seeds": {"min": 2, "max": 4, "margin": 0.01},
        "design": {"type": "loco", "components": {"x": {"distill.weights.mse": 1.0},
                                                  "y": {"distill.weights.im_cst": 1.0}}}}, "r.yaml")
    noise = {0: 0.0, 1: 0.3, 2: -0.3, 3: 0.1}  # y: a zero effect under large seed noise

    def value(cfg):
        s = cfg["seed"]
        return {"base": 0.6 + 0.0001 * s, "no_x": 0.3 + 0.0001 * s,
                "no_y": 0.6 + noise[s]}[cfg["__design__"]]

    searcher, taken = _drive(space, value)
    seeds = {}
    for cfg in taken:
        seeds.setdefault(cfg["__design__"], []).append(cfg["seed"])
    # x is decided on 2 seeds; y stays undecided, so base and no_y race on to max.
    assert {k: sorted(v) for k, v in seeds.items()} == {
        "base": [0, 1, 2, 3], "no_x": [0, 1], "no_y": [0, 1, 2, 3]}
    assert taken[-1]["distill.weights.im_cst"] == 1.0 or taken[-1]["__design__"] == "base"
    expect = {name: statistics.mean(value({"__design__": name, "seed": s}) for s in ss)
              for name, ss in seeds.items()}
    assert _recorded(searcher) == pytest.approx(expect)
    assert len(searcher._ot_study.trials) == 3


def test_optuna_records_the_mean_over_fixed_seeds():
    from vldistill.search_spaces import search_space_from_dict

    space = search_space_from_dict({
        "name": "f", "metric": "novel_acc", "mode": "max", "sampler": "grid", "seeds": [3, 5, 7],
        "params": {"distill.weights.mse": {"grid": [0.0, 1.0]}}}, "f.yaml")

    def value(cfg):
        return 0.1 * cfg["seed"] + cfg["distill.weights.mse"]

    searcher, taken = _drive(space, value)
    assert len(taken) == 6
    assert _recorded(searcher) == pytest.approx({
        (("distill.weights.mse", 0.0),): 0.5, (("distill.weights.mse", 1.0),): 1.5})


def test_seeds_to_decide_projects_the_observed_mean_and_sd_by_hand():
    # d = [0.05, 0.10]: mean 0.075, sd 0.035355. Margin 0.01, one look at 0.05:
    # n=3: t_2 = 4.3027 -> half-width 0.08783, low -0.0128 (undecided);
    # n=4: t_3 = 3.1824 -> half-width 0.05626, low +0.0187 > 0.01 -> better.
    assert seeds_to_decide([0.05, 0.10], 0.01, 0.05) == (4, "better")
    assert seeds_to_decide([-0.05, -0.10], 0.01, 0.05) == (4, "worse")
    # mean 0.011 with sd 0.0141: the mean is 0.001 beyond the margin, 0.07 sd -> ~800 seeds.
    assert seeds_to_decide([0.001, 0.021], 0.01, 0.05) == (None, "undecided")
    # mean ~0, sd 0.0014: inside +-0.01 at the next seed -> equivalent.
    assert seeds_to_decide([0.001, -0.001], 0.01, 0.05) == (3, "equivalent")
    assert seeds_to_decide([0.05], 0.01, 0.05) == (None, "undecided")
