"""Faults: a killed trial process, a killed sweep driver, a NaN loss, a checkpoint write cut
short, two sweeps on one directory. Each compares against an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from reliability_helpers import (NAN_SPACE, NAN_TAU, TAG_VAR, error_lines, kill_tagged, row_lines,
                                 signature, spawn, tagged_pids, wait_for)
from vldistill.platform.cli import load_train_config
from vldistill.platform.sweep import WORK_PREFIX
from vldistill.trainers.loop import CKPT_NAME, LogReporter, NonFiniteLossError, load_checkpoint, train

ACCS = ("loss", "base_acc", "novel_acc", "hmean", "shift_acc", "novel_acc/compositional",
        "novel_acc/semantic", "shift_acc/sketch", "shift_acc/painting", "shift_acc/noisy")


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return out


# ----- (a) a trial's process killed mid-run --------------------------------------------------

KILL_TRIAL_SPACE = """
name: rel_kill_trial
metric: novel_acc
mode: max
sampler: random
sampler_seed: 0
num_samples: 1
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke, optim.epochs=3, eval.every=1]
params:
  optim.lr: {choice: [0.002]}
"""


@pytest.mark.ray
def test_killed_trial_process_resumes_from_its_checkpoint_with_uninterrupted_metrics(
        ray_env, smoke_overrides, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(KILL_TRIAL_SPACE)
    out, log = tmp_path / "sweep", tmp_path / "sweep.log"
    driver = spawn(["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"], ray_env, log)
    try:
        def first_epoch():
            for d in (out / "tune").glob("sweep_trainable_*"):
                rows = _results(d)
                if rows and rows[-1]["epoch"] >= 1:
                    return d, rows
            return None

        trial_dir, rows = wait_for(first_epoch, 300, 0.05, "the trial's first epoch", driver, log)
        victim = rows[-1]["pid"]
        killed_after = rows[-1]["epoch"]
        assert killed_after < 3, "the trial finished before it could be killed"
        assert list(Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}{victim}-*")), "no work dir"
        os.kill(victim, signal.SIGKILL)  # the Ray actor running the training loop
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, log.read_text()[-3000:]

    results = _results(trial_dir)
    epochs = [r["epoch"] for r in results]
    pids = [r["pid"] for r in results]
    assert epochs == [1, 2, 3], f"epochs reported {epochs}: not one run resumed after epoch {killed_after}"
    assert pids[0] == victim and pids[-1] != victim, "the trial was not restarted in a new process"
    restart = next(i for i, p in enumerate(pids) if p != victim)
    assert epochs[restart] == epochs[restart - 1] + 1, "the restart did not continue from the checkpoint"
    # The killed process never reached its cleanup: its restart removed its work directory
    # (last.pt) from this node's temporary directory.
    assert not list(Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}{victim}-*"))

    rows = row_lines(out)
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["error"] is None
    assert rows[0]["epochs"] == 3

    cfg = load_train_config([*smoke_overrides, "optim.epochs=3", "eval.every=1", "optim.lr=0.002",
                             "seed=0"])
    uninterrupted = train(cfg, LogReporter(), tmp_path / "reference")
    for key in ACCS:
        assert rows[0]["metrics"][key] == pytest.approx(uninterrupted[key], abs=1e-6), key


# ----- (b) the sweep driver killed -------------------------------------------------------


@pytest.fixture(scope="module")
def killed_driver_sweep(ray_env, reference_space, module_dir) -> dict:
    """The reference space, its driver SIGKILLed right after the first row, then --resume."""
    work = module_dir("killed-driver")
    out, log = work / "sweep", work / "driver.log"
    env = {**ray_env, TAG_VAR: ray_env[TAG_VAR] + "-driver"}  # this sweep's own Ray processes
    try:
        # W&B is on (the default): after a trial's row is written the driver still finishes
        # its W&B run before Tune snapshots its state. The driver SIGKILLs itself on the log
        # line that follows the first row: inside that window, every time.
        driver = spawn(["sweep", f"search_space={reference_space}", f"out_dir={out}"], env, log,
                       on_first_row=("signal", "SIGKILL"))
        driver.wait(timeout=400)
        assert driver.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        before = row_lines(out)
        leftovers = kill_tagged(env[TAG_VAR])  # the killed driver's Ray: its agents outlive it
        resumed = subprocess.run([sys.executable, "-m", "vldistill.platform.cli", "sweep", "--resume",
                                  str(out)], env=env, capture_output=True, text=True, timeout=500)
    finally:
        kill_tagged(env[TAG_VAR])
    return {"dir": out, "before": before, "leftovers": leftovers, "resumed": resumed,
            "alive_after": tagged_pids(env[TAG_VAR])}


@pytest.mark.ray
def test_killed_driver_sweep_resumes_to_the_uninterrupted_result(killed_driver_sweep, reference_sweep):
    k = killed_driver_sweep
    assert len(k["before"]) == 1, f"{len(k['before'])} rows before the kill"
    assert k["resumed"].returncode == 0, k["resumed"].stderr[-3000:]
    assert k["alive_after"] == []
    last = {r["trial_id"]: r for r in row_lines(k["dir"])}
    assert len(last) == 3 and {r["trial_id"] for r in k["before"]} <= set(last)
    assert json.loads((k["dir"] / "sweep.json").read_text())["trials"] == 3
    assert (k["dir"] / "report.md").is_file()
    # params, seed, status, epochs and accuracies equal the uninterrupted sweep's
    strip = lambda sig: [(*t[:5], t[5][1:]) for t in sig]  # noqa: E731  (without the loss)
    assert strip(signature(list(last.values()))) == strip(signature(row_lines(reference_sweep.dir)))


@pytest.mark.ray
def test_killed_driver_sweep_reruns_no_finished_trial(killed_driver_sweep, reference_sweep):
    k = killed_driver_sweep
    assert k["resumed"].returncode == 0, k["resumed"].stderr[-3000:]
    lines = row_lines(k["dir"])
    ids = [r["trial_id"] for r in lines]
    assert len(ids) == len(set(ids)) == 3, (
        f"finished trial(s) re-run after the driver was killed: "
        f"{sorted(i for i in set(ids) if ids.count(i) > 1)} (rows before the kill: "
        f"{[r['trial_id'] for r in k['before']]})")
    last = {r["trial_id"]: r for r in lines}
    assert signature(list(last.values())) == signature(row_lines(reference_sweep.dir))


# ----- (c) a NaN loss ----------------------------------------------------------------------


def test_nan_setting_really_gives_a_non_finite_loss(smoke_overrides, tmp_path):
    """The reference space's broken configuration, in-process: NonFiniteLossError at step 1."""
    cfg = load_train_config([*smoke_overrides, f"distill.cls.tau={NAN_TAU}"])
    reporter = LogReporter()
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1 step 1"):
        train(cfg, reporter, tmp_path / "ckpt")
    assert reporter.history == [] and not (tmp_path / "ckpt" / CKPT_NAME).exists()


