"""Concurrency that follows the cluster, and a node lost mid-sweep.

A ``ray.cluster_utils.Cluster`` like ``cluster.yaml``'s: a head with no task CPUs and two
1-CPU worker nodes. A 4-trial sweep (3 epochs each, 1 CPU per trial) fits 2 at a time.

* Queue: Tune must hold every trial not yet started as a queued (PENDING) trial -- the
  demand an autoscaler sees -- instead of creating trials only as fast as today's cluster
  runs them. Snapshots of Tune's experiment state (written atomically) are taken while the
  sweep runs.
* A worker node removed (``Cluster.remove_node``) as soon as a trial on it has reported
  its first epoch: that trial continues on another node from its checkpoint (its epochs
  1, 2, 3 reported once each, the later ones from a new process on another node), a
  replacement node joins as an autoscaler's would, and every trial ends with its row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray

SPACE = """
name: queue
metric: novel_acc
mode: max
sampler: grid
sampler_seed: 0
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke, optim.epochs=3, eval.every=1]
params:
  distill.cls.tau: {choice: [0.07, 0.05, 0.1, 0.2]}
"""

DRIVER = textwrap.dedent("""
    import glob, json, os, subprocess, sys, time
    from ray.cluster_utils import Cluster

    space, out, info = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {n.node_id: n for n in (cluster.add_node(num_cpus=1) for _ in range(2))}
    cluster.wait_for_nodes()
    snapshots, removed, added = [], {}, []

    def rows(path):
        try:
            return [json.loads(line) for line in open(path).read().splitlines() if line.strip()]
        except (OSError, ValueError):
            return []

    # The sweep is a driver process joining the cluster, as a user's is. This process is the
    # cluster's operator, and its *main* thread removes a node and adds the replacement: Ray's
    # Node registers signal handlers, so a node added from another thread fails to start
    # (the earlier version of this test did that: its watcher thread died there, and with it
    # the snapshots).
    sweep = subprocess.Popen([sys.executable, "-m", "vldistill.platform.cli", "sweep",
                              f"search_space={space}", f"out_dir={out}", "--no-wandb"],
                             env={**os.environ, "RAY_ADDRESS": cluster.address})
    try:
        while sweep.poll() is None:
            for f in sorted(glob.glob(os.path.join(out, "tune", "experiment_state-*.json")))[-1:]:
                try:
                    state = json.load(open(f))
                except (OSError, ValueError):
                    continue
                statuses = [json.loads(t[0])["status"] for t in state["trial_data"]]
                snapshots.append({s: statuses.count(s) for s in set(statuses)})
            if not removed:  # the first trial on a worker node that reported an epoch
                for res in glob.glob(os.path.join(out, "tune", "sweep_trainable_*", "result.json")):
                    last = (rows(res) or [{}])[-1]
                    if last.get("epoch", 0) >= 1 and last.get("nodes") in nodes:
                        removed.update(node=last["nodes"], trial=os.path.basename(os.path.dirname(res)))
                        cluster.remove_node(nodes[last["nodes"]], allow_graceful=False)
                        added.append(cluster.add_node(num_cpus=1).node_id)  # the autoscaler's replacement
                        break
            time.sleep(0.1)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        with open(info, "w") as f:
            json.dump({"snapshots": snapshots, "removed": removed, "added": added,
                       "workers": list(nodes), "sweep_rc": sweep.wait()}, f)
        cluster.shutdown()
""")


@pytest.fixture(scope="module")
def queue_run(ray_env, module_dir) -> dict:
    work = module_dir("queue")
    space, out, info = work / "space.yaml", work / "sweep", work / "info.json"
    space.write_text(SPACE)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(space), str(out), str(info)], env=ray_env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and info.is_file(), proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(info.read_text())
    assert result["sweep_rc"] == 0, proc.stderr[-6000:]
    return {"out": out, "info": result, "log": proc.stderr}


def test_tune_queues_every_trial_not_yet_started(queue_run):
    busy = [s for s in queue_run["info"]["snapshots"] if s.get("RUNNING", 0) >= 1]
    assert busy, queue_run["info"]["snapshots"]
    for s in busy:  # the autoscaler's demand: everything not started is queued
        started = s.get("RUNNING", 0) + s.get("TERMINATED", 0) + s.get("ERROR", 0)
        assert s.get("PENDING", 0) >= 4 - started, s
    assert any(s.get("PENDING", 0) >= 2 for s in busy)  # 2 fit at once: 2 wait, queued
    assert "up to 4 started or queued at once (every trial queued" in queue_run["log"]


def test_a_removed_node_loses_no_trial_and_its_trial_resumes_elsewhere(queue_run):
    out, removed = queue_run["out"], queue_run["info"]["removed"]
    assert removed, "no trial reported an epoch on a worker node"
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["trial_id"] for r in rows}) == 4
    assert all(r["status"] == "completed" and r["epochs"] == 3 for r in rows), rows
    results = [json.loads(line) for line in (out / "tune" / removed["trial"] / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [1, 2, 3]  # resumed from its checkpoint: no epoch twice
    assert results[0]["nodes"] == removed["node"] and results[-1]["nodes"] != removed["node"]
    assert results[-1]["pid"] != results[0]["pid"]
    assert len(queue_run["info"]["added"]) == 1  # the replacement node joined
