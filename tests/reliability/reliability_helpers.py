"""Helpers of the reliability tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TAG_VAR = "VLDISTILL_TEST_TAG"
FAKE_WANDB_KEY = "fake0123456789abcdef" + "0123456789abcdef0123"  # 40 characters, like a real key
assert len(FAKE_WANDB_KEY) == 40

# The reference space: the same 3 configurations in every sweep that uses it (grid, fixed
# sampler seed), so two runs of it can be compared row by row.
REFERENCE_SPACE = """
name: rel_reference
metric: novel_acc
mode: max
sampler: grid
sampler_seed: 0
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke, eval.every=1]
params:
  distill.cls.tau: {choice: [0.07, 0.05, 0.1], baseline: 0.07}
"""

# A space with one numerically broken configuration: cos / 1e-40 overflows to inf, the
# cross-entropy of inf logits is NaN at the first step.
NAN_TAU = 1.0e-40
NAN_SPACE = """
name: rel_nan
metric: novel_acc
mode: max
sampler: grid
sampler_seed: 0
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke, eval.every=1]
params:
  distill.cls.tau: {choice: [0.07, 1.0e-40], baseline: 0.07}
"""

# Another space: what a second, different sweep started on the same directory would write.
OTHER_SPACE = """
name: rel_intruder
metric: novel_acc
mode: max
sampler: random
num_samples: 1
seeds: [0]
overrides: [experiment=smoke]
params:
  optim.lr: {choice: [0.001]}
"""


# ----- processes ---------------------------------------------------------------------------


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``VLDISTILL_TEST_TAG=<tag>`` (ours, by construction)."""
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def kill_tagged(tag: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process carrying ``tag``, by pid; returns the pids that were alive."""
    killed: list[int] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = tagged_pids(tag)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return sorted(set(killed))


DRIVER_HOOK = Path(__file__).resolve().parents[1] / "driver_hook.py"


def vldistill_cmd(args: list[str], on_first_row: tuple[str, str] | None = None) -> list[str]:
    """``vldistill ARGS``; with ``on_first_row=("signal", "SIGKILL")`` or ``("wait", PATH)``
    the driver runs under ``tests/driver_hook.py`` (an event, not a sleep, times the fault)."""
    if on_first_row is None:
        return [sys.executable, "-m", "vldistill.platform.cli", *args]
    return [sys.executable, str(DRIVER_HOOK), *on_first_row, "--", *args]


def spawn(args: list[str], env: dict, log: Path,
          on_first_row: tuple[str, str] | None = None) -> subprocess.Popen:
    """Start ``vldistill ARGS`` in the background, stdout+stderr to ``log``."""
    fh = open(log, "w")
    return subprocess.Popen(vldistill_cmd(args, on_first_row), env=env, stdout=fh,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition",
             proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate`` until truthy; fail (with the process log) on timeout or early exit."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.is_file() else ""
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(interval)
    tail = log.read_text()[-3000:] if log and log.is_file() else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{tail}")


def row_lines(sweep: Path) -> list[dict]:
    """Every line of ``trials.jsonl`` (not deduplicated: a re-run trial shows up twice)."""
    path = sweep / "trials.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("vldistill: error:")]


def signature(rows: list[dict]) -> list[tuple]:
    """What must be equal between two runs of a sweep: params, seed, status, reason, metrics."""
    keys = ("loss", "base_acc", "novel_acc", "shift_acc", "hmean")
    out = []
    for r in rows:
        params = tuple(sorted((k, v) for k, v in r["params"].items()))
        metrics = tuple(round(r["metrics"][k], 6) if k in r["metrics"] else None for k in keys)
        reason = (r["error"] or "").split(":")[0]  # the exception type, not the NaN's wording
        out.append((params, r["seed"], r["status"], reason, r["epochs"], metrics))
    return sorted(out, key=repr)


@dataclass
class ReferenceSweep:
    dir: Path
    proc: subprocess.Popen
    log: Path
    # the two sweeps started on the same directory while the reference ran:
    fresh: subprocess.CompletedProcess | None = None  # search_space=<other> out_dir=<same>
    resume: subprocess.CompletedProcess | None = None  # --resume <same>
    running_when_refused: bool = False  # the reference was still running when both returned
    space_before: str = ""  # search_space.yaml when the intruders started
    extra: dict = field(default_factory=dict)




# ----- a small image-folder dataset -----------------------------------------------------------

FOLDER_BASE = ["red_square", "blue_circle", "green_star"]
FOLDER_NOVEL = ["yellow_square", "red_circle"]
FOLDER_DOMAINS = ("photo", "sketch")


def write_png(path: Path, seed: int, size: int = 32) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_folder_dataset(root: Path, per_class: int = 6, shift_per_class: int = 3) -> Path:
    """``root/<domain>/<class>/*.png`` + ``classes.json``: a valid dataset (3 base, 2 novel
    classes; training domain ``photo``, shift domain ``sketch``)."""
    seed = 0
    for domain in FOLDER_DOMAINS:
        n = per_class if domain == "photo" else shift_per_class
        for cls in FOLDER_BASE + FOLDER_NOVEL:
            for i in range(n):
                seed += 1
                write_png(root / domain / cls / f"{i:03d}.png", seed)
    (root / "classes.json").write_text(json.dumps({"base": FOLDER_BASE, "novel": FOLDER_NOVEL}))
    return root


def folder_overrides(root: Path, out: Path, smoke: list[str]) -> list[str]:
    return ["train", *smoke, "data=folder", f"data.root={root}", "data.image_size=32",
            "student.image_size=32", f"out_dir={out}"]