@pytest.mark.ray
def test_nan_trial_fails_with_its_reason_and_the_others_complete(cli, tmp_path):
    space = tmp_path / "nan.yaml"
    space.write_text(NAN_SPACE)
    out = tmp_path / "sweep"
    proc = cli(["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"], timeout=500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["params"]["distill.cls.tau"]: r for r in row_lines(out)}
    assert sorted(rows) == [NAN_TAU, 0.07]
    bad = rows[NAN_TAU]
    assert bad["status"] == "failed"
    assert bad["error"].startswith("NonFiniteLossError: loss is nan at epoch 1 step 1"), bad["error"]
    good = rows[0.07]
    assert good["status"] == "completed" and good["error"] is None and good["epochs"] == 2
    assert 0 <= good["metrics"]["novel_acc"] <= 1
    assert json.loads((out / "sweep.json").read_text())["status_counts"] == {"completed": 1, "failed": 1}
    # the report lists it, with its reason
    report = (out / "report.md").read_text()
    listed = [ln for ln in report.splitlines() if bad["trial_id"] in ln]
    assert any("failed" in ln and "NonFiniteLossError" in ln for ln in listed), listed or report[-2000:]
    # not retried: a deterministic error ends the trial (FailureConfig retries only crashes)
    failed_dir = [d for d in (out / "tune").glob("sweep_trainable_*")
                  if _results(d) and _results(d)[-1].get("trial_error")]
    assert len(failed_dir) == 1 and len(_results(failed_dir[0])) == 1
    # and Optuna learns nothing from it: FAIL, not COMPLETE
    import optuna
    study = optuna.load_study(study_name="rel_nan", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    # a scientific failure beside a finished trial: exit 0, and the last line says so
    assert proc.stderr.strip().splitlines()[-1] == (
        "vldistill: sweep finished: 1 of 2 trial(s) failed (1 NonFiniteLossError): a non-finite "
        "loss is a result, not an error (listed in the report)"), proc.stderr[-1500:]


ALL_NAN_SPACE = NAN_SPACE.replace("name: rel_nan", "name: rel_all_nan").replace(
    "{choice: [0.07, 1.0e-40], baseline: 0.07}", "{choice: [1.0e-40]}")
TRIAL_CONFIG_ERROR_SPACE = """
name: rel_trial_config_error
metric: novel_acc
mode: max
sampler: random
num_samples: 1
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke]
params:
  student.kwargs.bogus_kwarg: {choice: [1]}
"""


@pytest.mark.ray
@pytest.mark.parametrize("space_text,reason,named", [
    pytest.param(ALL_NAN_SPACE, "1 of 1 trial(s) failed (1 NonFiniteLossError): every trial failed",
                 "loss is nan at epoch 1 step 1", id="every_trial_failed"),
    # student.kwargs only timm can judge (the pre-launch check builds no model): the trial
    # fails with a ConfigError, and so does the sweep
    pytest.param(TRIAL_CONFIG_ERROR_SPACE, "1 of 1 trial(s) failed (1 ConfigError); a configuration error",
                 "student.kwargs: {'bogus_kwarg': 1} rejected by timm model test_resnet", id="config_error"),
])
def test_sweep_with_failed_trials_exits_1_naming_why(space_text, reason, named, cli, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(space_text)
    out = tmp_path / "sweep"
    proc = cli(["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"], timeout=500)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vldistill: sweep failed: {reason}") and named in last, last
    rows = row_lines(out)
    assert len(rows) == 1 and rows[0]["status"] == "failed" and named in rows[0]["error"], rows
    assert (out / "report.md").is_file()  # the results are written all the same


EVERY_SPACE = """
name: rel_eval_every
metric: novel_acc
mode: max
sampler: random
num_samples: 1
seeds: [0]
overrides: [experiment=smoke, eval.every=2]
params:
  optim.lr: {choice: [0.002]}
"""


@pytest.mark.ray
def test_epochs_without_evaluation_do_not_crash_the_sweep(cli, tmp_path):
    """Rows of epochs without an evaluation carry no objective metric (nor a stale one); Tune's
    strict metric check must not take the sweep down (it did, found with the NaN case)."""
    space = tmp_path / "every.yaml"
    space.write_text(EVERY_SPACE)
    out = tmp_path / "sweep"
    proc = cli(["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"], timeout=400)
    assert proc.returncode == 0, proc.stderr[-1500:]
    rows = row_lines(out)
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["epochs"] == 2
    results = _results(next((out / "tune").glob("sweep_trainable_*")))
    assert [("novel_acc" in r) for r in results] == [False, True]  # epoch 1 not evaluated


# ----- (d) a checkpoint write cut short by a crash -----------------------------------------

_CRASH_DURING_SAVE = r"""
import os, signal, sys, torch
from vldistill.platform.cli import load_train_config
from vldistill.trainers.loop import LogReporter, train
real_save, calls = torch.save, []
def dying_save(obj, f, *a, **k):
    calls.append(f)
    if len(calls) == 2:  # epoch 2's checkpoint: half the bytes, then the process dies
        real_save(obj, f, *a, **k)
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
torch.save = dying_save
train(load_train_config(sys.argv[2:]), LogReporter(), sys.argv[1])
"""


def test_crash_during_checkpoint_write_resumes_from_the_previous_epoch(smoke_overrides, tmp_path):
    overrides = [*smoke_overrides, "optim.epochs=3"]
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", _CRASH_DURING_SAVE, str(ckpt), *overrides],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    partial = [p for p in ckpt.iterdir() if p.name != CKPT_NAME]
    assert len(partial) == 1 and partial[0].name.startswith(f".{CKPT_NAME}.tmp"), list(ckpt.iterdir())
    state = load_checkpoint(ckpt)  # last.pt is epoch 1's, whole
    assert state["epoch"] == 1

    cfg = load_train_config(overrides)
    resumed_rep = LogReporter()
    resumed = train(cfg, resumed_rep, ckpt)
    assert [r["epoch"] for r in resumed_rep.history] == [2, 3]
    assert load_checkpoint(ckpt)["epoch"] == 3
    uninterrupted = train(cfg, LogReporter(), tmp_path / "reference")
    for key in ACCS:
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-6), key


# ----- (e) two sweeps on one directory ---------------------------------------------------


@pytest.mark.ray
def test_second_sweep_on_a_running_sweeps_directory_is_refused_and_the_first_is_intact(reference_sweep):
    ref = reference_sweep
    assert ref.running_when_refused, "the reference sweep ended before the second sweeps were refused"
    for name, proc in (("fresh", ref.fresh), ("resume", ref.resume)):
        assert proc.returncode == 2, f"{name}: {proc.stderr[-3000:]}"
        errors = error_lines(proc.stderr)
        assert len(errors) == 1 and "Traceback" not in proc.stderr, f"{name}: {proc.stderr[-3000:]}"
        assert str(ref.dir) in errors[0], f"{name}: {errors[0]}"
        assert "local Ray instance" not in proc.stderr + proc.stdout, f"{name} started Ray"
    # --resume of a running sweep: refused by the lock, naming the running driver
    assert "in use by a running sweep" in ref.resume.stderr
    assert f"pid {ref.proc.pid} on" in ref.resume.stderr
    # the first sweep: finished, its files its own, one row per trial, nothing interleaved
    assert ref.proc.returncode == 0, ref.log.read_text()[-3000:]
    assert (ref.dir / "search_space.yaml").read_text() == ref.space_before
    assert yaml.safe_load(ref.space_before)["name"] == "rel_reference"
    lines = row_lines(ref.dir)
    assert len(lines) == 3 == len({r["trial_id"] for r in lines})
    assert all(set(r["params"]) == {"distill.cls.tau"} for r in lines)
    assert json.loads((ref.dir / "sweep.json").read_text())["name"] == "rel_reference"
    tune_dirs = list((ref.dir / "tune").glob("sweep_trainable_*"))
    assert len(tune_dirs) == 3, [d.name for d in tune_dirs]
    assert (ref.dir / ".lock").read_text() == f"pid {ref.proc.pid} on {os.uname().nodename}"


@pytest.mark.ray
def test_second_sweep_refusal_names_the_running_sweep(reference_sweep):
    ref = reference_sweep
    assert ref.fresh.returncode == 2
    err = error_lines(ref.fresh.stderr)[0]
    assert "in use by a running sweep" in err and f"pid {ref.proc.pid}" in err, err
