"""The sweep's W&B callback: real offline runs, one per trial; a W&B failure never ends a sweep."""

from __future__ import annotations

import json
import logging
import types

import pytest

wandb = pytest.importorskip("wandb")
pytest.importorskip("ray.tune")

from vldistill.platform.wandb_logger import make_callback, numeric  # noqa: E402


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def _trial(trial_id: str, **last):
    return types.SimpleNamespace(trial_id=trial_id, config={"optim.lr": 0.001, "seed": 0,
                                                            "__workers__": 1},
                                 last_result=last)


def _summary(sweep_dir, trial_id):
    runs = [p for p in (sweep_dir / "wandb").glob(f"offline-run-*-{trial_id}")]
    assert len(runs) == 1, runs
    return runs[0]


def test_numeric_keeps_metrics_and_drops_tune_bookkeeping():
    row = {"epoch": 2, "novel_acc": 0.5, "loss/cls": 1.25, "time_total_s": 3.0, "pid": 7,
           "trial_id": "x", "done": False, "nodes": "abc", "should_checkpoint": True}
    assert numeric(row) == {"epoch": 2, "novel_acc": 0.5, "loss/cls": 1.25}


def test_one_offline_run_per_trial_and_a_failing_init_does_not_stop_the_sweep(offline, caplog):
    sweep_dir = offline / "sweep"
    cb = make_callback(sweep_dir, "grp")
    ok, held = _trial("t1"), _trial("t2")
    # A run with t2's id is still live in this process (as after a killed driver): W&B refuses
    # a second one with the same id. The callback warns once and keeps logging t1.
    orphan = wandb.init(id="grp-t2", project="vldistill", mode="offline", dir=str(offline),
                        reinit="create_new", settings=wandb.Settings(console="off", silent=True))
    try:
        with caplog.at_level(logging.WARNING, logger="vldistill.platform.wandb_logger"):
            for epoch in (1, 2):
                for t in (ok, held):
                    cb.on_trial_result(epoch, [], t, {"epoch": epoch, "novel_acc": 0.25 * epoch,
                                                      "time_total_s": 1.0})
            cb.on_trial_complete(2, [], ok)
            cb.on_trial_complete(2, [], held)
    finally:
        orphan.finish()
    failures = [r for r in caplog.records if "W&B:" in r.getMessage()]
    assert len(failures) == 1 and "trial t2" in failures[0].getMessage(), [r.getMessage() for r in failures]
    assert "t2" in cb.broken and "t1" not in cb.broken and cb.runs == {}
    run_dir = _summary(sweep_dir, "grp-t1")
    assert list(run_dir.glob("*.wandb")), "no offline run file for t1"
    # the pickled state Tune keeps (experiment snapshots) carries no live runs
    state = cb.__getstate__()
    assert state["runs"] == {} and state["mode"] == "offline"
    json.dumps({k: v for k, v in state.items() if k != "broken"})


def test_each_sweep_directory_gets_its_own_group_and_keeps_it(tmp_path):
    from vldistill.platform.wandb_logger import sweep_group

    first = sweep_group(tmp_path / "a", "smoke")
    assert first.startswith("smoke-") and sweep_group(tmp_path / "a", "smoke") == first  # as on --resume
    assert (tmp_path / "a" / "wandb_group").read_text().strip() == first
    assert sweep_group(tmp_path / "b", "smoke") != first
