"""The ``vldistill`` command: parse, validate, call one function per verb.

Verbs (their user-facing help is ``VERBS`` below, shown by ``vldistill --help``):
    ``vldistill train [hydra overrides]``  one trial on this machine (no Ray), writes
    ``config.yaml``, ``metrics.json``, ``history.jsonl`` and ``checkpoints/last.pt`` into
    ``out_dir`` and prints the student-vs-teacher table.
    ``vldistill sweep [search_space=NAME] [out_dir=DIR] [overrides] [--resume DIR] [--plan]``
    a Ray Tune + Optuna sweep (see ``platform/sweep.py``); ``--plan`` prints what it would
    run and stops (``platform/plan.py``).
    ``vldistill report SWEEP_DIR``  the aggregated ablation report of a sweep.
    ``vldistill spaces``  the shipped search spaces with their questions and costs.

Config errors exit with code 2 and one message naming the key or file, before anything is
written. Composing and checking the config is ``trainers/config/`` (``load_train_config``,
re-exported here for the scripts that import it from the CLI).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from vldistill.trainers.config import compose_config, load_train_config  # noqa: F401  (re-exported)

log = logging.getLogger("vldistill")


class UsageError(Exception):
    """Bad command-line input; printed without a traceback, exit code 2."""


def _floor(metrics: dict, task: str) -> float:
    """Best attribute-only floor of a task (``base``, ``novel``, ``novel/<kind>``), or chance."""
    vals = [v for k, v in metrics.items() if k.startswith("floor/") and k.split("/", 2)[2] == task]
    return max(vals) if vals else metrics.get(f"chance/{task.split('/')[0]}", float("nan"))


def format_table(metrics: dict) -> str:
    """Student beside teacher for every accuracy, with the floor and the number of images."""
    rows = [("base", "base_acc", "base", "n/base"), ("novel", "novel_acc", "novel", "n/novel")]
    rows += [(f"  novel {k.split('/', 1)[1]}", k, "novel/" + k.split("/", 1)[1], "n/novel/" + k.split("/", 1)[1])
             for k in sorted(metrics) if k.startswith("novel_acc/")]
    rows += [("hmean", "hmean", None, None)]
    rows += [(f"shift {k.split('/', 1)[1]}", k, "base", "n/shift/" + k.split("/", 1)[1])
             for k in sorted(metrics) if k.startswith("shift_acc/")]
    rows += [("shift (mean)", "shift_acc", "base", None)]
    lines = [f"{'metric':<24}{'student':>9}{'teacher':>9}{'floor':>8}{'n':>7}"]
    for label, key, task, n_key in rows:
        if key not in metrics:
            continue
        floor = f"{_floor(metrics, task):.3f}" if task else ""
        n = int(metrics[n_key]) if n_key and n_key in metrics else ""
        lines.append(f"{label:<24}{metrics[key]:>9.3f}"
                     f"{metrics.get('teacher/' + key, float('nan')):>9.3f}{floor:>8}{n:>7}")
    lines.append("floor = best attribute-only classifier (knows one attribute, guesses the rest); "
                 f"chance base {metrics.get('chance/base', 0):.3f}, novel {metrics.get('chance/novel', 0):.3f}")
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
    from vldistill.trainers.loop import prepare, train, with_local_cache

    cfg = load_train_config(overrides)
    prepare(with_local_cache(cfg))  # data and teacher load (or fail, naming the file) before out_dir is touched
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
    print(format_table(metrics))
    print(f"results: {out} ({metrics['wall_seconds']:.0f} s)")
    return metrics


def cmd_sweep(tokens: Sequence[str], resume: str | None, address: str | None, wandb: bool,
              plan: bool = False) -> Path | None:
    """``vldistill sweep [search_space=NAME|path.yaml] [out_dir=DIR] [overrides]``."""
    space, out, overrides = None, None, []
    for tok in tokens:
        if tok.startswith("search_space="):
            space = tok.split("=", 1)[1]
        elif tok.startswith("out_dir="):
            out = tok.split("=", 1)[1]
        else:
            overrides.append(tok)
    if resume and (space or overrides):
        raise UsageError("--resume continues a sweep as it was defined: no search_space= or overrides")
    if plan:
        if resume:
            raise UsageError("--plan shows what a new sweep would run; it does not take --resume")
        from vldistill.platform.plan import plan_text
        print(plan_text(space, overrides, address))
        return None
    from vldistill.platform.sweep import run_sweep

    return run_sweep(space, overrides, out, resume=resume, address=address, wandb=wandb)


# Trials that fail with one of these failed on their configuration or data (the pre-launch
# check could not see it, e.g. student.kwargs that only timm refuses): the sweep failed.
CONFIG_ERRORS = ("ConfigError", "DataError", "DuplicateKeyError", "SearchSpaceError", "UsageError")


def _reason(error: str | None) -> str:
    """The exception type of a failed row's error line (``RayTaskError(ConfigError): ...``)."""
    names = re.findall(r"([A-Za-z_]\w*(?:Error|Exception))", error or "")
    config = [n for n in names if n in CONFIG_ERRORS]
    other = [n for n in names if not n.startswith(("Ray", "Tune"))]
    return (config or other or names or ["unknown error"])[0]


