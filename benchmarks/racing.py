"""Benchmark (d): racing seeds (min 2, max 8) vs. fixed 8 seeds on the default 2x2 question
(or on another space with comparisons: ``--space p1_loco``).

The ``default`` search space (cls + {im_cst, vlprox}, a 2x2 factorial whose comparisons
are the two main effects) on the embedded world, run twice in one invocation:

* racing: ``seeds: {min: 2, max: 8, margin: 0.01, futility: 0.1}`` -- seeds are added a
  round at a time only while a main effect is undecided and not futile
  (``vldistill/platform/racing.py``; ``--futility 0`` races every undecided one to max);
* fixed: ``seeds: [0, ..., 7]`` -- every configuration runs 8 seeds; the report's decisions
  then rest on one look at 8 seeds (same margin, alpha, Holm).

Printed: trials and summed trial seconds of each side, their ratio (target: racing <= 60%
of fixed-8's trials), and per comparison both decisions with interval and seeds (target:
every comparison fixed-8 decides, racing decides the same way or leaves undecided).

    python benchmarks/racing.py [--space default] [--epochs 10] [--futility 0.1] [--cache-dir DIR] [overrides ...]

``--epochs`` below the default space's 10 makes it cheaper (say so when quoting numbers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _decisions(sweep_dir: Path) -> dict:
    from vldistill.platform.report import load_sweep
    from vldistill.platform.report.decisions import comparison_decisions
    from vldistill.search_spaces import load_search_space

    space = load_search_space(str(sweep_dir / "search_space.yaml"))
    sw = load_sweep(sweep_dir)
    return {d.name: d for d in comparison_decisions(space, sw.done, "novel_acc", "max")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="default",
                    help="a shipped space or .yaml with comparisons (a design, or a grid with baselines)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--futility", type=float, default=0.1,
                    help="the racing side's seeds.futility (0: race every undecided comparison to max)")
    ap.add_argument("--work", default=None, help="default /tmp/bench-racing-<time>")
    ap.add_argument("--cache-dir", default="/tmp/vlcache-default")
    ap.add_argument("--out", default="/tmp/bench-racing.json")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial (both sides)")
    a = ap.parse_args()
    from vldistill.search_spaces import load_search_space

    base = load_search_space(a.space).to_dict()
    base.pop("seeds", None)
    work = Path(a.work or f"/tmp/bench-racing-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    ov = [f"cache_dir={Path(a.cache_dir).resolve()}", f"optim.epochs={a.epochs}",
          f"eval.every={a.epochs}", "progress=false", *a.overrides]
    spaces = {"racing": C.write_space(work / "racing.yaml", {
                  **base, "name": "racing",
                  "seeds": {"min": 2, "max": 8, "margin": 0.01, "alpha": 0.05,
                            "futility": a.futility}}),
              "fixed8": C.write_space(work / "fixed8.yaml", {**base, "name": "fixed8",
                                                             "seeds": list(range(8))})}
    info = C.machine_info()
    print(f"[racing] work dir {work}; {info['cpus']} CPUs; overrides {ov}", flush=True)
    res, dec = {}, {}
    for name in ("racing", "fixed8"):
        print(f"  sweep {name} ...", flush=True)
        r = C.run_sweep_side(spaces[name], work / name, ov)
        res[name] = {"trials": len(r["rows"]), "wall_seconds": r["wall_seconds"],
                     "trial_seconds": sum(x["wall_seconds"] for x in r["rows"])}
        dec[name] = _decisions(work / name)
    ratio = res["racing"]["trials"] / res["fixed8"]["trials"]
    print(C.fmt_table(["side", "trials", "trial seconds", "sweep wall s"],
                      [[k, v["trials"], v["trial_seconds"], v["wall_seconds"]] for k, v in res.items()]))
    print(f"racing / fixed-8 trials: {ratio:.2f} (target <= 0.60)")
    rows, agree = [], True
    for name, f in dec["fixed8"].items():
        r = dec["racing"][name]
        ok = f.decision == "undecided" or r.decision in (f.decision, "undecided")
        agree &= ok
        rows.append([name, r.line(), f.line(), "yes" if ok else "NO"])
    print(C.fmt_table(["comparison", "racing", "fixed 8", "agree"], rows))
    C.write_json(a.out, {"machine": info, "overrides": ov, "futility": a.futility, "sides": res, "ratio": ratio,
                         "agree": agree, "decisions": {k: {n: d.line() for n, d in v.items()}
                                                       for k, v in dec.items()}})
    return 0 if ratio <= 0.6 and agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
