"""Reliability fixtures: isolated sweeps in subprocesses, tagged so their Ray processes can be
cleaned up, small image-folder datasets, and the shared reference sweep.

* ``ray_env``: like ``tests/integration``'s (isolated HOME, session cache, offline W&B), plus
  ``RAY_TMPDIR`` (this session's own Ray temp dir: the sweep never joins another Ray, and its
  logs can be searched) and ``VLDISTILL_TEST_TAG`` (a random tag inherited by the driver and
  every Ray process it starts: after a SIGKILLed driver, teardown kills exactly the processes
  carrying the tag -- never ``ray stop``, which would stop other people's Ray).
* ``cli`` / ``spawn``: ``vldistill ARGS`` in a fresh process, waited for / running.
* ``reference_sweep``: ONE sweep shared by several tests (2 cores, ~8 minutes for the whole
  directory): 3 grid trials, W&B on (offline) with a fake ``WANDB_API_KEY`` (the secrets
  test), and -- while it runs -- two more sweeps pointed at its directory (the concurrency
  test). Its rows are the uninterrupted run the driver-kill test compares against.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from reliability_helpers import (FAKE_WANDB_KEY, OTHER_SPACE, REFERENCE_SPACE, TAG_VAR, ReferenceSweep,
                                 kill_tagged, spawn, vldistill_cmd, wait_for)


@pytest.fixture(scope="session")
def ray_tmp() -> Path:
    # Short: Ray's unix sockets live under it (107-character limit on socket paths).
    path = Path(tempfile.mkdtemp(prefix="vrel-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def session_tag() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def ray_env(cache_dir, tmp_path_factory, ray_tmp, session_tag) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ)
    env.update(HOME=str(home), VLDISTILL_CACHE=str(cache_dir), WANDB_MODE="offline",
               WANDB_SILENT="true", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               RAY_TMPDIR=str(ray_tmp), **{TAG_VAR: session_tag})
    for key in ("RAY_ADDRESS", "WANDB_API_KEY"):
        env.pop(key, None)
    yield env
    kill_tagged(session_tag)  # anything a test left running (a killed driver's Ray, a hung sweep)


@pytest.fixture
def cli(ray_env):
    """Run ``vldistill ARGS`` in a fresh process, output captured; returns the process."""

    def run(args: list[str], timeout: float = 600, env: dict | None = None):
        return subprocess.run(vldistill_cmd(args), env=env or ray_env, capture_output=True,
                              text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def reference_space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spaces") / "reference.yaml"
    path.write_text(REFERENCE_SPACE)
    return path


@pytest.fixture(scope="session")
def reference_sweep(ray_env, reference_space, tmp_path_factory) -> ReferenceSweep:
    """The reference sweep, W&B on with a fake key, raced by two sweeps on its directory."""
    work = tmp_path_factory.mktemp("reference")
    out = work / "sweep"
    env = {**ray_env, "WANDB_API_KEY": FAKE_WANDB_KEY}
    log = work / "reference.log"
    release = work / "release"
    # The driver blocks on its first row until ``release`` exists: the sweep is running while
    # the two intruders are refused, however slowly they start (an event, not a race).
    proc = spawn(["sweep", f"search_space={reference_space}", f"out_dir={out}"], env, log,
                 on_first_row=("wait", str(release)))
    ref = ReferenceSweep(out, proc, log)
    try:
        # Tune has started (the lock is held, the experiment exists): race two more sweeps.
        wait_for(lambda: (out / "tune").is_dir(), 300, 0.1, "the reference sweep to start Tune",
                 proc, log)
        ref.space_before = (out / "search_space.yaml").read_text()
        other = work / "other.yaml"
        other.write_text(OTHER_SPACE)
        intruders = {
            "fresh": ["sweep", f"search_space={other}", f"out_dir={out}", "--no-wandb"],
            "resume": ["sweep", "--resume", str(out), "--no-wandb"],
        }
        started = {k: subprocess.Popen(vldistill_cmd(a), env=ray_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                   for k, a in intruders.items()}
        for key, p in started.items():
            stdout, stderr = p.communicate(timeout=300)
            setattr(ref, key, subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
        ref.running_when_refused = proc.poll() is None
        release.touch()
        proc.wait(timeout=480)
    finally:
        if proc.poll() is None:
            proc.kill()
    return ref
