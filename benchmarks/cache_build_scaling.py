"""Benchmark: the view-cache build scales with the cluster's teacher nodes.

Builds the same view cache (one open_clip teacher with random weights -- its cost does not
depend on them -- K views per training image) with the sweep's own Ray Data pipeline
(``platform.assets.build_view_cache``) on a ``ray.cluster_utils.Cluster`` whose head has
no CPU for tasks and which has 1, then 2 worker nodes of 1 CPU each (one actor per node,
one torch thread each). Sides run in the order 1, 2, 2, 1 (``--repeats 2``), each into a
fresh entry, in this one invocation; the world and the teacher's other assets are
prepared first, in a private cache, and are not timed.

Printed: wall seconds of each build, the *steady* images/s (forwards after the first
shard came back, over the time since: actor start-up -- imports, teacher loading -- is a
per-build constant, reported apart as the wall time) and the ratio 2 nodes / 1 node.
Target: >= 1.7.

    python benchmarks/cache_build_scaling.py [--repeats 2] [--views 8] [--teacher ViT-B-32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _prepare(args, cache: Path):
    from vldistill.platform.cli import load_train_config
    from vldistill.trainers.assets import prepare
    from vldistill.trainers.cache import plan_view_cache
    from vldistill.trainers.config import to_dict

    cfg = load_train_config(["experiment=smoke", f"augment.views={args.views}", "teacher=open_clip",
                             f"teacher.name={args.teacher}", "teacher.pretrained=null",
                             "data.max_eval_per_class=2", f"cache_dir={cache}", "progress=false"])
    splits, teacher, _, _ = prepare(cfg, build=True)
    plan = plan_view_cache(teacher, splits, cfg.data.image_size, cfg.augment, cfg.augment.views, cache)
    return to_dict(cfg), plan


def _side(nodes: int, cfg_dict: dict, plan, work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from vldistill.platform.assets import build_view_cache

    folder = work / f"entry-{nodes}-{time.time_ns()}"
    folder.mkdir(parents=True)
    shutil.copy(Path(plan.folder) / "manifest.txt", folder / "manifest.txt")
    fresh = dataclasses.replace(plan, folder=str(folder))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        with C.LoadSampler(2.0) as load:
            t = time.perf_counter()
            rec = build_view_cache(fresh, cfg_dict, {"cpu": 1.0, "gpu": 0.0, "fit": nodes, "max_actors": nodes})
            wall = time.perf_counter() - t
    finally:
        ray.shutdown()
        cluster.shutdown()
    meta = json.loads((folder / "meta.json").read_text())
    return {"nodes": nodes, "wall_s": wall, "steady": rec["steady_images_per_s"], "overall": rec["images_per_s"],
            "builders": len(meta["nodes"]), "forwards": meta["forwards"], "load": load.summary()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--views", type=int, default=8)  # 2 views: start-up dominated (see docs)
    ap.add_argument("--teacher", default="ViT-B-32")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(args.work or tempfile.mkdtemp(prefix="vld-scaling-"))
    os.environ["HOME"] = str(work / "home")  # the clusters' token and session stay here
    cfg_dict, plan = _prepare(args, work / "cache")
    print(f"view cache: {plan.images} images x {plan.views} views of {args.teacher} ({plan.shards} shards)")
    order = [1, 2, 2, 1][: 2 * args.repeats] if args.repeats > 1 else [1, 2]
    results = [_side(n, cfg_dict, plan, work) for n in order]
    rows = [[r["nodes"], f"{r['wall_s']:.1f}", f"{r['steady']:.1f}", f"{r['overall']:.1f}", r["builders"],
             r["forwards"], f"{r['load']['load1_mean']:.2f}"] for r in results]
    print(C.fmt_table(["worker nodes", "wall s", "steady img/s", "overall img/s", "nodes used", "forwards",
                       "load avg"], rows))
    steady = {n: statistics.mean(r["steady"] for r in results if r["nodes"] == n) for n in (1, 2)}
    wall = {n: statistics.mean(r["wall_s"] for r in results if r["nodes"] == n) for n in (1, 2)}
    ratio = steady[2] / steady[1]
    print(f"throughput ratio 2 nodes / 1 node: {ratio:.2f} (steady), {wall[1] / wall[2]:.2f} (wall) "
          f"-> target >= 1.7: {'met' if ratio >= 1.7 else 'MISSED'}")
    C.write_json(work / "cache_build_scaling.json", {"machine": C.machine_info(), "results": results,
                                                      "ratio_steady": ratio})


if __name__ == "__main__":
    main()
