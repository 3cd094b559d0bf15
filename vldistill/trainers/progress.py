"""The epoch progress bar of ``vldistill train``: steps/s and the epoch's ETA (tqdm).

Shown only when ``progress=true`` *and* stderr is a terminal: a log file, a pipe, a CI job
or a Ray trial (sweeps set ``progress=false``) gets no bar characters, only the one-line
summary per epoch that ``trainers.loop.LogReporter`` logs either way. The bar leaves no
line behind (``leave=False``): the log line is the epoch's record.
"""

from __future__ import annotations

import sys
from typing import Iterable

from tqdm.auto import tqdm


def epoch_steps(steps: int, epoch: int, epochs: int, enabled: bool = True) -> Iterable[int]:
    """``range(steps)``, wrapped in a bar ``epoch E/N`` with steps/s and ETA when shown."""
    if not (enabled and sys.stderr.isatty()):
        return range(steps)
    return tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", unit="step", leave=False,
                dynamic_ncols=True, file=sys.stderr)
