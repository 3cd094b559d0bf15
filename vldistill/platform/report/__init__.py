"""The aggregated ablation report of one sweep directory (never imports ray).

``build_report(sweep_dir)`` reads ``search_space.yaml``, ``trials.jsonl`` (last line per
``trial_id`` wins) and, when present, the Optuna journal, and writes ``report.md``, a
self-contained ``report.html``, ``trials.csv``, ``levels.csv`` and ``plots/*.png``
(docs/report.md). ``report_main`` is the CLI's entry (``vldistill report``).

Conventions: only ``completed`` trials enter means, intervals, importance and fronts;
``pruned`` trials (their metrics are last intermediate values) and ``failed`` ones are listed
with reasons and counted in the compute hours. Accuracies are maximised.

The modules, in the order a report is made:

- ``loading.py``: the sweep directory -> a :class:`Sweep` (rows, factors and their levels,
  configurations); ``trials.csv``'s frame.
- ``stats.py``: the statistics (pure functions: intervals, deltas, importance, fronts).
- ``queries.py``: what the sections ask of a sweep (baseline set, best configuration,
  teacher value, floors).
- ``decisions.py``: the decisions section at the report's head (racing replayed from rows).
- ``sections.py``: sections 1-8 and the appendix, as tables of formatted strings and plots.
- ``render.py``: Markdown, self-contained HTML and the PNG plots.
- ``build.py``: :func:`build_report` (sections in order, files written) and :func:`report_main`.
- ``wandb_run.py``: the optional W&B view of the report (:func:`log_to_wandb`).
"""

from vldistill.platform.report.build import build_report, report_main
from vldistill.platform.report.loading import Factor, ReportError, Sweep, load_sweep
from vldistill.platform.report.wandb_run import log_to_wandb

__all__ = ["Factor", "ReportError", "Sweep", "build_report", "load_sweep", "log_to_wandb",
           "report_main"]
