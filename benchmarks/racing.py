"""Benchmark (d): racing seeds (min 2, max 8) vs. fixed 8 seeds on the default 2x2 question
(or on another space with comparisons: ``--space p1_loco``).

The ``default`` search space (cls + {im_cst, vlprox}, a 2x2 factorial whose comparisons
are the two main effects) on the embedded world, run twice in one invocation:

* racing: ``seeds: {min: 2, max: 8, margin: 0.01, futility: 0.1, variance: pooled}`` -- seeds
  are added a round at a time only while a main effect is undecided and not futile
  (``vldistill/platform/racing.py``; ``--futility 0`` races every undecided one to max,
  ``--variance paired`` takes each comparison's sd from its own differences);
* fixed: ``seeds: [0, ..., 7]`` -- every configuration runs 8 seeds; the report's decisions
  then rest on one look at 8 seeds (same margin, alpha, Holm).

Printed: trials and summed trial seconds of each side, their ratio (target: racing <= 60%
of fixed-8's trials), and per comparison both decisions with interval and seeds (target:
every comparison fixed-8 decides, racing decides the same way or leaves undecided).

One race is one draw: which seeds come first decides when it stops. So the fixed-8 side's
32 measured values are also raced again offline (no training: :func:`replay`), in
``--orders`` random orders of its 8 seeds, with pooled and with paired variance: the mean
trials, the share of orders within 60% of fixed-8, and the share whose decisions agree with
fixed-8's. The JSON (``--out``) keeps every trial's value for later replays: ``--replay
JSON`` races a stored run's fixed-8 values again with this checkout's code, no training.

    python benchmarks/racing.py [--space default] [--epochs 10] [--futility 0.1] [--variance pooled]
                                [--orders 200] [--cache-dir DIR] [overrides ...]
    python benchmarks/racing.py --replay benchmarks/data/racing-2026-12-07.json

``--epochs`` below the default space's 10 makes it cheaper (say so when quoting numbers).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _values(sweep_dir: Path) -> dict:
    """``{config: {seed: novel_acc}}`` of a sweep's completed trials."""
    from vldistill.platform.report import load_sweep
    from vldistill.platform.report.decisions import config_values
    from vldistill.search_spaces import load_search_space

    space = load_search_space(str(sweep_dir / "search_space.yaml"))
    return config_values(space, load_sweep(sweep_dir).done, "novel_acc")


def _comparisons(sweep_dir: Path) -> list:
    from vldistill.search_spaces import load_search_space
    from vldistill.search_spaces.designs import space_comparisons

    return space_comparisons(load_search_space(str(sweep_dir / "search_space.yaml")))


def _decisions(sweep_dir: Path) -> dict:
    from vldistill.platform.report import load_sweep
    from vldistill.platform.report.decisions import comparison_decisions
    from vldistill.search_spaces import load_search_space

    space = load_search_space(str(sweep_dir / "search_space.yaml"))
    sw = load_sweep(sweep_dir)
    return {d.name: d for d in comparison_decisions(space, sw.done, "novel_acc", "max")}


def replay(values: dict, comps: list, r: dict, order: list[int]) -> tuple[int, dict]:
    """Race ``values`` (``{config: {seed: metric}}``, every seed measured) as the searcher
    would, the seeds arriving in ``order``: the trials it takes and its decisions."""
    from vldistill.platform.racing import race, to_extend

    held = {c: r["min"] for c in values}
    while True:
        seen = {c: {i: values[c][s] for i, s in enumerate(order[:held[c]])} for c in values}
        dec = race(seen, comps, r["min"], r["max"], r["margin"], r["alpha"], 1.0, r["futility"],
                   r["variance"])
        extend = to_extend(dec, comps, held, r["max"])
        if not extend:
            return sum(held.values()), {d.name: d.decision for d in dec}
        for c in extend:
            held[c] += 1


