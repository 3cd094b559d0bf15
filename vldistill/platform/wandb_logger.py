"""W&B: one run per trial, grouped by sweep, logged from the sweep driver.

Group: one per sweep directory, ``<space name>-<date>-<time>-<4 hex>``, made when the
sweep starts and kept in ``<sweep_dir>/wandb_group`` so that ``--resume`` (and ``vldistill
report --wandb``) log into the same group. Two sweeps of one space never share a group.
At the end of every sweep (and of every ``--resume``) the report's tables and plots go to
one more run of that group, ``job_type="report"`` (``report.log_to_wandb``).

Why not Ray's ``WandbLoggerCallback``: it starts two Ray actors (a queue and a logger
process) per trial and blocks the Tune loop while they boot -- 20 s per trial measured on
2 busy cores. Here the driver process holds one W&B run per live trial
(``wandb.init(reinit="create_new")``, ~0.3 s after the first) and logs each epoch row as it
arrives. Since only the driver logs, there is exactly one writer per trial whatever the
number of Ray Train workers (rank 0 by construction).

Mode: ``offline`` unless the user set ``WANDB_MODE=online`` *and* a key is configured
(``WANDB_API_KEY`` or ``wandb login``). Offline runs land in ``<sweep_dir>/wandb`` and
are uploaded later with ``wandb sync``. We never write the key anywhere: it is not part of
any config, row or report, and W&B reads it from its own environment.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import secrets
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_SKIP = ("time_", "timestamp", "config", "date", "hostname", "node_ip", "pid", "trial_id",
         "experiment_tag", "done", "should_checkpoint", "checkpoint_dir_name",
         "iterations_since_restore", "training_iteration")


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or Path("~/.netrc").expanduser().exists()):
        log.warning("WANDB_MODE=online but no W&B key is configured: logging offline")
        return "offline"
    return mode if mode in ("online", "offline", "disabled") else "offline"


GROUP_FILE = "wandb_group"


def sweep_group(sweep_dir: str | os.PathLike, name: str) -> str:
    """The W&B group of the sweep in ``sweep_dir``: read from its ``wandb_group`` file, or
    made (``name-YYYYmmdd-HHMMSS-xxxx``) and written there the first time."""
    path = Path(sweep_dir) / GROUP_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    group = f"{name}-{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(group + "\n")
    return group


def numeric(row: dict) -> dict[str, float]:
    """The loggable metrics of a Tune result (numbers, minus Tune's bookkeeping keys)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.startswith(_SKIP)}


def make_callback(sweep_dir: Path, group: str, project: str | None = None):
    """A Tune ``Callback`` logging every trial to W&B, or ``None`` if wandb is missing."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        log.warning("wandb is not installed: W&B logging is off (pip install wandb)")
        return None
    from ray import tune

    class WandbTrials(_TrialRuns, tune.Callback):
        """:class:`_TrialRuns` as a Tune callback."""

    (Path(sweep_dir) / "wandb").mkdir(parents=True, exist_ok=True)
    return WandbTrials(sweep_dir, group, project)


class _TrialRuns:
    """One W&B run per trial, in ``group`` under ``<sweep_dir>/wandb``; the Tune callback
    methods of :func:`make_callback`'s ``WandbTrials`` (Ray is imported there, not here).

    W&B is a view of the results, not their record (that is ``trials.jsonl``): a W&B call
    that fails (a full disk, a run id still held by the W&B service of a driver that was
    killed, a server error online) ends W&B logging for that trial with one warning, and the
    sweep goes on."""

    def __init__(self, sweep_dir: str | os.PathLike, group: str, project: str | None = None) -> None:
        self.runs: dict[str, Any] = {}
        self.broken: set[str] = set()
        self.mode = wandb_mode()
        self.project = project or os.environ.get("WANDB_PROJECT", "vldistill")
        self.group, self.sweep_dir = group, str(sweep_dir)

    def _guarded(self, trial, what: str, fn) -> None:
        if trial.trial_id in self.broken:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (any W&B failure: log it, keep sweeping)
            self.broken.add(trial.trial_id)
            self.runs.pop(trial.trial_id, None)
            log.warning("W&B: %s failed for trial %s (%s: %s); no more W&B logging for this "
                        "trial -- its results are in trials.jsonl as usual",
                        what, trial.trial_id, type(e).__name__, str(e)[:300])

    def _run(self, trial):
        import wandb
        run = self.runs.get(trial.trial_id)
        if run is None:
            config = {k: v for k, v in trial.config.items() if not k.startswith("__")}
            name = f"{self.group}-{trial.trial_id}"
            run = wandb.init(project=self.project, group=self.group, job_type="trial",
                             name=name, id=name, resume="allow", config=config, dir=self.sweep_dir,
                             mode=self.mode, reinit="create_new",
                             settings=wandb.Settings(console="off", silent=True))
            self.runs[trial.trial_id] = run
        return run

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = numeric(result)
        self._guarded(trial, "logging an epoch",
                      lambda: self._run(trial).log(row, step=int(row.get("epoch", iteration))))

    def _finish(self, trial, status: str) -> None:
        def finish():
            run = self._run(trial)  # a trial that never reported gets its run here
            del self.runs[trial.trial_id]
            run.summary["status"] = status
            run.finish(exit_code=0 if status != "failed" else 1)

        self._guarded(trial, "finishing the run", finish)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from vldistill.platform.searcher import was_stopped_early
        if (trial.last_result or {}).get("trial_error"):
            self._finish(trial, "failed")
        else:
            self._finish(trial, "pruned" if was_stopped_early(trial.last_result) else "completed")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed")

    def __getstate__(self):  # Tune pickles callbacks into the experiment state: no live runs
        return {"mode": self.mode, "project": self.project, "group": self.group,
                "sweep_dir": self.sweep_dir, "runs": {}, "broken": set()}

    def __setstate__(self, state):
        self.__dict__.update({"broken": set(), **state})
