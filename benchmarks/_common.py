"""Shared helpers of the platform benchmarks (``cache_vs_online``, ``sweep_overhead``,
``asha_vs_none``), and a small runner they start in fresh subprocesses.

Every benchmark runs its two sides in the same invocation, one after the other (and,
with ``--repeats 2``, in A-B-B-A order), each side in a *fresh* Python process so that
imports, Ray start-up and teacher loading are paid the same way by both. The machine is
shared (2 CPU cores, other jobs): each side records the 1-minute load average sampled
every few seconds while it ran, so a reader can see whether one side ran on a busier
machine.

Runner (used by the benchmarks, also handy by hand)::

    python benchmarks/_common.py sweep SPACE.yaml OUT_DIR TIMING.json [overrides...]
        vldistill's sweep (``run_sweep(..., wandb=False)``) with the shared-asset step
        (``prepare_shared``: world, teacher, teacher metrics, teacher cache) timed apart;
    python benchmarks/_common.py loop CONFIGS.json TIMING.json
        ``trainers.loop.train`` on each flattened trial config, one after another;
    python benchmarks/_common.py prepare [overrides...]
        the shared assets of a base config (``trainers.assets``, no Ray), before any side is timed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# ----- machine and load ------------------------------------------------------------------


class LoadSampler:
    """Samples ``os.getloadavg()[0]`` every ``period`` seconds in a daemon thread."""

    def __init__(self, period: float = 5.0):
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.period)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples or [float("nan")]
        return {"load1_mean": round(statistics.mean(s), 2), "load1_max": round(max(s), 2)}


def machine_info() -> dict[str, Any]:
    import torch

    def git(*args: str) -> str:  # read-only
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"date": _dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_files": len([ln for ln in git("status", "--porcelain").splitlines() if ln.strip()]),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "load1_at_start": os.getloadavg()[0]}


def side_order(repeats: int) -> list[int]:
    """Indices of the two sides, alternated: 1 repeat -> A B; 2 -> A B B A; 3 -> A B B A A B."""
    order: list[int] = []
    for i in range(repeats):
        order += [0, 1] if i % 2 == 0 else [1, 0]
    return order


# ----- running the sides -----------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    env["RAY_DEDUP_LOGS"] = "1"
    # Work-around for a platform bug (reported): with eval.every > 1 the epochs without an
    # evaluation report no metric, and Tune's SearchGenerator then fails the sweep.
    env.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_child(args: Sequence[str], log_path: Path, timing_path: Path) -> dict[str, Any]:
    """Run ``_common.py`` with ``args`` in a fresh process; wall time measured out here."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with LoadSampler() as load, open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd="/tmp",
                              env=_env(), stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    out = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    return {"wall_seconds": wall, **load.summary(), **out, "log": str(log_path)}


def prepare_assets(work: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Write the shared assets (world, teacher, its metrics, teacher cache) of ``overrides``
    into their ``cache_dir`` in a fresh process, before timing: no side pays for them, and a
    fresh machine measures what a warm one does (pass a private ``cache_dir=`` in ``overrides``)."""
    return run_child(["prepare", *overrides], work / "prepare.log", work / "prepare.none")


def run_sweep_side(space_yaml: Path, out_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """One sweep in a fresh process; returns wall time, prepare time, rows and sweep.json."""
    timing = out_dir.with_name(out_dir.name + ".timing.json")
    res = run_child(["sweep", str(space_yaml), str(out_dir), str(timing), *overrides],
                    out_dir.with_name(out_dir.name + ".log"), timing)
    res["rows"] = read_rows(out_dir)
    res.update(sweep_log_marks(Path(res["log"])))
    epochs = epoch_results(out_dir)
    res["train_loop_seconds"] = sum(e.get("train_seconds", 0.0) for t in epochs for e in t)
    res["epochs_trained"] = sum(len(t) for t in epochs)
    res["summary"] = json.loads((out_dir / "sweep.json").read_text())
    return res


_MARKS = {"ray_start": "starting a local Ray instance", "ray_ready": "Started a local Ray instance",
          "first_trial_done": "] trial ", "rows_done": "results in ", "report_done": "INFO vldistill.platform.sweep: report"}


def sweep_log_marks(log_path: Path) -> dict[str, float]:
    """Seconds spent in the phases of a sweep, from its log's timestamps: Ray start-up,
    Ray ready -> first trial finished, rows written -> report written."""
    import re

    stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")
    seen: dict[str, float] = {}
    for line in Path(log_path).read_text(errors="replace").splitlines():
        m = stamp.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1e3
        for k, needle in _MARKS.items():
            if k not in seen and needle in line:
                seen[k] = t
    out = {}
    for name, (a, b) in {"ray_start_seconds": ("ray_start", "ray_ready"),
                         "to_first_trial_seconds": ("ray_ready", "first_trial_done"),
                         "tune_seconds": ("ray_ready", "rows_done"),
                         "report_seconds": ("rows_done", "report_done")}.items():
        if a in seen and b in seen:
            out[name] = round(seen[b] - seen[a], 3)
    return out


def read_rows(sweep_dir: Path) -> list[dict]:
    """``trials.jsonl`` rows, last line per trial winning, in file order of first appearance."""
    rows: dict[str, dict] = {}
    path = Path(sweep_dir) / "trials.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            r = json.loads(line)
            rows[r["trial_id"]] = r
    return list(rows.values())


def epoch_results(sweep_dir: Path) -> list[list[dict]]:
    """Per trial, Tune's per-epoch results (``tune/<trial>/result.json``)."""
    out = []
    for f in sorted((Path(sweep_dir) / "tune").glob("*/result.json")):
        out.append([json.loads(line) for line in f.read_text().splitlines() if line.strip()])
    return out


def write_space(path: Path, space: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))
    return path


