"""Shared fixtures: a per-session cache (worlds, teachers) so tiny teachers train once."""

from __future__ import annotations

import os
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
