"""Real Ray Tune + Optuna sweeps on the smoke world: rows, pruning, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.ray
DRIVER_HOOK = Path(__file__).resolve().parents[1] / "driver_hook.py"


def rows_of(sweep: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep / "trials.jsonl").read_text().splitlines() if line.strip()]


def sweep_of(cli, tmp_path: Path, space_text: str, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    """Write ``space_text`` as a search space and sweep it into ``tmp_path/name`` (no W&B)."""
    space = tmp_path / f"{name}.yaml"
    space.write_text(space_text)
    out = tmp_path / name
    return out, cli(["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])


def test_smoke_sweep_writes_one_row_per_trial(cli, tmp_path):
    out = tmp_path / "smoke"
    proc = cli(["sweep", "search_space=smoke", f"out_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(out)
    assert len(rows) == 2 and len({r["trial_id"] for r in rows}) == 2
    for r in rows:
        assert r["status"] == "completed" and r["error"] is None
        assert r["epochs"] == 2 and r["seed"] == 0
        assert r["params"]["distill.weights.mse"] in (0.0, 1.0)
        for key in ("base_acc", "novel_acc", "hmean", "shift_acc", "teacher/novel_acc"):
            assert 0.0 <= r["metrics"][key] <= 1.0, key
        assert r["config"]["distill.weights.mse"] == r["params"]["distill.weights.mse"]
    assert (out / "trials.csv").is_file() and (out / "search_space.yaml").is_file()
    assert json.loads((out / "sweep.json").read_text())["trials"] == 2
    study = optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run written"


TEXT_DESIGN = """
name: text_design
metric: novel_acc
mode: max
scheduler: none
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke]
design:
  type: loco
  base: {distill.text.source: templates}
  components:
    templates: {distill.text.source: classname}
"""


def test_design_points_that_change_the_class_text_get_their_assets_before_the_trials(cli, tmp_path):
    # The trials only read shared assets: a point whose text source differs from the sweep's
    # base config must find its text targets built by the sweep (it failed with a
    # MissingAssetError before), and each point's rows use their own text.
    out, proc = sweep_of(cli, tmp_path, TEXT_DESIGN, "text")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(out)
    assert sorted(r["design_point"] for r in rows) == ["base", "no_templates"]
    assert all(r["status"] == "completed" and r["error"] is None for r in rows), [r["error"] for r in rows]
    assert {r["config"]["distill.text.source"] for r in rows} == {"templates", "classname"}
    assets = json.loads((out / "sweep.json").read_text())["assets"]
    prep = [a for a in assets if a["asset"].startswith("dataset, teacher, text")]
    assert len(prep) == 2, assets  # the base config (classname) and the templates point
    assert "shared assets for 2 configurations" in proc.stderr


ASHA_SPACE = """
name: asha_test
metric: novel_acc
mode: max
sampler: random
scheduler: {type: asha, max_t: 4, grace_period: 1, reduction_factor: 3}
num_samples: 6
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke, optim.epochs=4, eval.every=1]
params:
  optim.lr: {loguniform: [1.0e-5, 3.0e-2]}
"""


def test_asha_stopped_trials_are_pruned_in_the_optuna_study(cli, tmp_path):
    out, proc = sweep_of(cli, tmp_path, ASHA_SPACE, "asha")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["trial_id"]: r for r in rows_of(out)}
    pruned = [r for r in rows.values() if r["status"] == "pruned"]
    assert pruned, "ASHA stopped no trial early"
    assert all(r["epochs"] < 4 for r in pruned)
    study = optuna.load_study(study_name="asha_test", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(rows) - len(pruned)


RESUME_SPACE = """
name: resume_test
metric: novel_acc
mode: max
sampler: random
sampler_seed: 7
num_samples: 4
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke, optim.epochs=4, eval.every=1]
params:
  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
  distill.weights.mse: {choice: [0.0, 1.0], baseline: 0.0}
"""


def _signature(rows: list[dict]) -> list[tuple]:
    keys = ("base_acc", "novel_acc", "shift_acc", "hmean")
    return sorted((round(r["params"]["optim.lr"], 12), r["params"]["distill.weights.mse"], r["seed"],
                   r["status"], tuple(round(r["metrics"][k], 6) for k in keys)) for r in rows)


@pytest.mark.slow  # ~2 min: CI keeps the stricter SIGKILL resume (tests/reliability/test_faults.py)
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(cli, ray_env, tmp_path):
    space = tmp_path / "resume.yaml"
    space.write_text(RESUME_SPACE)
    reference = tmp_path / "reference"
    proc = cli(["sweep", f"search_space={space}", f"out_dir={reference}", "--no-wandb"])
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "interrupted"
    # The driver sends itself SIGINT (Ctrl-C) on the log line after the first trial's row:
    # one trial finished, the others running -- at that point every time, not after a sleep.
    driver = subprocess.Popen([sys.executable, str(DRIVER_HOOK), "signal", "SIGINT", "--", "sweep",
                               f"search_space={space}", f"out_dir={out}", "--no-wandb"],
                              env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver.communicate(timeout=700)
    first = rows_of(out)
    assert 1 <= len(first) < 4

    proc = cli(["sweep", "--resume", str(out), "--no-wandb"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = rows_of(out)
    ids = [r["trial_id"] for r in lines]
    assert len(ids) == len(set(ids)) == 4, "a finished trial was run (and recorded) twice"
    assert {r["trial_id"] for r in first} <= set(ids)
    assert _signature(lines) == _signature(rows_of(reference))


LIFECYCLE = """
import json, sys
import ray
from vldistill.platform.sweep import run_sweep
out = sys.argv[1]
run_sweep("smoke", [], out_dir=out + "/own", wandb=False)
own = ray.is_initialized()
ray.init(num_cpus=2, include_dashboard=False)  # the caller's own Ray
run_sweep("smoke", [], out_dir=out + "/callers", wandb=False)
print(json.dumps({"own_ray_left_running": own, "callers_ray_left_running": ray.is_initialized()}))
"""


def test_a_sweep_stops_the_ray_it_started_and_leaves_the_callers_running(ray_env, tmp_path):
    proc = subprocess.run([sys.executable, "-c", LIFECYCLE, str(tmp_path)], env=ray_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "own_ray_left_running": False, "callers_ray_left_running": True}
    for name in ("own", "callers"):
        rows = rows_of(tmp_path / name)
        assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
        assert (tmp_path / name / "report.md").is_file()
