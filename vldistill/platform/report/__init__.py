"""The aggregated ablation report of one sweep directory (never imports ray).

``build_report(sweep_dir)`` writes ``report.md``, ``report.html``, ``trials.csv``,
``levels.csv`` and ``plots/*.png``; ``report_main`` is the CLI's entry (``vldistill report``).
"""

from vldistill.platform.report.sections import (Factor, ReportError, Sweep, build_report,
                                                  load_sweep, log_to_wandb, report_main)

__all__ = ["Factor", "ReportError", "Sweep", "build_report", "load_sweep", "log_to_wandb",
           "report_main"]
