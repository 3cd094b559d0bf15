"""P1's loss ablation on the embedded default, 3 seeds each, as plain `vldistill train` runs.

Runs every (loss combination, seed) as its own process (``--jobs`` at a time, 1 torch
thread each: two 1-thread trials beat one 2-thread trial on 2 cores, docs/benchmarks.md), then
prints a Markdown table of mean +- standard deviation over seeds, and which pairs of
combinations differ on novel accuracy by more than their spread (max - min over seeds).

    python benchmarks/p1_losses.py --out runs/p1_losses [--cache-dir DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COMBOS = {"cls": "cls", "cls+mse": "cls_mse", "cls+im_cst": "cls_im_cst",
          "cls+im_cst+vlprox": "cls_im_cst_vlprox"}
METRICS = ("base_acc", "novel_acc", "novel_acc/compositional", "novel_acc/semantic",
           "shift_acc", "shift_acc/sketch", "shift_acc/painting", "shift_acc/noisy")


def run_one(out: Path, combo: str, seed: int, extra: list[str]) -> dict:
    run_dir = out / f"{COMBOS[combo]}-seed{seed}"
    if not (run_dir / "metrics.json").is_file():
        cmd = ["vldistill", "train", f"distill={COMBOS[combo]}", f"seed={seed}",
               f"out_dir={run_dir}", "threads=1", "progress=false", *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads((run_dir / "metrics.json").read_text())


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/p1_losses")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    extra = list(args.overrides) + ([f"cache_dir={args.cache_dir}"] if args.cache_dir else [])
    # The first run trains/caches the teacher and world; the rest reuse them.
    t0 = time.time()
    first = run_one(out, "cls", args.seeds[0], extra)
    jobs = [(c, s) for c in COMBOS for s in args.seeds if (c, s) != ("cls", args.seeds[0])]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda cs: run_one(out, cs[0], cs[1], extra), jobs))
    rows = {("cls", args.seeds[0]): first, **dict(zip(jobs, results))}
    wall = time.time() - t0
    print(f"| losses | {' | '.join(METRICS)} | s/trial |")
    print("|---" * (len(METRICS) + 2) + "|")
    novel = {}
    for combo in COMBOS:
        ms = [rows[(combo, s)] for s in args.seeds]
        novel[combo] = [m["novel_acc"] for m in ms]
        secs = statistics.mean(m["wall_seconds"] for m in ms)
        print(f"| {combo} | " + " | ".join(fmt([m[k] for m in ms]) for k in METRICS) + f" | {secs:.0f} |")
    t = rows[("cls", args.seeds[0])]
    print("| teacher | " + " | ".join(f"{100 * t['teacher/' + k]:.1f}" for k in METRICS) + " | |")
    print("\nfloors: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(t.items())
                                     if k.startswith(("floor/", "chance/"))))
    print(f"eval images: base {t['n/base']}, novel {t['n/novel']}, per shifted domain "
          f"{t['n/shift/sketch']}; wall time of the whole table {wall / 60:.1f} min")
    print("\nnovel_acc pairs whose gap exceeds both spreads (max - min over seeds):")
    names = list(COMBOS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gap = abs(statistics.mean(novel[a]) - statistics.mean(novel[b]))
            spread = max(max(novel[a]) - min(novel[a]), max(novel[b]) - min(novel[b]))
            if gap > spread:
                print(f"  {a} vs {b}: gap {100 * gap:.1f} > spread {100 * spread:.1f}")
    json.dump({f"{c}/seed{s}": m for (c, s), m in rows.items()}, open(out / "all.json", "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
