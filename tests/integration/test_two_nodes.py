"""Two Ray nodes on this machine (``ray.cluster_utils.Cluster``): one sweep's trials land on
both, everything is written to the one (shared) storage path, and a two-worker trial with
``placement: strict_spread`` runs one DDP rank on each node.

The cluster lives in a child process (its own HOME, so no user's Ray token or session is
touched); the child joins it the way a user's driver joins a cluster (``RAY_ADDRESS``), runs
the two sweeps through the CLI entry point, records the cluster's node ids and shuts the
cluster down. Every trial row carries the node ids its training ran on (``nodes``).

Resources: 2 logical CPUs per node. Four 1-CPU trials at once need all 4 CPUs, so two
must run on each node; the DDP workers' bundles are strictly spread over the two nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

SPREAD_SPACE = """
name: two_nodes
metric: novel_acc
mode: max
sampler: grid
seeds: [0, 1]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke]
params:
  distill.weights.mse: {grid: [0.0, 1.0], baseline: 0.0}
"""

SPAN_SPACE = """
name: two_nodes_ddp
metric: novel_acc
mode: max
sampler: grid
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 2, placement: strict_spread}
overrides: [experiment=smoke]
params:
  distill.weights.cls: {grid: [1.0], baseline: 1.0}
"""

DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    from ray.cluster_utils import Cluster

    spaces, outs, info = sys.argv[1:3], sys.argv[3:5], sys.argv[5]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=0)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    codes = []
    try:
        from vldistill.platform.cli import main
        for space, out in zip(spaces, outs):
            codes.append(main(["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"]))
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        with open(info, "w") as f:
            json.dump({"codes": codes, "nodes": nodes, "address": cluster.address}, f)
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def _rows(sweep: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep / "trials.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_node_run(ray_env, module_dir) -> dict:
    work = module_dir("two-nodes")
    storage = work / "shared"  # one path every node writes to (NFS/EFS on a real cluster)
    spaces = [work / "spread.yaml", work / "span.yaml"]
    spaces[0].write_text(SPREAD_SPACE)
    spaces[1].write_text(SPAN_SPACE)
    outs = [storage / "spread", storage / "span"]
    info = work / "info.json"
    proc = subprocess.run([sys.executable, "-c", DRIVER, *map(str, spaces), *map(str, outs), str(info)],
                          env=ray_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return {"info": json.loads(info.read_text()), "spread": outs[0], "span": outs[1],
            "stderr": proc.stderr}


def test_trials_of_one_sweep_run_on_both_nodes_and_write_to_the_shared_storage(two_node_run):
    info, out = two_node_run["info"], two_node_run["spread"]
    assert info["codes"][0] == 0 and len(info["nodes"]) == 2, info
    rows = _rows(out)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows), rows
    for r in rows:
        assert len(r["nodes"]) == 1 and r["nodes"][0] in info["nodes"], r["nodes"]
        assert 0.0 <= r["metrics"]["novel_acc"] <= 1.0
    used = {r["nodes"][0] for r in rows}
    assert used == set(info["nodes"]), f"trials ran on {used}, the cluster has {info['nodes']}"
    # Every trial, whichever node ran it, checkpointed into the one storage path.
    trial_dirs = sorted((out / "tune").glob("sweep_trainable_*"))
    assert len(trial_dirs) == 4
    for d in trial_dirs:
        assert list(d.glob("checkpoint_*/last.pt")), f"no checkpoint from {d.name}"
    assert (out / "report.md").is_file() and (out / "trials.csv").is_file()


def test_a_two_worker_trial_spans_both_nodes(two_node_run):
    info, out = two_node_run["info"], two_node_run["span"]
    assert info["codes"][1] == 0, two_node_run["stderr"][-3000:]
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    nodes = rows[0]["nodes"]
    assert len(nodes) == 2 and set(nodes) == set(info["nodes"]), f"ranks on {nodes}, cluster {info['nodes']}"
    assert rows[0]["metrics"]["n/base"] > 0 and 0.0 <= rows[0]["metrics"]["novel_acc"] <= 1.0
    # The Ray Train run of the trial kept its checkpoints under the same storage path.
    assert list((out / "train").glob("train-trial_id=*/checkpoint_*/last.pt")), \
        sorted(p.relative_to(out) for p in (out / "train").rglob("*"))[:20]
