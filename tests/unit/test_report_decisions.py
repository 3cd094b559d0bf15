"""The report's decisions section: replayed from the rows of a design sweep, at its head,
with the effects plot; identical architectures are not split on timing noise."""

import json

import yaml

from vldistill.platform.report import build_report
from vldistill.search_spaces import search_space_from_dict

SPACE = {"name": "loco_t", "metric": "novel_acc", "mode": "max", "scheduler": "none",
         "seeds": {"min": 2, "max": 4, "margin": 0.01},
         "design": {"type": "loco", "base": {"distill.weights.mse": 1.0},
                    "components": {"mse": {"distill.weights.mse": 0.0},
                                   "im_cst": {"distill.weights.im_cst": 0.0}}}}


def _row(i, point, seed, acc, latency):
    mse = 0.0 if point == "no_mse" else 1.0
    return {"trial_id": f"t{i}", "status": "completed", "error": None, "seed": seed,
            "design_point": point, "params": {"distill.weights.mse": mse,
                                              "distill.weights.im_cst": 0.0 if point == "no_im_cst" else 1.0},
            "config": {"optim.epochs": 1}, "epochs": 1, "planned_epochs": 1, "wall_seconds": 1.0,
            "resources": {"cpu": 1, "gpu": 0, "workers": 1},
            "metrics": {"novel_acc": acc, "student_params": 11e6, "student_flops": 1e9,
                        "student_latency_ms": latency, "n/novel": 360, "n/base": 360,
                        "n/shift/sketch": 120, "n/train": 1000}}


def test_decisions_head_the_report(tmp_path):
    space = search_space_from_dict(SPACE, "t.yaml")
    (tmp_path / "search_space.yaml").write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    rows, i = [], 0
    # mse: removing it costs 0.3 on every seed (decided at 2 seeds); im_cst: noise only.
    for seed, noise in enumerate([0.0, 0.2, -0.2, 0.1]):
        for point, acc in (("base", 0.6 + 1e-4 * seed), ("no_im_cst", 0.6 + noise)):
            rows.append(_row(i, point, seed, acc, 7.76)); i += 1
        if seed < 2:
            rows.append(_row(i, "no_mse", seed, 0.3 + 1e-4 * seed, 7.76)); i += 1
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = build_report(tmp_path)
    md = files["report.md"].read_text()
    first = md.index("## ")
    assert md[first:].startswith("## Decisions")
    assert ("raced: seeds 2-4, a seed per round to undecided comparisons (stopped for futility "
            "below a 10% chance of a decision by 4; 1% before 4 seeds)") in md
    assert "- mse: better, +0.3000 [" in md and ", 2 seeds" in md
    assert "- im_cst: undecided at the budget, " in md and "4 seeds" in md
    assert "plots/effects.png" in md and (tmp_path / "plots" / "effects.png").is_file()
    # Why im_cst is undecided: its 4 paired differences (base - no_im_cst) are
    # [0, -0.1999, +0.2002, -0.0997]: mean -0.0249, sd 0.1708; |mean| - margin = 0.0149,
    # 0.09 sd -> no run of up to 64 seeds would decide it.
    assert "- why im_cst is undecided: at 4 seeds its interval is" in md
    assert "(seed-to-seed sd of the paired difference 0.1708)" in md and "0.09 sd" in md
    assert "no run of up to 64 seeds" in md and "why mse is undecided" not in md
    # The design's base point is the headline's baseline (c1 = the base), and the factor
    # tables read against it; the old unpaired leave-one-out section defers to Decisions.
    assert "Baseline = the loco design's base point `base`: `c1`." in md
    assert "Δ 0 − 1" in md
    # The evaluation sets' sizes, and the binomial half-width on 360 novel images:
    # 1.96 * sqrt(0.25 / 360) = 0.0516.
    assert "default 300): novel 360, base 360, shift/sketch 120." in md and "±0.052" in md
    loco = md[md.index("## 3. Leave one loss component out"):md.index("## 4.")]
    assert "is a `loco` design" in loco and "|" not in loco
    html = files["report.html"].read_text()
    assert html.index("Decisions") < html.index("Pareto")
    # One architecture (ResNet-18), one cached latency: the less accurate configurations are
    # dominated at equal cost, never "cheaper" on timing noise.
    pareto = md[md.index("**Pareto-optimal configurations**"):].split("\n\n")[1]
    lines = [ln for ln in pareto.splitlines()[2:] if "student_latency_ms" in ln]
    assert len(lines) == 1 and "7.76 ms" in lines[0], pareto  # one of three, not two


