"""Benchmark (c): ASHA early stopping vs. none -- compute used and best novel accuracy found.

The same TPE sweep (sampler seed 0) of 8 configurations over ``optim.lr`` (loguniform) and
``distill.weights.im_cst`` (choice 0 / 1) on the embedded default world and teacher (from
``--cache-dir``), with fewer training and evaluation images per class so an epoch is cheap,
evaluated every epoch (ASHA compares ``novel_acc`` at its rungs; both sides pay it), 1 CPU
per trial (2 side by side), run twice in one invocation:

* ``scheduler: {type: asha, max_t: E, grace_period: 1, reduction_factor: 2}``;
* ``scheduler: none`` (every trial trains E epochs).

Note: Optuna's TPE samples its first 10 trials at random (``n_startup_trials``), so with 8
configurations and the same seed both sweeps draw the *same* 8 configurations -- the
comparison isolates what early stopping saves and whether it drops the best one. The
script checks and prints whether the configurations matched.

Printed: compute used (epochs trained, summed trial wall_seconds, sweep wall time), the
best novel_acc found (among trials that ran all epochs, as the sweep's summary picks it,
and among all trials), and the ratios none / ASHA.

    python benchmarks/asha_vs_none.py [--quick] [--out /tmp/bench-asha_vs_none.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

FULL = dict(samples=8, epochs=8, images_per_class=20, max_eval_per_class=20, repeats=1)
QUICK = dict(samples=3, epochs=2, images_per_class=4, max_eval_per_class=3, repeats=1)


def _best(rows: list[dict], completed_only: bool) -> dict | None:
    cand = [r for r in rows if "novel_acc" in r["metrics"] and (r["status"] == "completed" or not completed_only)]
    return max(cand, key=lambda r: r["metrics"]["novel_acc"]) if cand else None


def _key(params: dict) -> tuple:
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    ap.add_argument("--out", default=None, help="raw numbers (JSON); default /tmp/bench-asha_vs_none[-quick].json")
    ap.add_argument("--work", default=None, help="default /tmp/bench-asha_vs_none-<time>")
    ap.add_argument("--cache-dir", default=None,
                    help="holds the embedded world and teacher; default <work>/cache, private to this run "
                         "(written before timing starts, ~4 min on an empty one)")
    ap.add_argument("--sampler-seed", type=int, default=0)
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"default {v} (quick {QUICK[k]})")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial (both sides)")
    a = ap.parse_args()
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    tag = "asha_vs_none" + ("-quick" if a.quick else "")
    work = Path(a.work or f"/tmp/bench-{tag}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out_json = Path(a.out or f"/tmp/bench-{tag}.json")
    E = a.epochs
    ov = [f"cache_dir={Path(a.cache_dir).resolve() if a.cache_dir else work / 'cache'}", f"optim.epochs={E}", "eval.every=1",
          f"data.images_per_class={a.images_per_class}", f"data.max_eval_per_class={a.max_eval_per_class}",
          "eval.latency_iters=5", "progress=false", *a.overrides]
    info = C.machine_info()
    print(f"[{tag}] work dir {work}; {info['cpus']} CPUs, load {info['load1_at_start']:.2f}", flush=True)

    def space(scheduler) -> dict:
        return {"name": "asha_vs_none", "description": "benchmark (c): ASHA vs no early stopping",
                "metric": "novel_acc", "mode": "max", "sampler": "tpe", "sampler_seed": a.sampler_seed,
                "scheduler": scheduler, "num_samples": a.samples, "seeds": [0],
                "resources": {"cpu": 1, "gpu": 0, "workers": 1},
                "params": {"optim.lr": {"loguniform": [3.0e-4, 1.0e-2]},
                           "distill.weights.im_cst": {"choice": [0.0, 1.0], "baseline": 0.0}}}

    spaces = {"asha": C.write_space(work / "asha.yaml", space(
                  {"type": "asha", "max_t": E, "grace_period": 1, "reduction_factor": 2})),
              "none": C.write_space(work / "none.yaml", space("none"))}
    runs: dict[str, list[dict]] = {"none": [], "asha": []}
    # The shared assets (world, teacher, teacher cache) are written before any side is timed,
    # so neither side pays them and the first side does not warm the cache for the second.
    print("  preparing the shared assets (not timed) ...", flush=True)
    C.prepare_assets(work, ov)
    for i, s in enumerate(C.side_order(a.repeats)):
        name = ("none", "asha")[s]
        print(f"  sweep {i + 1}/{2 * a.repeats}: {name} ...", flush=True)
        r = C.run_sweep_side(spaces[name], work / f"{name}-{i}", ov)
        rows = r["rows"]
        r["epochs_sum"] = sum(row["epochs"] for row in rows)
        r["trial_seconds"] = sum(row["wall_seconds"] for row in rows)
        r["status_counts"] = {st: sum(row["status"] == st for row in rows) for st in sorted({x["status"] for x in rows})}
        r["trials"] = [{"params": row["params"], "status": row["status"], "epochs": row["epochs"],
                        "wall_seconds": row["wall_seconds"], "novel_acc": row["metrics"].get("novel_acc")}
                       for row in rows]
        for label, only in (("best_completed", True), ("best_any", False)):
            b = _best(rows, only)
            r[label] = None if b is None else {"novel_acc": b["metrics"]["novel_acc"], "params": b["params"],
                                               "status": b["status"], "epochs": b["epochs"]}
        print(f"    {r['wall_seconds']:.1f} s wall; {r['epochs_sum']} epochs, {r['trial_seconds']:.1f} trial-s; "
              f"{r['status_counts']}; best novel_acc "
              f"{(r['best_completed'] or {}).get('novel_acc', float('nan')):.3f}; load {r['load1_mean']:.2f}",
              flush=True)
        del r["rows"]
        runs[name].append(r)

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[name])

    same_configs = all({_key(t["params"]) for t in r["trials"]} == {_key(t["params"]) for t in runs["none"][0]["trials"]}
                       for r in runs["asha"] + runs["none"])
    # novel_acc each configuration reached after E epochs (from the no-early-stopping side).
    full = {_key(t["params"]): t["novel_acc"] for t in runs["none"][0]["trials"]}
    best_none = max(full.values())
    kept = [t for t in runs["asha"][0]["trials"] if t["status"] == "completed"]
    ratios = {"epochs": mean("none", "epochs_sum") / mean("asha", "epochs_sum"),
              "trial_seconds": mean("none", "trial_seconds") / mean("asha", "trial_seconds"),
              "sweep_wall": mean("none", "wall_seconds") / mean("asha", "wall_seconds")}
    asha_best = runs["asha"][0]["best_completed"]
    result = {"benchmark": "asha_vs_none", "quick": a.quick, "machine": info,
              "setup": {"samples": a.samples, "epochs": E, "overrides": ov, "sampler_seed": a.sampler_seed,
                        "spaces": {k: str(v) for k, v in spaces.items()}, "repeats": a.repeats},
              "runs": runs, "same_configs": same_configs, "compute_ratio_none_over_asha": ratios,
              "asha_kept_best_config": bool(asha_best) and same_configs and
              abs(full.get(_key(asha_best["params"]), -1) - best_none) < 1e-12}
    C.write_json(out_json, result)

    print()
    print(C.fmt_table(
        ["scheduler", "trials", "statuses", "epochs trained", "trial-seconds", "sweep wall s",
         "best novel_acc (completed)", "best novel_acc (any)", "load1 mean"],
        [[k, len(runs[k][0]["trials"]), " ".join(f"{s}={n}" for s, n in runs[k][0]["status_counts"].items()),
          mean(k, "epochs_sum"), mean(k, "trial_seconds"), mean(k, "wall_seconds"),
          (runs[k][0]["best_completed"] or {}).get("novel_acc", float("nan")),
          (runs[k][0]["best_any"] or {}).get("novel_acc", float("nan")), mean(k, "load1_mean")]
         for k in ("none", "asha")]))
    print()
    print(f"{a.samples} TPE configurations x {E} epochs (ASHA: grace 1, reduction 2, max_t {E}); "
          f"same configurations on both sides: {same_configs}")
    print(f"compute none / ASHA: epochs {ratios['epochs']:.2f}x, trial-seconds {ratios['trial_seconds']:.2f}x, "
          f"sweep wall {ratios['sweep_wall']:.2f}x")
    if asha_best:
        print(f"best found: none {best_none:.4f}, ASHA {asha_best['novel_acc']:.4f} "
              f"(ASHA's pick reaches {full.get(_key(asha_best['params']), float('nan')):.4f} without early stopping; "
              f"ASHA ran {len(kept)} of {a.samples} configurations to the end)")
    print(f"raw numbers: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
