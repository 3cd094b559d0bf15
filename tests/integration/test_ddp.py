"""A two-worker Ray Train trial (DDP over gloo) matches a one-worker trial.

Same seed, same global batch (64 = 2 x 32), a BatchNorm-free student (ViT; torch has no
SyncBatchNorm on CPU, so BN statistics would be per worker there), the ``cls`` loss (a
per-sample mean): DDP's averaged gradients equal the single process's, so the metrics
agree up to float reduction order.
"""

from __future__ import annotations

import json

import pytest

from vldistill.platform.cli import load_train_config
from vldistill.trainers.loop import LogReporter, train

pytestmark = pytest.mark.ray

OVERRIDES = ["student=vit_tiny", "optim.epochs=2", "optim.batch_size=32", "data.images_per_class=16"]
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


def test_two_worker_trial_matches_one_worker_trial(cli, smoke_overrides, tmp_path):
    space = tmp_path / "ddp.yaml"
    space.write_text(DDP_SPACE)
    out = tmp_path / "ddp"
    proc = cli(["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    ddp = rows[0]["metrics"]
    assert ddp["n/base"] == 18 * 8  # gathered: the whole evaluation set, not a shard
    single = train(load_train_config([*smoke_overrides, *OVERRIDES]), LogReporter(), tmp_path / "one")
    seen = {k: (round(ddp[k], 4), round(single[k], 4)) for k in ("base_acc", "novel_acc", "shift_acc",
                                                                   "hmean", "cls_loss")}
    print("two workers vs one:", seen)
    for key, (two, one) in seen.items():
        assert two == pytest.approx(one, abs=0.01), seen
