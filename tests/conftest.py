"""Shared fixtures: a per-session cache (worlds, teachers) so tiny teachers train once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vldistill-cache")
    os.environ["VLDISTILL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def smoke_overrides(cache_dir) -> list[str]:
    """Overrides of the smoke preset with the session cache and no progress bars."""
    return ["experiment=smoke", f"cache_dir={cache_dir}", "progress=false", "threads=1"]


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory):
    """``module_dir(name)``: a scratch directory for a module-scoped fixture, removed after the
    module when none of the session's tests failed meanwhile (kept for a post-mortem, as
    ``tmp_path_retention_policy = "failed"`` keeps a failed test's ``tmp_path``). pytest
    itself keeps every ``tmp_path_factory`` directory to the session's end: the suite's
    sweeps left 4.1 GB of trial checkpoints there, on CI machines short of disk."""
    made: list[Path] = []
    failed = request.session.testsfailed

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
