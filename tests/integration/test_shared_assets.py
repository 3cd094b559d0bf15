"""The shared-asset stage runs on the teacher's resources, not in the driver.

A ``ray.cluster_utils.Cluster`` with a head that declares no GPU and two worker nodes that
each declare one (Ray schedules by the declared resource; torch then finds no CUDA and
runs on the CPU). A smoke sweep with 2 cached teacher views per image and an open_clip
ViT-S-32 teacher (random weights: its cost, not its quality, matters here; a quarter of
ViT-B-32's, still enough that an actor is killed with shards left) asks for
``teacher_resources.gpu=1``. The child process that runs the driver (its own HOME: no
user's Ray token is touched) also kills one view-cache actor as soon as it has finished a
shard (an event: its build log appears), and reports what its own process did.

Checked: the view cache was built only on the two worker nodes (node ids in the entry's
metadata) and so was every other shared asset; the driver process never constructed a
teacher; the killed actor's finished shards were not recomputed (each shard is in the build
logs once, the forwards add up to images x views) while the build still completed; and
every cached target equals the teacher's own output on the replayed view, computed here
serially, to fp16 rounding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.ray

OVERRIDES = ["experiment=smoke", "augment.views=2", "teacher=open_clip", "teacher.name=ViT-S-32",
             "teacher.pretrained=null", "data.max_eval_per_class=2", "optim.epochs=1"]

DRIVER = textwrap.dedent("""
    import glob, json, logging, os, signal, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("vldistill").setLevel(logging.INFO)  # the driver's progress lines, as the CLI logs them
    out, cache, info = sys.argv[1:4]
    overrides = json.loads(sys.argv[4])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})  # as cluster.yaml
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    killed = {}

    def kill_one_actor():
        # event: the first builder's log (it finished a shard); then SIGKILL that process
        while not killed:
            logs = glob.glob(os.path.join(cache, "teacher_cache", "*", "builds", "*.jsonl"))
            if logs:
                pid = int(logs[0].rsplit("-", 1)[1].split(".")[0])
                entry = os.path.dirname(os.path.dirname(logs[0]))
                killed.update(pid=pid, shards_done=len(glob.glob(os.path.join(entry, "shards", "s*.npy"))))
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    threading.Thread(target=kill_one_actor, daemon=True).start()
    try:
        from vldistill.platform.sweep import run_sweep
        from vldistill.trainers import teachers
        run_sweep("smoke", [*overrides, f"cache_dir={cache}", "teacher_resources.gpu=1"], out,
                  address=cluster.address, wandb=False)
        with open(info, "w") as f:
            json.dump({"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers],
                       "teachers_in_driver": teachers.Teacher.constructed, "killed": killed}, f)
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


@pytest.fixture(scope="module")
def cluster_run(ray_env, module_dir) -> dict:
    work = module_dir("shared-assets")
    out, cache, info = work / "sweep", work / "cache", work / "info.json"
    env = {**ray_env, "VLDISTILL_STORE_INLINE_MB": "0"}  # the image store by a Ray Data job, even this small one
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(out), str(cache), str(info), json.dumps(OVERRIDES)],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0 and info.is_file(), proc.stdout[-3000:] + proc.stderr[-6000:]
    return {"out": out, "cache": cache, "info": json.loads(info.read_text()), "log": proc.stderr}


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "teacher_cache").iterdir() if p.is_dir()]
    return entry


def test_the_view_cache_is_built_only_on_the_gpu_workers_and_never_by_the_driver(cluster_run):
    info, entry = cluster_run["info"], _entry(cluster_run["cache"])
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["built_by"] == "ray-data" and meta["layout"] == "shards-fp16"
    assert set(meta["nodes"]) <= set(info["workers"]) and info["head"] not in meta["nodes"]
    assert meta["teacher_resources"]["gpu"] == 1.0 and meta["devices"] == ["cpu"]  # declared GPU, no CUDA
    assert info["teachers_in_driver"] == 0  # the driver never built a teacher
    summary = json.loads((cluster_run["out"] / "sweep.json").read_text())
    store, prep, views = summary["assets"]
    assert store["asset"].startswith("image store") and store["nodes"] and set(store["nodes"]) <= set(info["workers"])
    (smeta,) = [json.loads(p.read_text()) for p in (cluster_run["cache"] / "images").glob("*/meta.json")]
    assert smeta["built_by"] == "ray-data" and set(smeta["nodes"]) <= set(info["workers"])
    assert set(prep["nodes"]) <= set(info["workers"])  # text, metrics, eval embeddings: a GPU node too
    assert views["nodes"] == meta["nodes"] and views["images_per_s"] > 0
    assert "view cache" in cluster_run["log"] and "images/s" in cluster_run["log"]  # the progress line
    rows = [json.loads(line) for line in (cluster_run["out"] / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["completed", "completed"]


def test_a_killed_build_actor_loses_no_finished_shard(cluster_run):
    entry, killed = _entry(cluster_run["cache"]), cluster_run["info"]["killed"]
    meta = json.loads((entry / "meta.json").read_text())
    assert killed and killed["shards_done"] < meta["shards"]  # killed mid-way, not after the build
    records = [json.loads(line) for log in (entry / "builds").glob("*.jsonl")
               for line in log.read_text().splitlines()]
    shards = sorted(r["shard"] for r in records)
    assert shards == list(range(meta["shards"]))  # every shard once: none recomputed, none lost
    assert sum(r["forwards"] for r in records) == meta["images"] * meta["views"] == meta["forwards"]
    assert any(r["pid"] == killed["pid"] for r in records)  # the killed actor had finished some
    assert {r["pid"] for r in records} - {killed["pid"]}  # and another process did the rest


def test_cached_targets_equal_a_serial_build_to_fp16_rounding(cluster_run, ray_env):
    from vldistill.platform.cli import load_train_config
    from vldistill.trainers.assets import prepare
    from vldistill.trainers.cache import TeacherCache
    from vldistill.trainers.data.views import make_views, view_seed
    from vldistill.trainers.teachers import load_open_clip

    cfg = load_train_config([*OVERRIDES, f"cache_dir={cluster_run['cache']}", "progress=false"])
    splits, lazy, _, _ = prepare(cfg, build=False)  # reads the cluster's entries, builds nothing
    cache = TeacherCache(_entry(cluster_run["cache"]))
    teacher = load_open_clip("ViT-S-32", None)
    assert teacher.key == lazy.key
    idx = torch.arange(len(splits.train))
    for view in range(2):
        want = torch.cat([teacher.encode_images(make_views(splits.train.images[i], view_seed(i, view), cfg.augment))
                          for i in idx.split(32)])
        got = cache.lookup(idx, view)
        assert torch.allclose(got, want, atol=1e-3, rtol=0), (got - want).abs().max()
