"""The ``vldistill`` command: parse, validate, call one function per verb.

Verbs:
    ``vldistill train [hydra overrides]``  one trial on this machine (no Ray), writes
    ``config.yaml``, ``metrics.json``, ``history.jsonl`` and ``checkpoints/last.pt`` into
    ``out_dir`` and prints the student-vs-teacher table.

Config errors exit with code 2 and one message naming the key or file, before anything is
written. Hydra is used only to *compose* the config (``initialize_config_module`` +
``compose``); it never changes the working directory.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

log = logging.getLogger("vldistill")


class UsageError(Exception):
    """Bad command-line input; printed without a traceback, exit code 2."""


def compose_config(overrides: Sequence[str]) -> dict:
    """Compose ``vldistill/conf`` with Hydra overrides into a plain, resolved dict."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module="vldistill.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise UsageError(f"config: {e}".strip()) from None


def load_train_config(overrides: Sequence[str]):
    """Compose + validate; the returned config has absolute paths."""
    from vldistill.trainers.config import ConfigError, from_dict

    raw = compose_config(overrides)
    for key in ("out_dir", "cache_dir"):
        if raw.get(key):
            raw[key] = str(Path(raw[key]).expanduser().resolve())
    if raw.get("data", {}).get("root"):
        raw["data"]["root"] = str(Path(raw["data"]["root"]).expanduser().resolve())
    try:
        cfg = from_dict(raw)
        from vldistill.trainers.loop import check_registries
        check_registries(cfg)
        return cfg
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _table(metrics: dict) -> str:
    rows = [("base", "base_acc"), ("novel", "novel_acc"),
            ("  novel compositional", "novel_acc/compositional"),
            ("  novel semantic", "novel_acc/semantic"), ("hmean", "hmean")]
    rows += [(f"shift {k.split('/', 1)[1]}", k) for k in sorted(metrics)
             if k.startswith("shift_acc/")]
    rows += [("shift (mean)", "shift_acc")]
    lines = [f"{'metric':<24}{'student':>9}{'teacher':>9}{'n':>7}"]
    for label, key in rows:
        if key not in metrics:
            continue
        n_key = {"base_acc": "n/base", "novel_acc": "n/novel"}.get(key, "n/" + key.replace("_acc", ""))
        n = metrics.get(n_key)
        lines.append(f"{label:<24}{metrics[key]:>9.3f}{metrics.get('teacher/' + key, float('nan')):>9.3f}"
                     f"{int(n) if n else '':>7}")
    floors = ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())
                       if k.startswith(("floor/", "chance/")))
    lines.append(f"floors: {floors}")
    lines.append(f"student: {metrics.get('student_params', 0) / 1e6:.2f} M params, "
                 f"{metrics.get('student_latency_ms', float('nan')):.2f} ms/image (CPU, batch 1)")
    return "\n".join(lines)


class _FileReporter:
    """Appends each epoch row to ``history.jsonl`` and logs a line."""

    def __init__(self, path: Path):
        from vldistill.trainers.loop import LogReporter
        self.path, self.inner = path, LogReporter()

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.inner.report(metrics, checkpoint_dir)
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")


def cmd_train(overrides: Sequence[str]) -> dict:
    """``vldistill train``: one trial, results in ``out_dir``."""
    import yaml

    from vldistill.trainers.config import to_dict
    from vldistill.trainers.loop import train

    cfg = load_train_config(overrides)
    out = Path(cfg.out_dir or Path("runs") / "train" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out = out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    t0 = time.time()
    metrics = train(cfg, _FileReporter(out / "history.jsonl"), out / "checkpoints")
    metrics["wall_seconds"] = time.time() - t0
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    tmp.replace(out / "metrics.json")
    print(_table(metrics))
    print(f"results: {out} ({metrics['wall_seconds']:.0f} s)")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vldistill", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p_train = sub.add_parser("train", help="run one distillation trial (no Ray)")
    p_train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. distill=cls_mse seed=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("vldistill").setLevel(logging.INFO)
    from vldistill.trainers.config import ConfigError
    from vldistill.trainers.data.folder import DataError
    try:
        if args.verb == "train":
            cmd_train(args.overrides)
    except (UsageError, ConfigError, DataError) as e:
        print(f"vldistill: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