def fmt_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (reads fine in a terminal too)."""
    cells = [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


# ----- the child side (runs in its own process) ----------------------------------------------


def _child_sweep(space_yaml: str, out_dir: str, timing_path: str, overrides: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vldistill").setLevel(logging.INFO)
    t_import = time.perf_counter()
    from vldistill.platform import sweep

    timing: dict[str, float] = {"import_seconds": time.perf_counter() - t_import}
    inner = sweep.prepare_shared

    def timed_prepare(cfg, *args):  # the shared step (world, teacher, metrics, teacher cache)
        t = time.perf_counter()
        out = inner(cfg, *args)
        timing["prepare_seconds"] = time.perf_counter() - t
        return out

    sweep.prepare_shared = timed_prepare
    t = time.perf_counter()
    sweep.run_sweep(space_yaml, overrides, out_dir, wandb=False)
    timing["run_sweep_seconds"] = time.perf_counter() - t
    Path(timing_path).write_text(json.dumps(timing))


def _child_loop(configs_path: str, timing_path: str) -> None:
    """``trainers.loop.train`` on each flattened config, one after another (no Ray)."""
    import logging
    import shutil
    import tempfile

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vldistill").setLevel(logging.INFO)
    t_import = time.perf_counter()
    from vldistill.search_spaces.loader import unflatten
    from vldistill.trainers.config import from_dict
    from vldistill.trainers.loop import LogReporter, train

    timing: dict[str, Any] = {"import_seconds": time.perf_counter() - t_import, "trials": []}
    for flat in json.loads(Path(configs_path).read_text()):
        cfg = from_dict(unflatten(dict(flat)))
        work = Path(tempfile.mkdtemp(prefix="vldistill-loop-"))
        t = time.perf_counter()
        reporter = LogReporter()
        try:
            m = train(cfg, reporter, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        timing["trials"].append({"seconds": time.perf_counter() - t, "epochs": int(m.get("epoch", 0)),
                                 "train_loop_seconds": sum(h.get("train_seconds", 0.0) for h in reporter.history),
                                 "novel_acc": m.get("novel_acc"), "seed": cfg.seed,
                                 "wall_seconds_in_train": m.get("wall_seconds")})
    Path(timing_path).write_text(json.dumps(timing))


def _child_prepare(overrides: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vldistill").setLevel(logging.INFO)
    from vldistill.platform.cli import load_train_config
    from vldistill.trainers.assets import needs_view_cache, prepare, view_cache

    cfg = load_train_config(overrides)  # every shared asset, built here (no Ray), as `vldistill train` does
    splits, teacher, _, _ = prepare(cfg, build=True)
    if needs_view_cache(cfg):
        view_cache(teacher, splits, cfg, build=True)


if __name__ == "__main__":
    verb, rest = sys.argv[1], sys.argv[2:]
    if verb == "prepare":
        _child_prepare(rest)
    elif verb == "sweep":
        _child_sweep(rest[0], rest[1], rest[2], rest[3:])
    elif verb == "loop":
        _child_loop(rest[0], rest[1])
    else:
        sys.exit(f"unknown verb {verb!r}: prepare | sweep | loop")
