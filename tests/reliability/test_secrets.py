"""Secrets: a sweep run with ``WANDB_API_KEY`` in its environment writes the key nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability_helpers import FAKE_WANDB_KEY

pytestmark = pytest.mark.ray


def _files_containing(root: Path, needle: bytes) -> tuple[int, list[str]]:
    scanned, hits = 0, []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            try:
                if needle in path.read_bytes():
                    hits.append(str(path.relative_to(root)))
            except OSError:
                pass
    return scanned, hits


def test_sweep_directory_never_contains_the_wandb_key(reference_sweep):
    ref = reference_sweep
    assert ref.proc.returncode == 0, ref.log.read_text()[-3000:]
    # W&B really ran (offline, one run per trial) and Tune wrote its trial dirs: the scan
    # covers configs, rows, reports, the Optuna journal, checkpoints and the W&B run files
    # (the summary run too: it carries the report's tables).
    runs = list((ref.dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 4, runs  # one per trial, plus the sweep's summary run (the report)
    assert len(list((ref.dir / "tune").glob("sweep_trainable_*"))) == 3
    scanned, hits = _files_containing(ref.dir, FAKE_WANDB_KEY.encode())
    assert scanned > 30, f"only {scanned} files scanned"
    assert hits == [], f"the W&B key is written to {hits}"
    # nor half of it (a key split over a line, or its prefix shown for identification)
    _, hits = _files_containing(ref.dir, FAKE_WANDB_KEY[:20].encode())
    assert hits == [], f"part of the W&B key is written to {hits}"


def test_ray_logs_and_home_never_contain_the_wandb_key(reference_sweep, ray_env):
    """Beyond the sweep directory: the Ray session (logs of driver, raylet and trial
    processes, all of which hold the key in their environment) and W&B's settings in HOME."""
    assert reference_sweep.proc.returncode == 0
    ray_root = Path(ray_env["RAY_TMPDIR"])
    assert list(ray_root.glob("ray/session_*/logs/*")), "no Ray session logs to scan"
    for root in (ray_root, Path(ray_env["HOME"])):
        _, hits = _files_containing(root, FAKE_WANDB_KEY.encode())
        assert hits == [], f"the W&B key is written to {hits} under {root}"
