"""Every method family on the embedded default, 3 seeds each, as plain `vldistill train` runs.

Methods (``vldistill train distill=<group>``): P1's ``cls`` baseline and ``p1_full``, P2
``dime_fm`` (label-free), P3 ``p3_{none,mix,random,contrastive}`` (no real training
image), P4 ``distillvlm`` (ViT student, embedded ViT teacher). One budget for all:
``--epochs`` epochs (default 10), evaluation at the end.

1. Shared assets first, one config at a time with every core (``prepare()``: the world,
   each teacher -- trained once and cached --, the teacher metrics and each P3 synthetic set),
   timed per method;
2. then every (method, seed) as its own process, ``--jobs`` at a time with 1 torch thread
   each, wall time per run recorded;
3. a Markdown table of mean ± standard deviation over seeds (base, novel, shift accuracy),
   the seconds per run, and the shared-asset seconds; rows also go to ``results.jsonl``.

    python benchmarks/methods_table.py --out runs/methods [--cache-dir DIR] [--epochs 10]

Runs already finished in ``--out`` are reused (delete the directory to start over).
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

# P3's synthetic set: 20 images per base class, 40 optimisation steps, 2 augmented views per
# step (defaults 10 / 100 / 4); the budget of this table, stated in docs/methods.md.
P3_SYNTH = ["data.synthetic.images_per_class=20", "data.synthetic.steps=40", "data.synthetic.cutouts=2"]
METHODS: dict[str, list[str]] = {
    "P1 cls (baseline)": ["distill=cls"],
    "P1 full (cls+im_cst+vlprox+cap, descriptors)": ["distill=p1_full"],
    "P2 DIME-FM (vld+pvld, no labels)": ["distill=dime_fm"],
    "P3 none": ["distill=p3_none", *P3_SYNTH],
    "P3 mix": ["distill=p3_mix", *P3_SYNTH],
    "P3 random": ["distill=p3_random", *P3_SYNTH],
    "P3 contrastive": ["distill=p3_contrastive", *P3_SYNTH],
    "P4 DistillVLM (vit_tiny <- embedded ViT)": ["distill=distillvlm"],
}
METRICS = ("base_acc", "novel_acc", "shift_acc")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.split(" (")[0]).strip("_").lower()


def prepare_all(common: list[str], out: Path) -> dict[str, float]:
    """Shared assets per method (in this process, all threads); seconds per method."""
    from vldistill.platform.cli import load_train_config
    from vldistill.trainers.loop import prepare

    path = out / "shared_seconds.json"
    seconds = json.loads(path.read_text()) if path.is_file() else {}
    for label, over in METHODS.items():
        if label in seconds:
            continue
        t0 = time.time()
        prepare(load_train_config([*common, *over, "seed=0", "progress=true"]))
        seconds[label] = round(time.time() - t0, 1)
        print(f"shared assets of {label}: {seconds[label]:.0f} s", flush=True)
        path.write_text(json.dumps(seconds, indent=1))
    return seconds


def run_one(out: Path, label: str, seed: int, common: list[str]) -> dict:
    run_dir = out / f"{_slug(label)}-seed{seed}"
    if not (run_dir / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "vldistill.platform.cli", "train", *common, *METHODS[label],
               f"seed={seed}", f"out_dir={run_dir}", "threads=1", "progress=false"]
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            raise RuntimeError(f"{label} seed {seed} failed:\n{proc.stderr[-3000:]}")
        (run_dir / "seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    m = json.loads((run_dir / "metrics.json").read_text())
    m["run_seconds"] = float((run_dir / "seconds.txt").read_text())
    return m


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/methods"))
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="method labels (prefix match)")
    args = ap.parse_args()
    if args.only:
        for label in list(METHODS):
            if not any(label.startswith(p) for p in args.only):
                del METHODS[label]
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"optim.epochs={args.epochs}", f"eval.every={args.epochs}"]
    if args.cache_dir:
        common.append(f"cache_dir={args.cache_dir}")
    t_all = time.time()
    shared = prepare_all(common, args.out)
    jobs = [(label, seed) for label in METHODS for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: (j, run_one(args.out, j[0], j[1], common)), jobs))
    by: dict[str, list[dict]] = {}
    with open(args.out / "results.jsonl", "w") as f:
        for (label, seed), m in results:
            by.setdefault(label, []).append(m)
            f.write(json.dumps({"method": label, "seed": seed, "run_seconds": m["run_seconds"],
                                **{k: m[k] for k in (*METRICS, "hmean", "student_params", "student_flops")
                                   if k in m}}) + "\n")
    print(f"\n{len(jobs)} runs, {args.epochs} epochs each, seeds {args.seeds}; "
          f"total {time.time() - t_all:.0f} s (shared assets {sum(shared.values()):.0f} s)\n")
    print("| method | base acc | novel acc | shift acc | s/run | shared s | command |")
    print("|---|---|---|---|---|---|---|")
    for label, ms in by.items():
        cells = [fmt([m[k] for m in ms]) for k in METRICS]
        secs = statistics.mean(m["run_seconds"] for m in ms)
        cmd = "vldistill train " + " ".join([*METHODS[label], *common, "seed=S"])
        print(f"| {label} | {' | '.join(cells)} | {secs:.0f} | {shared.get(label, 0):.0f} | `{cmd}` |")


if __name__ == "__main__":
    main()
