"""Two-worker Ray Train trials (DDP over gloo).

1. A two-worker trial matches a one-worker trial: same seed, same global batch (32 = 2 x 16),
   a BatchNorm-free student (ViT; torch has no SyncBatchNorm on CPU, so BN statistics would
   be per worker there), the ``cls`` loss (a per-sample mean): DDP's averaged gradients
   equal the single process's, so the metrics agree up to float reduction order.
2. A worker process SIGKILLed mid-trial: Ray Train (``FailureConfig(max_failures=2)``)
   restarts the worker group from the last checkpoint; every epoch is reported once and
   the final metrics equal the uninterrupted two-worker trial's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vldistill.platform.cli import load_train_config
from vldistill.trainers.loop import LogReporter, train

pytestmark = pytest.mark.ray

OVERRIDES = ["student=vit_tiny", "optim.epochs=3", "optim.batch_size=32", "data.images_per_class=16"]
DDP_SPACE = """
name: ddp_test
metric: novel_acc
mode: max
sampler: grid
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 2}
overrides: [experiment=smoke, %s]
params:
  distill.weights.cls: {grid: [1.0], baseline: 1.0}
""" % ", ".join(OVERRIDES)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ddp_sweep(ray_env, module_dir) -> Path:
    """The uninterrupted two-worker trial (a one-trial sweep)."""
    work = module_dir("ddp")
    space, out = work / "ddp.yaml", work / "ddp"
    space.write_text(DDP_SPACE)
    proc = subprocess.run([sys.executable, "-m", "vldistill.platform.cli", "sweep", f"search_space={space}",
                           f"out_dir={out}", "--no-wandb"], env=ray_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_two_worker_trial_matches_one_worker_trial(ddp_sweep, smoke_overrides, tmp_path):
    rows = _rows(ddp_sweep)
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    assert len(rows[0]["nodes"]) == 2  # one node id per rank (both this machine's node)
    ddp = rows[0]["metrics"]
    assert ddp["n/base"] == 18 * 8  # gathered: the whole evaluation set, not a shard
    single = train(load_train_config([*smoke_overrides, *OVERRIDES]), LogReporter(), tmp_path / "one")
    seen = {k: (round(ddp[k], 4), round(single[k], 4)) for k in ("base_acc", "novel_acc", "shift_acc",
                                                                   "hmean", "cls_loss")}
    print("two workers vs one:", seen)
    for key, (two, one) in seen.items():
        assert two == pytest.approx(one, abs=0.01), seen


TAG = "VLDISTILL_DDP_KILL_TAG"


def _train_workers(tag: str) -> list[int]:
    """Pids of Ray Train worker processes started by *this* test's Ray (tagged environment)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                continue
            if f"{TAG}={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def _epochs_reported(out: Path) -> list[int]:
    """Epochs of the Tune trial's results (what TuneReportCallback forwarded from rank 0)."""
    epochs = []
    for path in (out / "tune").glob("sweep_trainable_*/result.json"):
        for line in path.read_text().splitlines():
            try:
                epochs.append(int(json.loads(line)["epoch"]))
            except (json.JSONDecodeError, KeyError):
                break
    return epochs


def test_killed_worker_process_is_recovered_from_the_checkpoint(ddp_sweep, ray_env, tmp_path):
    space, out, log = tmp_path / "ddp.yaml", tmp_path / "killed", tmp_path / "sweep.log"
    space.write_text(DDP_SPACE)
    tag = f"{os.getpid()}-{time.time_ns()}"
    env = {**ray_env, TAG: tag}
    with open(log, "w") as fh:
        driver = subprocess.Popen([sys.executable, "-m", "vldistill.platform.cli", "sweep",
                                   f"search_space={space}", f"out_dir={out}", "--no-wandb"],
                                  env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 400
        while not (epochs := _epochs_reported(out)):  # epoch 1 reported: its checkpoint exists
            assert driver.poll() is None, log.read_text()[-3000:]
            if time.time() > deadline:  # a hung sweep, not a speed target
                pytest.fail("no epoch reported:\n" + log.read_text()[-3000:])
            time.sleep(0.05)
        workers = _train_workers(tag)
        assert len(workers) == 2 and max(epochs) < 3, (workers, epochs)
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-trial
        killed_after = max(epochs)
        driver.wait(timeout=500)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert driver.returncode == 0, text[-3000:]
    epochs = _epochs_reported(out)
    assert epochs == [1, 2, 3], f"epochs {epochs}: not one run resumed after epoch {killed_after}"
    assert not set(_train_workers(tag)) & {workers[-1]}
    # Ray Train restarted the worker group: new processes reported the epochs after the kill.
    assert text.count("Checkpoint successfully created") >= 3
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["epochs"] == 3, rows
    reference = _rows(ddp_sweep)[0]["metrics"]
    for key in ("loss", "base_acc", "novel_acc", "shift_acc", "hmean"):
        assert rows[0]["metrics"][key] == pytest.approx(reference[key], abs=1e-6), key
