"""Ray integration fixtures: an isolated HOME (Ray writes ~/.ray/auth_token), offline W&B."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def ray_env(cache_dir, tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ)
    env.update(HOME=str(home), VLDISTILL_CACHE=str(cache_dir), WANDB_MODE="offline",
               WANDB_SILENT="true", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def cli(ray_env):
    """Run ``vldistill ARGS`` in a fresh process (its own local Ray), output captured."""

    def run(args: list[str], timeout: float = 600, **popen) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vldistill.platform.cli", *args], env=ray_env,
                              capture_output=True, text=True, timeout=timeout, **popen)

    return run
