"""The research lead's tools without Ray: ``sweep --plan``, ``vldistill spaces``, the CLI's
words and flags anywhere, and the training progress bar."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vldistill.platform.cli import VERBS, build_parser, parse_args
from vldistill.platform.plan import space_header, spaces_text
from vldistill.search_spaces.loader import SHIPPED_DIR, list_search_spaces
from vldistill.trainers.progress import epoch_steps

GRID = """
# Question: a test grid.
# Cost: 6 configurations x 3 seeds.
name: plan_grid
metric: novel_acc
mode: max
sampler: grid
num_samples: 100
seeds: [0, 1, 2]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke]
params:
  distill.weights.mse: {grid: [0.0, 1.0], baseline: 0.0}
  optim.lr: {grid: [1.0e-3, 2.0e-3, 4.0e-3]}
"""

# Runs the CLI in-process and reports whether anything imported ray.
RUN = """
import json, sys
from vldistill.platform.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "ray": "ray" in sys.modules}))
"""


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "VLDISTILL_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home"),
           "WANDB_MODE": "offline"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", RUN, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return proc, json.loads(last)


def test_plan_of_a_grid_prints_every_configuration_and_the_trial_count_writes_nothing_starts_no_ray(tmp_path):
    space = tmp_path / "grid.yaml"
    space.write_text(GRID)
    (tmp_path / "home").mkdir()
    before = _tree(tmp_path)
    proc, status = _cli(tmp_path, "sweep", f"search_space={space}", "--plan", "optim.epochs=3")
    assert status == {"rc": 0, "ray": False}, proc.stderr[-2000:]
    out = proc.stdout
    assert "6 grid points" in out
    assert "6 configurations x 3 seeds [0, 1, 2] = 18 trials of 3 epochs" in out
    for mse in ("0.0", "1.0"):
        for lr in ("0.001", "0.002", "0.004"):
            assert f"distill.weights.mse={mse}  optim.lr={lr}" in out, (mse, lr)
    assert "1 worker(s) x 1 CPU, 0 GPU, 2 GiB memory" in out and "trial(s) at once" in out
    assert "Tune keeps 18 started or queued (every trial queued" in out
    assert "world" in out and "missing" in out and "teacher (embedded)" in out
    assert _tree(tmp_path) == before, "--plan wrote files"


def test_plan_of_the_shipped_default_counts_its_raced_trials(tmp_path):
    proc, status = _cli(tmp_path, "sweep", "--plan", "search_space=default")
    assert status == {"rc": 0, "ray": False}, proc.stderr[-2000:]
    assert ("4 configurations x 2-4 seeds, raced (margin 0.01, alpha 0.05, futility 0.1, sd pooled "
            "over the factorial) = 8 to 16 trials of 10 epochs") in proc.stdout


def test_plan_of_a_raced_space_gives_the_range_of_trials(tmp_path):
    proc, status = _cli(tmp_path, "sweep", "--plan", "search_space=p1_loco")
    assert status == {"rc": 0, "ray": False}, proc.stderr[-2000:]
    assert ("6 configurations x 2-8 seeds, raced (margin 0.01, alpha 0.05, futility 0.1) = "
            "12 to 48 trials of 10 epochs") in proc.stdout


def test_plan_of_an_invalid_space_gives_the_sweeps_exit_2_error(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text(GRID.replace("optim.lr:", "optim.lrr:"))
    planned, p_status = _cli(tmp_path, "sweep", f"search_space={space}", "--plan")
    swept, s_status = _cli(tmp_path, "sweep", f"search_space={space}", "--no-wandb")
    assert p_status == s_status == {"rc": 2, "ray": False}
    error = [ln for ln in planned.stderr.splitlines() if ln.startswith("vldistill: error:")]
    assert error and "optim.lrr" in error[0]
    assert error == [ln for ln in swept.stderr.splitlines() if ln.startswith("vldistill: error:")]
    assert not (tmp_path / "runs").exists()


def test_spaces_lists_every_shipped_space_with_its_question_and_cost():
    text = spaces_text()
    names = list_search_spaces()
    assert len(names) >= 8
    for name in names:
        question, cost = space_header(SHIPPED_DIR / f"{name}.yaml")
        assert question.startswith("Question"), name
        assert cost.startswith("Cost:"), name
        assert f"\n{name}\n  Question" in "\n" + text, name
    assert "p1_losses" in names and "72 trials" in text


def test_flags_go_anywhere_among_key_value_tokens():
    args = parse_args(["sweep", "search_space=smoke", "--no-wandb", "out_dir=runs/x", "--plan", "seed=1"])
    assert (args.verb, args.tokens, args.no_wandb, args.plan) == (
        "sweep", ["search_space=smoke", "out_dir=runs/x", "seed=1"], True, True)
    args = parse_args(["report", "--wandb", "runs/x"])
    assert (args.verb, args.sweep_dir, args.wandb) == ("report", "runs/x", True)
    with pytest.raises(SystemExit) as e:
        parse_args(["nosuchverb"])
    assert e.value.code == 2


def test_help_describes_what_the_user_gets_with_an_example_per_verb():
    parser, subs = build_parser()
    top = parser.format_help()
    assert "parse, validate" not in top and "example" in top
    for verb in VERBS:
        assert verb in top
        text = subs[verb].format_help()
        assert f"example:\n  vldistill {verb}" in text, verb


def test_epoch_progress_bar_only_on_a_terminal(monkeypatch):
    assert list(epoch_steps(3, 1, 2, enabled=True)) == [0, 1, 2]  # pytest's stderr: no terminal

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(epoch_steps(4, 1, 2, enabled=False)) == [0, 1, 2, 3] and term.getvalue() == ""
    assert list(epoch_steps(4, 2, 5, enabled=True)) == [0, 1, 2, 3]
    shown = term.getvalue()
    # the bar's format (its fields), not a speed: no wall-clock bound is asserted
    assert "epoch 2/5" in shown and "/4 [" in shown and "step/s" in shown  # ETA: [elapsed<left, rate]


def test_plan_says_the_sweep_builds_assets_for_every_strategy_it_sweeps(tmp_path):
    proc, status = _cli(tmp_path, "sweep", "--plan", "search_space=prompt_diversification")
    assert status == {"rc": 0, "ray": False}, proc.stderr[-2000:]
    assert "for 4 configurations: the space's params/design points change what its trials read" in proc.stdout
    assert "synthetic training set (P3)" in proc.stdout and "build their own entries" not in proc.stdout