def sweep_outcome(rows: list[dict]) -> tuple[int, str]:
    """The sweep's exit code and its last line, from its trial rows.

    1 when a trial failed with a configuration error or when every trial failed; 0 when
    none failed, or when the failures are results (a non-finite loss) beside finished trials.
    """
    failed = [r for r in rows if r["status"] == "failed"]
    if not failed:
        return 0, f"sweep finished: {len(rows)} trial(s), none failed"
    counts: dict[str, int] = {}
    for r in failed:
        counts[_reason(r["error"])] = counts.get(_reason(r["error"]), 0) + 1
    why = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    head = f"{len(failed)} of {len(rows)} trial(s) failed ({why})"
    config = [r for r in failed if _reason(r["error"]) in CONFIG_ERRORS]
    if config:
        return 1, f"sweep failed: {head}; a configuration error, e.g. trial {config[0]['trial_id']}: {config[0]['error']}"
    if len(failed) == len(rows):
        return 1, f"sweep failed: {head}: every trial failed, e.g. trial {failed[0]['trial_id']}: {failed[0]['error']}"
    if set(counts) == {"NonFiniteLossError"}:
        return 0, f"sweep finished: {head}: a non-finite loss is a result, not an error (listed in the report)"
    return 0, f"sweep finished: {head}; the report and trials.jsonl say why"


def cmd_report(sweep_dir: str, out_dir: str | None, wandb: bool) -> int:
    from vldistill.platform.report import report_main

    return report_main(sweep_dir, out_dir, wandb)


def cmd_spaces() -> None:
    from vldistill.platform.plan import spaces_text

    print(spaces_text())


DESCRIPTION = """\
Distill a CLIP teacher into a small timm student and find out, with Ray Tune + Optuna
sweeps, which distillation choices make it generalise to novel classes and new domains.
Everything runs offline on the embedded world; `vldistill VERB --help` explains each verb."""

EXAMPLES = """\
example:
  vldistill sweep search_space=p1_losses --plan   # what a sweep would run, before it runs"""

