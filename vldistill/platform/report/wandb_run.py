"""The report's optional W&B view: every table and plot logged to one run in the sweep's group.

W&B is a view of the report, never its record: a missing or failing ``wandb`` costs a
warning, and the report on disk stands.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from vldistill.platform.report.loading import Sweep, trials_csv_frame
from vldistill.platform.report.queries import best_config
from vldistill.platform.report.render import Section

log = logging.getLogger(__name__)


def log_to_wandb(sw: Sweep, sections: list[Section], out: Path) -> str | None:
    """Log every report table and plot to one W&B run in the sweep's group; returns its
    directory, or None when W&B is missing or fails (a warning: the report is on disk).

    The group is the sweep's own (``wandb_logger.sweep_group``: kept in the sweep directory,
    so a resumed sweep's summary lands beside the first); the mode is the trials' mode
    (``wandb_logger.wandb_mode``: offline unless ``WANDB_MODE=online`` with a key); run files
    go to ``WANDB_DIR`` or ``out``. Only report content is logged (no environment, no
    config secrets).
    """
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed: the report is not logged to W&B")
        return None
    from vldistill.platform.wandb_logger import sweep_group, wandb_mode

    try:
        group = sweep_group(sw.dir, sw.name)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vldistill"), name=f"{sw.name}-report",
                         group=group, job_type="report", mode=wandb_mode(),
                         dir=os.environ.get("WANDB_DIR") or str(out), reinit="create_new",
                         config={"sweep": sw.name, "objective": [m for m, _ in sw.objectives],
                                 "factors": [f.key for f in sw.factors]},
                         settings=wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                                 save_code=False, disable_git=True))
    except Exception as e:  # noqa: BLE001  (W&B is a view of the report, never its record)
        log.warning("W&B: the report run could not start (%s: %s); the report is on disk",
                    type(e).__name__, str(e)[:300])
        return None
    try:
        _log_report(run, sw, sections)
        return str(Path(run.dir).parent)
    except Exception as e:  # noqa: BLE001
        log.warning("W&B: logging the report failed (%s: %s); the report is on disk",
                    type(e).__name__, str(e)[:300])
        return None
    finally:
        with contextlib.suppress(Exception):
            run.finish()


def _log_report(run, sw: Sweep, sections: list[Section]) -> None:
    import wandb

    for sec in sections:
        for t in sec.tables:
            if len(t.frame):
                run.log({f"report/{t.slug}": wandb.Table(dataframe=t.frame.astype(str))})
        for caption, path in sec.plots:
            run.log({f"plots/{path.stem}": wandb.Image(str(path), caption=caption)})
    trials = trials_csv_frame(sw)
    run.log({"report/trials": wandb.Table(dataframe=trials.astype(str))})
    for m in sw.metrics:
        best = best_config(sw, m)
        if best is not None:
            run.summary[f"best/{m}"] = float(sw.configs.set_index("config").loc[best, m])
