"""The registries of samplers, trial schedulers and P3 synthesis strategies.

Each registered name builds a working object, and an unknown name is refused by the
validator, which names the key and every registered name (read from the registry, so a new
entry is covered here without editing this file). The scheduler tests import Ray Tune's
scheduler classes (the driver hands that module to the builders); they start no Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import optuna
import pytest
import torch
import yaml

from vldistill.search_spaces import SearchSpaceError, search_space_from_dict
from vldistill.search_spaces.registry import SAMPLERS, SCHEDULERS
from vldistill.search_spaces.suggest import define_by_run
from vldistill.trainers import synth as S
from vldistill.trainers.config import ConfigError, from_dict

SPACE = {"name": "t", "metric": "novel_acc", "mode": "max", "num_samples": 4, "seeds": [0],
         "params": {"distill.weights.mse": {"choice": [0.0, 1.0]},
                    "optim.lr": {"choice": [1e-3, 2e-3, 4e-3]}}}


def _space(**changes):
    return search_space_from_dict({**SPACE, **changes})


def _asked(sampler, space, n: int = 4) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    suggest, out = define_by_run(space), []
    for i in range(n):
        trial = study.ask()
        suggest(trial)
        out.append(dict(trial.params))
        study.tell(trial, float(i))
    return out


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_builds_and_replays_its_seed(name):
    space = _space(sampler=name, sampler_seed=3)
    points = _asked(SAMPLERS[name](space), space)
    assert points == _asked(SAMPLERS[name](space), space)  # same sampler_seed, same points
    for p in points:
        assert p["distill.weights.mse"] in (0.0, 1.0) and p["optim.lr"] in (1e-3, 2e-3, 4e-3)
    if name == "grid":  # every point once
        assert len({tuple(p.values()) for p in points}) == len(points)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_builds_a_tune_scheduler(name):
    from ray.tune import schedulers
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    space = _space(scheduler={"type": name, "grace_period": 2} if name == "asha" else name)
    built = SCHEDULERS[name](space, 16, schedulers)
    assert isinstance(built, TrialScheduler)
    if name == "asha":  # rungs at grace * 2^k up to max_t, which defaults to the base's epochs
        assert built.metric == "novel_acc"
        assert built.debug_string().endswith("Iter 16.000: None | Iter 8.000: None | "
                                             "Iter 4.000: None | Iter 2.000: None")
        assert "Iter 16.000" not in SCHEDULERS[name](space, 8, schedulers).debug_string()


@pytest.mark.parametrize("key,data", [("sampler", {"sampler": "cmaes"}),
                                      ("scheduler.type", {"scheduler": {"type": "hyperband"}}),
                                      ("scheduler", {"scheduler": 3})])
def test_an_unknown_sampler_or_scheduler_names_the_key_and_the_registered_names(key, data):
    table = SAMPLERS if key == "sampler" else SCHEDULERS
    with pytest.raises(SearchSpaceError) as e:
        _space(**data)
    msg = str(e.value)
    assert f"{key}:" in msg and ", ".join(table) in msg


def test_an_unknown_sampler_exits_2_before_ray_and_writes_nothing(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "sampler": "cmaes"}))
    env = {**os.environ, "VLDISTILL_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    code = ("import sys; from vldistill.platform.cli import main; rc = main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'ray imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "sweep", f"search_space={space}",
                           f"out_dir={tmp_path / 'out'}", "--no-wandb"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sampler" in proc.stderr and "cmaes" in proc.stderr and ", ".join(SAMPLERS) in proc.stderr
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


# ----- P3 synthesis strategies ----------------------------------------------------------------

NAMES = ["red circle", "blue square", "green triangle"]
FAST = S.SynthConfig(images_per_class=2, image_size=16, prompt_steps=3, pseudo_words=2)


@pytest.fixture(scope="module")
def teacher():
    from vldistill.trainers.teachers import load_open_clip

    torch.set_num_threads(1)
    return load_open_clip("vldistill-rn10t-tiny", None)  # seeded random weights, no download


@pytest.mark.parametrize("name", list(S.STRATEGIES))
def test_every_strategy_builds_one_unit_target_per_image(teacher, name):
    cfg = replace(FAST, strategy=name)
    S.validate_synth(cfg)
    targets, labels, styles, stats = S.prompt_targets(teacher, NAMES, cfg)
    n = len(NAMES) * cfg.images_per_class
    assert targets.shape[0] == n == len(styles) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(targets.norm(dim=-1), torch.ones(n), atol=1e-4)
    again, _, _, _ = S.prompt_targets(teacher, NAMES, cfg)
    assert torch.equal(targets, again)  # seeded
    assert isinstance(stats, dict)


def test_an_unknown_strategy_names_the_key_and_the_registered_names():
    with pytest.raises(ConfigError) as e:
        from_dict({"data": {"train_source": "synthetic", "synthetic": {"strategy": "vqgan"}}})
    msg = str(e.value)
    assert "data.synthetic.strategy" in msg and "vqgan" in msg and ", ".join(S.STRATEGIES) in msg

