"""One trial end to end on the smoke preset: metrics, determinism, resume, atomic checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from vldistill.platform.cli import load_train_config, main
from vldistill.trainers.loop import CKPT_NAME, LogReporter, load_checkpoint, save_checkpoint, train

ACCS = ("base_acc", "novel_acc", "novel_acc/compositional", "novel_acc/semantic", "hmean",
        "shift_acc", "shift_acc/sketch", "shift_acc/painting", "shift_acc/noisy")


@pytest.fixture(scope="module")
def smoke_run(smoke_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["train", *smoke_overrides, f"out_dir={out}"]) == 0
    return out


def test_train_cli_writes_metrics_and_resolved_config(smoke_run):
    m = json.loads((smoke_run / "metrics.json").read_text())
    for key in ACCS:
        assert 0.0 <= m[key] <= 1.0, key
        assert 0.0 <= m[f"teacher/{key}"] <= 1.0, key
    assert m["student_params"] > 1e5 and m["student_latency_ms"] > 0
    assert m["n/base"] == 18 * 8 and m["n/novel"] == 18 * 16
    assert m["floor/colour/base"] == pytest.approx(5 / 18)  # 18 base classes, 5 colours
    assert m["shift_acc"] == pytest.approx(sum(m[f"shift_acc/{d}"] for d in ("sketch", "painting", "noisy")) / 3)
    import yaml
    cfg = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert cfg["optim"]["epochs"] == 2 and cfg["out_dir"] == str(smoke_run)
    rows = [json.loads(line) for line in (smoke_run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (smoke_run / "checkpoints" / CKPT_NAME).is_file()


def test_same_seed_same_metrics_and_resume_equals_uninterrupted(smoke_overrides, tmp_path):
    cfg = load_train_config([*smoke_overrides, "optim.epochs=3"])
    full = train(cfg, LogReporter(), tmp_path / "a")

    class Crash(LogReporter):
        def report(self, metrics, checkpoint_dir=None):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt("killed after epoch 2")

    with pytest.raises(KeyboardInterrupt):
        train(cfg, Crash(), tmp_path / "b")
    assert load_checkpoint(tmp_path / "b")["epoch"] == 2
    resumed_rep = LogReporter()
    resumed = train(cfg, resumed_rep, tmp_path / "b")
    assert [r["epoch"] for r in resumed_rep.history] == [3]
    for key in ACCS + ("loss",):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
    again = train(cfg, LogReporter(), tmp_path / "c")
    for key in ACCS:
        assert again[key] == pytest.approx(full[key], abs=1e-6), key


def test_checkpoint_write_interrupted_midway_keeps_the_previous_one(tmp_path, monkeypatch):
    save_checkpoint({"epoch": 1, "w": torch.ones(2)}, tmp_path)

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2, "w": torch.zeros(2)}, tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(2))