def test_two_trials_of_one_architecture_get_one_latency(tmp_path):
    import torch

    from vldistill.trainers.evaluation import LATENCY_PROTOCOL, cached_latency

    def net():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))

    student = {"name": "tiny", "kwargs": {}, "image_size": 8}
    first = cached_latency(net(), 8, 30, student, str(tmp_path))
    second = cached_latency(net(), 8, 30, student, str(tmp_path))
    assert first == second and set(first) == {"student_latency_ms", "student_latency_ms_b8"}
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["protocol"]["min_iters"] == 30
    assert LATENCY_PROTOCOL["batches"] == [1, 8] and LATENCY_PROTOCOL["warmup"] == 5
    # the stored value wins over a new measurement (a trial that measured concurrently)
    files[0].write_text(json.dumps({"key": {}, "values": {"student_latency_ms": 7.5}}))
    assert cached_latency(net(), 8, 30, student, str(tmp_path)) == {"student_latency_ms": 7.5}
    # another architecture: its own entry
    cached_latency(net(), 8, 30, {**student, "name": "tiny2"}, str(tmp_path))
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2


def test_a_factorial_on_two_fixed_seeds_decides_with_the_pooled_sd(tmp_path):
    # The README's main job's shape: a 2x2 grid with baselines (the two main effects are its
    # comparisons), fixed seeds [0, 1], one look.
    space = search_space_from_dict({
        "name": "f22", "metric": "novel_acc", "mode": "max", "sampler": "grid", "scheduler": "none",
        "num_samples": 4, "seeds": [0, 1],
        "params": {"distill.weights.im_cst": {"grid": [0.0, 1.0], "baseline": 0.0},
                   "distill.weights.vlprox": {"grid": [0.0, 1.0], "baseline": 0.0}}}, "f.yaml")
    (tmp_path / "search_space.yaml").write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    acc = {(0.0, 0.0): [0.50, 0.52], (1.0, 0.0): [0.56, 0.60], (0.0, 1.0): [0.51, 0.55], (1.0, 1.0): [0.58, 0.61]}
    rows = []
    for (im, vl), per_seed in acc.items():
        for seed, value in enumerate(per_seed):
            row = _row(len(rows), "x", seed, value, 7.76)
            row.pop("design_point")
            row["params"] = {"distill.weights.im_cst": im, "distill.weights.vlprox": vl}
            rows.append(row)
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = build_report(tmp_path)["report.md"].read_text()
    assert "their seed-to-seed sd pooled over the 4 configurations' residual" in md
    # Per seed: im_cst [0.065, 0.070], vlprox [0.015, 0.020], interaction [0.005, -0.010];
    # their variances 1.25e-5, 1.25e-5, 1.125e-4 pool to 4.5833e-5 (3 df): sd 0.0067700.
    # im_cst (Holm's first, alpha/2): 0.0675 +- t_3(0.9875) 4.1765 * 0.00677 / sqrt(2) = 0.0200
    # -> better; vlprox (alpha): 0.0175 +- t_3(0.975) 3.1824 * 0.00677 / sqrt(2) = 0.0152
    # -> [+0.0023, +0.0327], across the +0.01 margin: undecided. (Paired, each with 1 df and
    # t 12.7 or 25.5, neither would be decided.)
    assert "- im_cst: better, +0.0675 [+0.0475, +0.0875], 2 seeds" in md
    assert "- vlprox: undecided at the budget, +0.0175 [+0.0023, +0.0327], 2 seeds" in md
    assert ("why vlprox is undecided: at 2 seeds its interval is ±0.0152 (seed-to-seed sd 0.0068, "
            "pooled over the 4 configurations' residual, 3 df)") in md