def replay_orders(values: dict, comps: list, racing: dict, fixed: dict, n_orders: int) -> dict:
    """Race fixed-8's ``values`` again in ``n_orders`` random orders of its seeds, pooled and
    paired (the rest of ``racing`` as given); print and return mean trials, the share of
    orders within 60% of fixed-8's trials and the share agreeing with ``fixed``'s decisions."""
    n_fixed = sum(len(v) for v in values.values())
    rng = random.Random(0)
    seeds = sorted(next(iter(values.values())))
    orders = [rng.sample(seeds, len(seeds)) for _ in range(n_orders)]
    out, rows = {}, []
    for variance in ("pooled", "paired"):
        runs = [replay(values, comps, {**racing, "variance": variance}, o) for o in orders]
        ok = [all(f == "undecided" or d[n] in (f, "undecided") for n, f in fixed.items()) for _, d in runs]
        trials = [t for t, _ in runs]
        out[variance] = {"mean_trials": statistics.mean(trials),
                         "share_within_60": sum(t <= 0.6 * n_fixed for t in trials) / len(trials),
                         "share_agree": sum(ok) / len(ok)}
        rows.append([variance, f"{out[variance]['mean_trials']:.1f}",
                     f"{out[variance]['mean_trials'] / n_fixed:.2f}",
                     f"{out[variance]['share_within_60']:.0%}", f"{out[variance]['share_agree']:.0%}"])
    print(f"fixed-8's values raced again in {n_orders} random seed orders (futility {racing['futility']}):")
    print(C.fmt_table(["variance", "mean trials", "of fixed-8", "orders <= 60%", "orders agreeing"], rows))
    return out


def replay_file(path: str, space: str, racing: dict, n_orders: int) -> int:
    """``--replay``: race a stored run's fixed-8 values again with this checkout's racing code
    (no training): how a change to the method moves the saving on the same measurements."""
    import json

    from vldistill.platform.racing import race
    from vldistill.search_spaces import load_search_space
    from vldistill.search_spaces.designs import space_comparisons

    data = json.loads(Path(path).read_text())
    values = {c: {int(s): v for s, v in by_seed.items()} for c, by_seed in data["values"]["fixed8"].items()}
    comps = space_comparisons(load_search_space(space))
    n = len(next(iter(values.values())))
    fixed = {d.name: d.decision for d in race(values, comps, n, n, racing["margin"], racing["alpha"])}
    print(f"[racing] replaying {path}: fixed-{n} decisions {fixed}")
    out = replay_orders(values, comps, racing, fixed, n_orders)
    return 0 if out["pooled"]["share_agree"] == 1.0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="default",
                    help="a shipped space or .yaml with comparisons (a design, or a grid with baselines)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--futility", type=float, default=0.1,
                    help="the racing side's seeds.futility (0: race every undecided comparison to max)")
    ap.add_argument("--variance", default="pooled", choices=["pooled", "paired"],
                    help="the racing side's seeds.variance")
    ap.add_argument("--orders", type=int, default=200,
                    help="random seed orders in which fixed-8's values are raced again offline")
    ap.add_argument("--work", default=None, help="default /tmp/bench-racing-<time>")
    ap.add_argument("--cache-dir", default="/tmp/vlcache-default")
    ap.add_argument("--out", default="/tmp/bench-racing.json")
    ap.add_argument("--replay", metavar="JSON", default=None,
                    help="no sweeps: race a stored run's fixed-8 values (its --out JSON) again in --orders orders")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial (both sides)")
    a = ap.parse_args()
    racing = {"min": 2, "max": 8, "margin": 0.01, "alpha": 0.05, "futility": a.futility,
              "variance": a.variance}
    if a.replay:
        return replay_file(a.replay, a.space, racing, a.orders)
    from vldistill.search_spaces import load_search_space

    base = load_search_space(a.space).to_dict()
    base.pop("seeds", None)
    work = Path(a.work or f"/tmp/bench-racing-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    ov = [f"cache_dir={Path(a.cache_dir).resolve()}", f"optim.epochs={a.epochs}",
          f"eval.every={a.epochs}", "progress=false", *a.overrides]
    spaces = {"racing": C.write_space(work / "racing.yaml", {**base, "name": "racing", "seeds": racing}),
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
    values = _values(work / "fixed8")
    fixed = {n: d.decision for n, d in dec["fixed8"].items()}
    replays = replay_orders(values, _comparisons(work / "fixed8"), racing, fixed, a.orders)
    C.write_json(a.out, {"machine": info, "overrides": ov, "racing": racing, "sides": res, "ratio": ratio,
                         "agree": agree, "decisions": {k: {n: d.line() for n, d in v.items()}
                                                       for k, v in dec.items()},
                         "values": {k: _values(work / k) for k in spaces}, "replays": replays})
    return 0 if ratio <= 0.6 and agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
