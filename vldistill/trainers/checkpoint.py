"""A trial's checkpoint, ``last.pt``: written atomically after every epoch, read on resume.

One file per trial directory holds the student, the optimiser, the loss modules' state
(``token_nce``'s projection and queue), the number of finished epochs and the metrics of the
last evaluation. It is written to a temporary name and moved over ``last.pt`` with
``os.replace``, so a crash mid-write leaves the previous checkpoint intact, and a file that
Ray already persisted (by hard link) keeps its bytes: the next save replaces the name, it
never rewrites the old file. Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
CKPT_NAME = "last.pt"


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path) -> Path:
    """Write ``last.pt`` atomically: a crash mid-write leaves the previous one intact."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / CKPT_NAME
    tmp = ckpt_dir / f".{CKPT_NAME}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load_checkpoint(ckpt_dir: Path | None) -> dict[str, Any] | None:
    """The state in ``ckpt_dir/last.pt``, or None when there is none (a fresh trial)."""
    if ckpt_dir is None or not (Path(ckpt_dir) / CKPT_NAME).is_file():
        return None
    return torch.load(Path(ckpt_dir) / CKPT_NAME, map_location="cpu", weights_only=True)


def trial_state(student: torch.nn.Module, optimizer: torch.optim.Optimizer,
                criterion: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    """What ``last.pt`` holds after ``epoch`` finished epochs."""
    return {"student": student.state_dict(), "optimizer": optimizer.state_dict(),
            "criterion": criterion.state_dict(), "epoch": epoch, "metrics": metrics}


def restore(ckpt_dir: Path | None, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
            criterion: torch.nn.Module) -> tuple[int, dict[str, float]]:
    """Load ``last.pt`` into the modules if there is one.

    Returns:
        ``(finished epochs, metrics of the last evaluation)``; ``(0, {})`` for a fresh trial.
    """
    state = load_checkpoint(ckpt_dir)
    if state is None:
        return 0, {}
    student.load_state_dict(state["student"])
    optimizer.load_state_dict(state["optimizer"])
    if "criterion" in state:  # losses with weights or buffers (token_nce's projection, queue)
        criterion.load_state_dict(state["criterion"])
    log.info("resumed from %s after epoch %d", Path(ckpt_dir) / CKPT_NAME, state["epoch"])
    return state["epoch"], state.get("metrics", {})
