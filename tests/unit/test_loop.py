"""One trial end to end on the smoke preset: metrics, determinism, resume, atomic checkpoints."""

from __future__ import annotations

import pytest
import torch

from vldistill.trainers.config import load_train_config
from vldistill.trainers.loop import LogReporter, load_checkpoint, save_checkpoint, train

ACCS = ("base_acc", "novel_acc", "novel_acc/compositional", "novel_acc/semantic", "hmean",
        "shift_acc", "shift_acc/sketch", "shift_acc/painting", "shift_acc/noisy")


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


def test_a_finished_trial_resumed_runs_no_step_and_no_evaluation(smoke_overrides, tmp_path, monkeypatch):
    """A killed driver's ``--resume`` restores a finished trial as running: it must re-report
    its final row from the checkpoint, not train or evaluate again."""
    from vldistill.trainers import loop
    cfg = load_train_config([*smoke_overrides, "optim.epochs=1"])
    counts = {"evaluate": 0, "epoch": 0}
    real_eval, real_epoch = loop._evaluate, loop._train_epoch

    def counted(name, fn):
        def wrapper(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        return wrapper
    monkeypatch.setattr(loop, "_evaluate", counted("evaluate", real_eval))
    monkeypatch.setattr(loop, "_train_epoch", counted("epoch", real_epoch))
    first_rep = LogReporter()
    first = train(cfg, first_rep, tmp_path)
    assert counts == {"evaluate": 1, "epoch": 1}
    again_rep = LogReporter()
    again = train(cfg, again_rep, tmp_path)
    assert counts == {"evaluate": 1, "epoch": 1}  # nothing ran twice
    assert again == first and again_rep.history == [first]  # the same final row, reported once


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