VERBS = {
    "train": ("one distillation trial on this machine (no Ray)",
              "Train one student against its teacher and print its accuracies beside the\n"
              "teacher's (base, novel classes, shifted domains). out_dir gets config.yaml,\n"
              "history.jsonl, metrics.json and checkpoints/last.pt. Any Hydra override works.",
              "vldistill train distill=cls_im_cst_vlprox seed=1 optim.epochs=10"),
    "sweep": ("a Ray Tune + Optuna sweep over a search space, then its report",
              "Run every trial of a search space (shipped: `vldistill spaces`; or your .yaml) and\n"
              "write the sweep directory: report.md/.html, trials.jsonl/.csv, optuna.journal\n"
              "(optuna-dashboard), offline W&B runs (one group per sweep, plus a summary run).\n"
              "--plan prints what it would run (configurations, trials, resources, missing\n"
              "cached assets) and stops: no Ray, nothing written. Flags may go anywhere.",
              "vldistill sweep search_space=p1_losses out_dir=runs/p1 optim.epochs=8"),
    "report": ("rewrite the ablation report of a sweep directory",
               "Read a sweep directory (or a storage URI) and write report.md, report.html,\n"
               "trials.csv, levels.csv and plots/: per factor and metric, means with 95%\n"
               "intervals over seeds, effects against the baseline, importance, Pareto front.",
               "vldistill report runs/p1 --wandb"),
    "spaces": ("list the shipped search spaces, each with its question and cost",
               "Print every search space shipped with vldistill: its name, the question it\n"
               "answers and what it costs, as its file states them.",
               "vldistill spaces"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one parser per verb (each parses intermixed arguments)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="vldistill", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=fmt)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    subs = {verb: sub.add_parser(verb, help=short, description=long, epilog=f"example:\n  {example}",
                                 formatter_class=fmt)
            for verb, (short, long, example) in VERBS.items()}
    subs["train"].add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                               help="Hydra overrides, e.g. distill=cls_mse seed=1")
    p_sweep = subs["sweep"]
    p_sweep.add_argument("tokens", nargs="*", metavar="KEY=VALUE",
                         help="search_space=NAME|file.yaml, out_dir=DIR, then Hydra overrides for every trial")
    p_sweep.add_argument("--plan", action="store_true",
                         help="print what the sweep would run and exit (no Ray, nothing written)")
    p_sweep.add_argument("--resume", metavar="DIR", help="continue the interrupted sweep in DIR")
    p_sweep.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p_sweep.add_argument("--no-wandb", action="store_true", help="do not log trials to W&B")
    p_report = subs["report"]
    p_report.add_argument("sweep_dir")
    p_report.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    p_report.add_argument("--wandb", action="store_true", help="also log the report to a W&B run")
    return parser, subs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``vldistill VERB ...``; flags may sit anywhere among the ``key=value`` tokens
    (``parse_intermixed_args`` per verb: argparse refuses it on a parser with subcommands)."""
    parser, subs = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, tok in enumerate(argv) if not tok.startswith("-")), None)
    if at is None or argv[at] not in subs or at > 0:
        return parser.parse_args(argv)  # --help, no verb, an unknown verb: argparse's answer
    args = subs[argv[at]].parse_intermixed_args(argv[at + 1:])
    args.verb = argv[at]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("vldistill").setLevel(logging.INFO)
    from vldistill.trainers.config import ConfigError
    from vldistill.trainers.data.folder import DataError
    from vldistill.trainers.strict_files import DuplicateKeyError
    errors: tuple[type[Exception], ...] = (UsageError, ConfigError, DataError, DuplicateKeyError)
    try:
        if args.verb == "train":
            cmd_train(args.overrides)
        elif args.verb == "sweep":
            from vldistill.platform.sweep import SweepError
            errors += (SweepError,)
            sweep_dir = cmd_sweep(args.tokens, args.resume, args.address, not args.no_wandb, args.plan)
            if sweep_dir is None:  # --plan: nothing ran
                return 0
            from vldistill.platform.sweep import read_rows
            code, line = sweep_outcome(read_rows(sweep_dir))
            print(f"vldistill: {line}", file=sys.stderr)
            return code
        elif args.verb == "report":
            return cmd_report(args.sweep_dir, args.out, args.wandb)
        elif args.verb == "spaces":
            cmd_spaces()
    except errors as e:
        print(f"vldistill: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
