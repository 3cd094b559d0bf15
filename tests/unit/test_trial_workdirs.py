"""Trial work directories of killed trial processes are removed by the next trial."""

from __future__ import annotations

import os
import subprocess
import sys

from vldistill.platform.sweep import WORK_PREFIX, remove_stale_work_dirs


def test_directories_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{WORK_PREFIX}{dead_pid}-abc123"
    live = tmp_path / f"{WORK_PREFIX}{os.getpid()}-def456"
    legacy = tmp_path / f"{WORK_PREFIX}2arq3uji"  # the name before pids: never guessed at
    other = tmp_path / "something-else-1"
    for d in (stale, live, legacy, other):
        d.mkdir()
        (d / "last.pt").write_bytes(b"x" * 100)
    assert remove_stale_work_dirs(tmp_path) == [stale]
    assert not stale.exists()
    assert (live / "last.pt").is_file() and (legacy / "last.pt").is_file() and other.is_dir()
    assert remove_stale_work_dirs(tmp_path) == []
