"""Assembling and writing the report: the sections in order, ``trials.csv``, ``levels.csv``,
``report.md`` and ``report.html`` (:func:`build_report`), and the CLI's entry
(:func:`report_main`, ``vldistill report``), which also reads and writes sweeps on object
storage.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from vldistill.platform.report import render as rh
from vldistill.platform.report.decisions import section_comparisons
from vldistill.platform.report.loading import ReportError, Sweep, load_sweep, trials_csv_frame
from vldistill.platform.report.render import Section
from vldistill.platform.report.sections import (section_configs, section_factors, section_headline,
                                                section_importance, section_interactions,
                                                section_loco, section_pareto,
                                                section_representation, section_trials)
from vldistill.platform.report.wandb_run import log_to_wandb

log = logging.getLogger(__name__)

PLOT_NAMES = ("effects", "importance", "pareto", "interaction_top", "representation")


def build_sections(sw: Sweep, plots: Path, levels_rows: list[dict]) -> list[Section]:
    """The decisions, then sections 1-8, then the appendix (``levels_rows`` collects levels.csv)."""
    return [section_comparisons(sw, plots), section_headline(sw),
            section_factors(sw, plots, levels_rows), section_loco(sw), section_importance(sw, plots),
            section_pareto(sw, plots), section_interactions(sw, plots),
            section_trials(sw, sw.primary[0]), section_representation(sw, plots),
            section_configs(sw)]


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *,
                 wandb_run: bool = False) -> dict[str, Path]:
    """Write the ablation report of ``sweep_dir`` into ``out_dir`` (default: the sweep dir).

    Args:
        sweep_dir: Directory with ``search_space.yaml``, ``trials.jsonl`` and optionally
            ``optuna.journal``.
        out_dir: Where to write; created if missing.
        wandb_run: Also log the tables and plots to one W&B run ``<name>-report`` (offline
            unless ``WANDB_MODE`` says otherwise).

    Returns:
        Written files by name relative to ``out_dir``: ``report.md``, ``report.html``,
        ``trials.csv``, ``levels.csv`` and ``plots/<name>.png``.

    Raises:
        ReportError: When ``sweep_dir`` is not a sweep directory.
    """
    sw = load_sweep(sweep_dir)
    out = Path(out_dir).expanduser().resolve() if out_dir else sw.dir
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png"):  # our plots from an earlier report (factors may differ)
        if old.stem in PLOT_NAMES or old.stem.startswith("factor_"):
            old.unlink()
    levels_rows: list[dict] = []
    sections = build_sections(sw, plots, levels_rows)
    meta = {"name": sw.name, "sweep_dir": str(sw.dir),
            "objective": ", ".join(f"{m} ({mode})" for m, mode in sw.objectives),
            "factors": ", ".join(f.key for f in sw.factors), "notes": sw.notes}
    files = {"trials.csv": out / "trials.csv", "levels.csv": out / "levels.csv",
             "report.md": out / "report.md", "report.html": out / "report.html"}
    trials_csv_frame(sw).to_csv(files["trials.csv"], index=False)
    pd.DataFrame(levels_rows).to_csv(files["levels.csv"], index=False)
    files["report.md"].write_text(rh.render_markdown(sections, meta, out), encoding="utf-8")
    files["report.html"].write_text(rh.render_html(sections, meta), encoding="utf-8")
    files.update({f"plots/{p.name}": p for p in sorted(plots.glob("*.png"))})
    if wandb_run:
        log_to_wandb(sw, sections, out)
    log.info("report of %s written to %s", sw.name, out)
    return files


def report_main(sweep_dir: str, out_dir: str | None, wandb: bool) -> int:
    """CLI entry (``vldistill report SWEEP_DIR``): 0 on success, 2 on a bad sweep directory."""
    from vldistill.trainers.storage import Remote, is_uri, local_copy_dir, pull_sweep, push_files

    remote = None
    try:
        if is_uri(sweep_dir):  # a sweep on object storage: report from a local copy, upload back
            try:
                remote, local = Remote(sweep_dir), local_copy_dir(sweep_dir, "report")
                pull_sweep(remote, local, skip=("tune", "train", "wandb", ".lock"))
            except (ValueError, OSError) as e:
                raise ReportError(f"{sweep_dir}: cannot read the sweep from storage: {e}") from None
            sweep_dir = str(local)
        files = build_report(sweep_dir, None if is_uri(out_dir or "") else out_dir, wandb_run=wandb)
        target = Remote(out_dir) if out_dir and is_uri(out_dir) else (remote if out_dir is None else None)
        if target is not None:
            push_files(target, Path(files["report.md"]).parent,
                       ["report.md", "report.html", "trials.csv", "levels.csv", "plots"])
            print(f"report uploaded to {target.uri}")
    except ReportError as e:
        print(f"vldistill report: {e}", file=sys.stderr)
        return 2
    print(f"report: {files['report.md']}\n        {files['report.html']}\n        {files['trials.csv']}")
    return 0
