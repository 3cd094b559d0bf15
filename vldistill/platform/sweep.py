"""``vldistill sweep``: a Ray Tune + Optuna sweep over a search space.

Flow (docs/architecture.md, "The flow of one sweep"):

1. load and validate the search space against the composed base config (before Ray);
2. join Ray (or start a local instance) and build what every trial shares, once, as Ray
   work on the teacher's resources (``platform/assets.py``): the dataset, the teacher, its
   text targets and metrics, the view cache... -- the driver never runs the teacher;
3. take the sweep directory's lock, write ``search_space.yaml`` and ``base_config.yaml``;
4. run Ray Tune: a function trainable per trial (one worker: the training loop runs in
   the trial itself, the cheap path on CPU), ``SeededOptunaSearch`` (TPE / random / grid,
   seeds as repeats, honest PRUNED states, study in ``optuna.journal``), ASHA if asked;
5. write one JSON row per finished trial (``trials.jsonl``), then ``trials.csv`` and the
   report.

The trial's config is the *flattened* full config (dotted keys): the sampled keys and the
seed override the base config's constants, so W&B and the rows get every key.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import yaml

from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
ROWS = "trials.jsonl"
# RowWriter's line per finished trial: [done/total] (total "<=16" for a race) trial id status
# (seed; params) metrics. tests/driver_hook.py keys on it.
ROW_LOG = "[%d/%s] trial %s %s (seed %s; %s) %s"
RESERVED = ("epoch", "epochs")


class SweepError(Exception):
    """A sweep cannot start (bad space, busy directory...); exit code 2."""


# ----- the trial ---------------------------------------------------------------------------


WORKERS_KEY = "__workers__"  # trial config entry: Ray Train workers per trial
RESOURCES_KEY = "__worker_resources__"  # {"CPU": c, "GPU": g} per worker
STORAGE_KEY = "__storage__"  # where the inner TorchTrainer keeps its run (the sweep dir)
PLACEMENT_KEY = "__placement__"  # Ray placement strategy of a multi-worker trial's workers
BASE_KEY = "__base__"  # trial config entry: the base config's hash (it is in every trial's config)
NODES_KEY = "nodes"  # reported by every trial: the Ray node ids its training ran on
ERROR_KEY = "trial_error"  # last result of a trial that ended itself on a deterministic error


def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def train_fn_per_worker(loop_config: dict) -> None:
    """Ray Train worker: rebuild the typed config from the plain dict, run the loop.

    Every worker calls ``ray.train.report`` each epoch (collective); rank 0 attaches the
    checkpoint. ``trainers.loop.train`` handles DDP (sharding, SyncBN, gathered eval).
    """
    import ray.train

    from vldistill.platform.atomic_fs import checkpoint_source
    from vldistill.trainers.config import from_dict
    from vldistill.trainers.loop import train

    cfg = from_dict(loop_config["cfg"])
    nodes = _group_nodes()
    work = Path(tempfile.mkdtemp(prefix="vldistill-worker-"))
    try:
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            ckpt.to_directory(str(work))

        class _TrainReporter:
            def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
                checkpoint = checkpoint_source(checkpoint_dir) if checkpoint_dir else None
                ray.train.report({**_numeric(metrics), NODES_KEY: nodes}, checkpoint=checkpoint)

        train(cfg, _TrainReporter(), work, build=False)  # shared assets: built before trials
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _group_nodes() -> str:
    """The node ids of every rank of this worker group, in rank order, comma-separated
    (a collective: every rank calls it once, after Ray Train set up the process group)."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return _node_id()
    ids: list = [None] * tdist.get_world_size()
    tdist.all_gather_object(ids, _node_id())
    return ",".join(ids)


def _ddp_trial(cfg_dict: dict, workers: int, per_worker: dict, storage: str,
               placement: str = "pack") -> None:
    """Tune driver function for a multi-worker trial: a TorchTrainer with a stable name."""
    from ray import tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    use_gpu = per_worker.get("GPU", 0) > 0
    trainer = TorchTrainer(
        train_fn_per_worker, train_loop_config={"cfg": cfg_dict},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker,
                                     placement_strategy=placement.upper()),
        run_config=RunConfig(name=f"train-trial_id={trial_id}", storage_path=storage,
                             storage_filesystem=_storage_fs(storage),
                             callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=2)))
    trainer.fit()


WORK_PREFIX = "vldistill-trial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_work_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove trial work directories (``<root>/vldistill-trial-<pid>-*``) whose process is gone.

    A trial's work directory holds its ``last.pt`` (a student plus optimizer state: 135 MB
    for the main job's ResNet-18) and is removed when the trial ends. A trial process that is
    killed -- the sweep stopped with Ctrl-C or ``ray job stop``, a node's actor killed --
    never reaches that ``finally``: 22 such directories (2.7 GB) had piled up in this
    machine's /tmp over a week of sweeps. Each trial therefore clears, on its own node, the
    directories of dead processes before it makes its own: the leak is bounded by the
    trials that were running when a sweep was killed, until the next trial on that node.
    A pid that a new process reused keeps its directory until that process is gone too.
    """
    root = Path(root or tempfile.gettempdir())
    removed = []
    for d in root.glob(f"{WORK_PREFIX}*-*"):
        pid = d.name[len(WORK_PREFIX):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("removed %d trial work directories of dead processes under %s", len(removed), root)
    return removed


def sweep_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: one trial = ``trainers.loop.train``.

    One worker: the loop runs right here (the cheap path: no Train start-up). Several
    workers: this function is the trial's driver and runs a ``TorchTrainer``.
    """
    from ray import tune

    from vldistill.platform.atomic_fs import checkpoint_source
    from vldistill.search_spaces.loader import unflatten
    from vldistill.trainers.config import from_dict
    from vldistill.trainers.assets import MissingAssetError
    from vldistill.trainers.loop import NonFiniteLossError, train

    plain = {k: v for k, v in config.items() if not k.startswith("__")}
    workers = int(config.get(WORKERS_KEY, 1))
    if workers > 1:
        _ddp_trial(unflatten(plain), workers, dict(config[RESOURCES_KEY]), config[STORAGE_KEY],
                   config.get(PLACEMENT_KEY, "pack"))
        return
    if BASE_KEY not in config:
        # Tune restarted this trial without the sweep's constant config (a damaged
        # experiment state): never train the defaults in its place.
        from vldistill.trainers.config import ConfigError
        raise ConfigError(f"trial config without the sweep's base config (no {BASE_KEY}); "
                          f"Tune's experiment state was damaged: {sorted(plain)}")
    cfg = from_dict(unflatten(plain))
    # One "Checkpoint successfully created at: <path>" line per trial and epoch is noise. A
    # logger *name* only (no private API is called): if Ray renames it, the lines come back.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    remove_stale_work_dirs()
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
    try:
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            ckpt.to_directory(str(work))

        node = _node_id()

        class _TuneReporter:
            def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
                row = {**_numeric(metrics), NODES_KEY: node}
                if checkpoint_dir:
                    tune.report(row, checkpoint=checkpoint_source(checkpoint_dir))
                else:
                    tune.report(row)

        try:
            train(cfg, _TuneReporter(), work, build=False)  # shared assets: built before trials
        except (NonFiniteLossError, MissingAssetError) as e:
            # Deterministic: retrying from the checkpoint would fail again. End the trial with
            # its reason instead of an error (errors are retried: FailureConfig below).
            tune.report({"epoch": 0, "epochs": cfg.optim.epochs, ERROR_KEY: f"{type(e).__name__}: {e}"})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----- rows -------------------------------------------------------------------------------


def _callbacks_module():
    from ray import tune

    from vldistill.platform.searcher import was_stopped_early

    class RowWriter(tune.Callback):
        """Appends one JSON row per finished trial to ``trials.jsonl`` (last row wins)."""

        def __init__(self, sweep_dir: str, params: list[str], resources: dict, total: int | str,
                     remote_uri: str | None = None):
            self.sweep_dir, self.params, self.resources, self.total = sweep_dir, params, resources, total
            self.remote_uri = remote_uri  # the URI only: credentials stay in each node's environment
            self.done = 0

        def __setstate__(self, state):  # experiments pickled before remote storage existed
            self.__dict__.update({"remote_uri": None, **state})

        def _write(self, trial, status: str, error: str | None) -> None:
            row = trial_row(trial, status, error, self.params, self.resources)
            metrics = row["metrics"]
            with open(Path(self.sweep_dir) / ROWS, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.remote_uri:  # the rows and the study reach the storage URI trial by trial
                from vldistill.trainers.storage import Remote, push_files
                push_files(Remote(self.remote_uri), Path(self.sweep_dir), [ROWS, "optuna.journal"])
            self.done += 1
            shown = ", ".join(f"{k}={trial.config.get(k)}" for k in self.params)
            acc = " ".join(f"{k}={metrics[k]:.3f}" for k in ("base_acc", "novel_acc", "shift_acc")
                           if k in metrics)
            log.info(ROW_LOG, self.done, self.total, trial.trial_id,
                     status, trial.config.get("seed"), shown, error or acc)

        def _has_row(self, trial) -> bool:
            # A driver killed after writing a row but before Tune snapshotted the trial as
            # finished restores it as RUNNING on --resume: it ends again; keep the first row.
            return any(r["trial_id"] == trial.trial_id for r in read_rows(Path(self.sweep_dir)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self._has_row(trial):
                return
            reason = (trial.last_result or {}).get(ERROR_KEY)
            if reason:
                self._write(trial, "failed", str(reason))
            else:
                self._write(trial, "pruned" if was_stopped_early(trial.last_result) else "completed", None)

        def on_trial_error(self, iteration, trials, trial, **info):
            if not self._has_row(trial):
                self._write(trial, "failed", _error_text(trial))

    return RowWriter


_NOT_METRICS = ("training_iteration", "pid", "iterations_since_restore", "done", "checkpoint_dir_name",
                "should_checkpoint", "epoch", "epochs", "wall_seconds", "train_seconds")


def trial_row(trial, status: str, error: str | None, params: list[str], resources: dict) -> dict:
    """The ``trials.jsonl`` row of a finished Tune trial (its last result and config)."""
    result = dict(trial.last_result or {})
    metrics = {k: v for k, v in result.items()
               if isinstance(v, (int, float)) and not k.startswith(("time_", "timestamp", "config"))
               and k not in _NOT_METRICS}
    return {"trial_id": trial.trial_id, "status": status, "error": error,
            "params": {k: trial.config.get(k) for k in params},
            "seed": trial.config.get("seed"), "config": dict(trial.config),
            "design_point": trial.config.get("__design__"),
            "metrics": metrics, "epochs": int(result.get("epoch", 0)),
            "planned_epochs": int(result.get("epochs", trial.config.get("optim.epochs", 0))),
            "wall_seconds": float(result.get("time_total_s", 0.0)),
            "resources": resources,
            "nodes": [n for n in str(result.get(NODES_KEY) or "").split(",") if n]}


def _error_text(trial) -> str:
    """The exception line of a failed trial (type: message), not the whole traceback."""
    text = ""
    try:
        err = trial.get_error()
        text = str(err) if err is not None else ""
    except Exception:  # fall back to the local error file below
        pass
    if not text and trial.local_path and (Path(trial.local_path) / "error.txt").is_file():
        text = (Path(trial.local_path) / "error.txt").read_text(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[-500:]
    return (lines[-1] if lines else "unknown error")[-500:]


def read_rows(sweep_dir: Path) -> list[dict]:
    """The rows of ``trials.jsonl``, the last line per trial id winning."""
    path = Path(sweep_dir) / ROWS
    rows: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[r["trial_id"]] = r
    return list(rows.values())


def write_csv(sweep_dir: Path) -> Path:
    import pandas as pd

    rows = read_rows(sweep_dir)
    flat = [{"trial_id": r["trial_id"], "status": r["status"], "error": r["error"], "seed": r["seed"],
             **r["params"], **r["metrics"], "wall_seconds": r["wall_seconds"]} for r in rows]
    path = Path(sweep_dir) / "trials.csv"
    pd.DataFrame(flat).to_csv(path, index=False)
    return path


# ----- the driver -----------------------------------------------------------------------


class _Lock:
    """An exclusive ``flock`` on ``<sweep_dir>/.lock``: two sweeps never share a directory."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / ".lock"
        self.fh = None

    def __enter__(self) -> "_Lock":
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            owner = self.fh.read().strip() or "another process"
            self.fh.close()
            raise SweepError(f"{self.path.parent} is in use by a running sweep ({owner}); "
                             "use another out_dir, or wait for it to finish") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()

    @staticmethod
    def check_free(sweep_dir: Path) -> None:
        """Raise the "in use" error now if a running sweep holds ``sweep_dir``'s lock."""
        path = sweep_dir / ".lock"
        if not path.is_file():
            return
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "another process"
                raise SweepError(f"{sweep_dir} is in use by a running sweep ({owner}); "
                                 "use another out_dir, or wait for it to finish") from None
            fcntl.flock(fh, fcntl.LOCK_UN)


def _concurrency(resources, cluster: dict) -> int:
    """Trials that fit the cluster as it is now (CPUs, GPUs and memory; at least 1)."""
    per_trial = resources.cpu * resources.workers + (0.01 if resources.workers > 1 else 0.0)
    limits = [int(cluster.get("CPU", 1) // max(per_trial, 1e-9))]
    if resources.gpu > 0:
        limits.append(int(cluster.get("GPU", 0) // (resources.gpu * resources.workers)))
    if "memory" in cluster:
        limits.append(int(cluster["memory"] // (resources.memory * 2**30 * resources.workers)))
    return max(1, min(limits))


QUEUE_CAP = 200  # Ray Tune's own default queue of pending trials for autoscaling


def queue_depth(space, cluster: dict) -> tuple[int, str]:
    """Tune's ``max_concurrent_trials`` (trials started or queued at once) and why.

    Not "what fits now": an autoscaling cluster with no worker yet fits nothing, and a
    fixed count taken at start would run one trial at a time forever. Queued trials are
    the demand the autoscaler scales up to; Ray only starts what fits.
    """
    total = space.trial_count()
    if space.resources.max_concurrent is not None:
        return space.resources.max_concurrent, "resources.max_concurrent"
    if space.sampler == "tpe" and space.design is None:
        fit = _concurrency(space.resources, cluster)
        return min(total, max(fit, 10)), (f"tpe: max({fit} that fit now, 10 drawn at random by TPE anyway); "
                                          "set resources.max_concurrent to queue more")
    return min(total, QUEUE_CAP), f"every trial queued (at most {QUEUE_CAP}); Ray runs what fits"


_QUIET_WARNINGS = "ignore::DeprecationWarning"


def _init_ray(address: str | None, driver_cpu: float = 0.0) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS``, else start a local Ray sized to this machine;
    True when this call started a local instance (the sweep then shuts it down itself).

    Multi-worker trials hold a 0.01-CPU driver beside their workers (Ray rejects 0); the
    local instance gets one extra logical CPU for those drivers so that workers can take
    every real core.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONWARNINGS": _QUIET_WARNINGS}},
                 log_to_driver=True)
        return False
    cpus = (os.cpu_count() or 1) + (1 if driver_cpu else 0)
    log.info("starting a local Ray instance (%d CPUs)", cpus)
    # A local instance's workers inherit this process's environment. A runtime_env (even
    # env_vars only) would make Ray start new workers instead of the ones it prestarts:
    # the first trial's actor took 0.84 s instead of 0.29 s (docs/benchmarks.md (b)).
    os.environ.setdefault("PYTHONWARNINGS", _QUIET_WARNINGS)
    # Not Ray's preload_python_modules (workers importing torch + timm as they start): the
    # first trial then started 1.8 s later, not earlier (2 cores; docs/benchmarks.md (b)).
    # address="local": a new instance even when another Ray runs on this machine (Ray would
    # otherwise join it, and refuse num_cpus); join one with address= / $RAY_ADDRESS.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    return True


def _wandb_callback(sweep_dir: Path, name: str, enabled: bool) -> list:
    if not enabled:
        return []
    from vldistill.platform.wandb_logger import make_callback, sweep_group

    cb = make_callback(sweep_dir, sweep_group(sweep_dir, name))
    return [cb] if cb is not None else []


def prepare_shared(cfg, teacher_resources: dict | None = None) -> list[dict]:
    """Build, on the cluster, what every trial reads from the cache (Ray must be up): the
    dataset, the teacher, its text targets, metrics and evaluation embeddings, the view
    cache... as Ray work on the teacher's resources (``platform/assets.py``). Returns one
    record per asset (where, how long, how fast) for ``sweep.json``."""
    from vldistill.platform.assets import AssetError, TeacherResources, build_shared

    try:
        return build_shared(cfg, TeacherResources.from_dict(teacher_resources))
    except (AssetError, ValueError) as e:
        raise SweepError(str(e)) from None


def asset_configs(space, base) -> list:
    """The base config and one config per distinct set of shared assets the space's trials
    will read (``trainers.assets.asset_signature``), base first.

    Trials only read shared assets, so a param or design point that changes one (the class
    text source, P3's strategy, the dataset, the teacher...) must have its assets built
    before the trials: every design point; for params, the product of the choices of those
    that change a signature (``when`` is ignored: a combination that never runs costs a
    build, never a failed trial). A continuous param that changes one is refused (its values
    are not known before the trials).
    """
    import itertools

    from vldistill.search_spaces.loader import flatten, unflatten
    from vldistill.trainers.assets import asset_signature
    from vldistill.trainers.config import from_dict, to_dict

    flat = flatten(to_dict(base))
    sig0 = asset_signature(base)

    def with_(assign: dict):
        return from_dict(unflatten({**flat, **assign}))

    if space.design is not None:
        assigns = [dict(p.assignment) for p in space.design.points]
    else:
        changing = []
        for p in space.params.values():
            probe = p.values if p.categorical else (p.low, p.high)
            if any(asset_signature(with_({p.key: v})) != sig0 for v in probe):
                if not p.categorical:
                    raise SweepError(f"params.{p.key}: a {p.kind} param changes a shared asset "
                                     "(built before the trials); give it as choice or grid")
                changing.append(p)
        assigns = [dict(zip((p.key for p in changing), combo))
                   for combo in itertools.product(*(p.values for p in changing))]
    out, seen = [base], {sig0}
    for a in assigns:
        cfg = with_(a)
        sig = asset_signature(cfg)
        if sig not in seen:
            seen.add(sig)
            out.append(cfg)
    return out


def _split_teacher_resources(overrides: Sequence[str]) -> tuple[list[str], dict]:
    """``teacher_resources.<key>=<value>`` and ``resources.<key>=<value>`` tokens of the
    command line (``{"teacher_resources": {...}, "resources": {...}}``), apart from the
    Hydra overrides every trial gets."""
    rest, res = [], {}
    for tok in overrides:
        head = tok.split(".", 1)[0]
        if head in ("teacher_resources", "resources") and "." in tok and "=" in tok:
            key, value = tok.split("=", 1)
            res.setdefault(head, {})[key.split(".", 1)[1]] = yaml.safe_load(value)
        else:
            rest.append(tok)
    return rest, res


def _check_files_before_ray(cfg) -> None:
    """A teacher checkpoint that cannot load safely, and a folder dataset's ``classes.json``
    and class folders, checked here (cheap) so that they are named errors before Ray starts.
    Images are decoded later, by the shared-asset task (a corrupt one is a named error
    there, before any trial)."""
    from vldistill.trainers.assets import check_teacher_checkpoint
    check_teacher_checkpoint(cfg)
    if cfg.data.source == "folder":
        from vldistill.trainers.data.folder import read_dataset
        read_dataset(cfg.data.root, cfg.data.train_domain)


def _check_asha_eval(space, base) -> None:
    """ASHA's rungs (grace_period x reduction_factor^k) must be epochs with an evaluation."""
    sch = space.scheduler
    if sch.type == "asha" and (sch.grace_period % base.eval.every or float(sch.reduction_factor) % 1):
        raise SweepError(f"scheduler asha compares {space.metrics[0]} at epochs grace_period x "
                         f"reduction_factor^k = {sch.grace_period}, {sch.grace_period * sch.reduction_factor:g},"
                         f" ...; eval.every={base.eval.every} must divide grace_period and "
                         "reduction_factor must be a whole number (set eval.every in the overrides)")


def load_space(space_ref: str | None):
    """The search space a new sweep runs (``default`` when none is named)."""
    from vldistill.search_spaces.loader import SearchSpaceError, load_search_space

    try:
        return load_search_space(space_ref or "default")
    except SearchSpaceError as e:
        raise SweepError(str(e)) from None


def checked_base_config(space, overrides: Sequence[str] = ()):
    """The base config of a new sweep (the space's overrides, then the user's), with the
    space checked against it: the checks, and errors, of every new sweep and of ``--plan``."""
    from vldistill.trainers.config import load_train_config
    from vldistill.search_spaces.loader import SearchSpaceError, validate_search_space
    from vldistill.trainers.config import to_dict

    base = load_train_config([*space.overrides, *overrides])
    try:
        validate_search_space(space, to_dict(base))
    except SearchSpaceError as e:
        raise SweepError(str(e)) from None
    _check_asha_eval(space, base)
    return base


def with_teacher_resources(space, overrides: dict):
    """``space`` with the command line's ``teacher_resources.<key>=...`` and
    ``resources.<key>=...`` winning over its own (checked like the space's own)."""
    if not overrides:
        return space
    from dataclasses import replace as _replace

    from vldistill.search_spaces.loader import SearchSpaceError, _Err, _parse_resources, parse_teacher_resources
    err = _Err(space.source or space.name)
    try:
        teacher = {**space.teacher_resources, **overrides.get("teacher_resources", {})}
        parse_teacher_resources(err, teacher)
        trial = _parse_resources(err, {**space.resources.to_dict(), **overrides.get("resources", {})})
    except SearchSpaceError as e:
        raise SweepError(str(e)) from None
    return _replace(space, teacher_resources=teacher, resources=trial)


def run_sweep(space_ref: str | None, overrides: Sequence[str] = (), out_dir: str | None = None,
              resume: str | None = None, address: str | None = None, wandb: bool = True) -> Path:
    """Run (or resume) a sweep and return its directory."""
    from vldistill.search_spaces.loader import flatten
    from vldistill.trainers.config import to_dict
    from vldistill.trainers.storage import push_files

    if resume:
        space, base, sweep_dir, remote = _open_resumed(resume)
    else:
        space, base, sweep_dir, remote = _open_new(space_ref, overrides, out_dir)
    _check_files_before_ray(base)
    configs = asset_configs(space, base)
    if len(configs) > 1:
        log.info("shared assets for %d configurations: the space's params/design points change "
                 "what its trials read (class text, dataset, teacher...)", len(configs))
    # Ray first, then the shared assets on the cluster: a teacher checkpoint that cannot load
    # (missing, pickled code) or a broken dataset fails there, before the sweep directory
    # gets a single file (the error is re-raised here, naming the file).
    started = _init_ray(address, driver_cpu=0.01 if space.resources.workers > 1 else 0.0)
    try:
        assets = [rec for cfg in configs for rec in prepare_shared(cfg, space.teacher_resources)]
    except BaseException:
        if started:
            import ray
            ray.shutdown()
        raise
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _Lock(sweep_dir):
        if not resume:
            (sweep_dir / "search_space.yaml").write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
            (sweep_dir / "base_config.yaml").write_text(yaml.safe_dump(to_dict(base), sort_keys=False))
        if remote is not None:  # the space and base config are there before any trial
            push_files(remote, sweep_dir, ["search_space.yaml", "base_config.yaml"])
        _run_tune(space, base, sweep_dir, bool(resume), address, wandb, flatten,
                  remote.uri if remote is not None else None)
        _finish(sweep_dir, space, assets, started, wandb, remote)
    return sweep_dir


def _open_resumed(resume: str):
    """``--resume DIR`` (or a URI): the space, base config, directory and remote, checked."""
    from vldistill.search_spaces.loader import load_search_space
    from vldistill.trainers.config import from_dict
    from vldistill.trainers.storage import is_uri
    from vldistill.trainers.strict_files import read_yaml

    remote = None
    if is_uri(resume):
        remote, sweep_dir = _open_remote(resume, "--resume")
        if not remote.exists("search_space.yaml"):
            raise SweepError(f"--resume {resume}: no search_space.yaml there; not a sweep directory")
        _Lock.check_free(sweep_dir)
        from vldistill.trainers.storage import pull_sweep
        shutil.rmtree(sweep_dir, ignore_errors=True)
        pull_sweep(remote, sweep_dir, skip=(TUNE_DIR, "train"))
    else:
        sweep_dir = Path(resume).expanduser().resolve()
    if not (sweep_dir / "search_space.yaml").is_file():
        raise SweepError(f"--resume {sweep_dir}: no search_space.yaml there; not a sweep directory")
    _Lock.check_free(sweep_dir)
    if remote is None:
        check_tune_state(sweep_dir / TUNE_DIR)
    space = load_search_space(str(sweep_dir / "search_space.yaml"))
    base = from_dict(read_yaml(sweep_dir / "base_config.yaml"))  # refuses repeated keys
    return space, base, sweep_dir, remote


def _open_new(space_ref: str | None, overrides: Sequence[str], out_dir: str | None):
    """A new sweep: the space (with the command line's resources), its checked base config,
    a directory that holds no sweep yet, and the remote when ``out_dir`` is a URI."""
    from vldistill.trainers.storage import is_uri

    remote = None
    overrides, resources = _split_teacher_resources(overrides)
    space = load_space(space_ref)
    if out_dir and is_uri(out_dir):
        remote, sweep_dir = _open_remote(out_dir, "out_dir")
        if remote.exists("search_space.yaml") or remote.exists(TUNE_DIR):
            raise SweepError(f"{out_dir} already holds a sweep; use --resume {out_dir} or another out_dir")
        _Lock.check_free(sweep_dir)
        shutil.rmtree(sweep_dir, ignore_errors=True)  # a stale copy of an abandoned start
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        sweep_dir = Path(out_dir or Path("runs") / "sweeps" / f"{space.name}-{stamp}").expanduser().resolve()
    base = checked_base_config(space, overrides)
    space = with_teacher_resources(space, resources)
    _Lock.check_free(sweep_dir)
    if (sweep_dir / ROWS).exists() or (sweep_dir / TUNE_DIR).exists():
        raise SweepError(f"{sweep_dir} already holds a sweep; use --resume {sweep_dir} or another out_dir")
    return space, base, sweep_dir, remote


def _finish(sweep_dir: Path, space, assets: list[dict], started: bool, wandb: bool, remote) -> None:
    """After the trials: the CSV, ``sweep.json``, the report, and the upload to a URI."""
    from vldistill.trainers.storage import push_files

    write_csv(sweep_dir)
    _write_summary(sweep_dir, space, assets)
    # A local Ray this sweep started stops while the report is built (~1 s each, side
    # by side); a cluster it joined, or a Ray the caller started, is left running.
    stopping = _stop_ray_in_background() if started else None
    _maybe_report(sweep_dir, wandb)  # with W&B: the report's tables and plots as a run too
    if stopping is not None:
        stopping.join()
    if remote is not None:
        push_files(remote, sweep_dir, [p.name for p in sorted(sweep_dir.iterdir())
                                       if p.name not in (".lock", TUNE_DIR, "train")])
        log.info("results uploaded to %s (local working copy: %s)", remote.uri, sweep_dir)


def _stop_ray_in_background():
    import threading

    import ray

    thread = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    thread.start()
    return thread


def _open_remote(uri: str, what: str):
    """The storage URI and this driver's local working copy of it; a URI that cannot be
    opened (unknown scheme, no credentials, no bucket) is an error before anything starts."""
    from vldistill.trainers.storage import Remote, local_copy_dir

    try:
        remote = Remote(uri)
        remote.probe()
    except (ValueError, OSError) as e:
        raise SweepError(f"{what}={uri}: cannot open the storage location: {e}") from None
    return remote, local_copy_dir(remote.uri, "sweep")


def _run_tune(space, base, sweep_dir: Path, resume: bool, address, wandb: bool, flatten,
              remote_uri: str | None = None) -> bool:
    """Run (or resume) the Tune experiment; True when it started the local Ray instance."""
    from ray import tune

    # Epochs without an evaluation report no accuracy; Tune's strict check would kill the
    # sweep at epoch 1. The searcher only reads the metric where it is present.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Every trial checkpoints every epoch (exact resume), so Tune snapshots the experiment at
    # every checkpoint (num_to_keep=1) and warns about it each time; the snapshot is tiny.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = _init_ray(address, driver_cpu=0.01 if space.resources.workers > 1 else 0.0)
    trainable = _trainable(space.resources)
    storage_path = remote_uri or str(sweep_dir)  # Tune and inner trainers write here directly
    if resume:
        tuner = tune.Tuner.restore(f"{storage_path}/{TUNE_DIR}", trainable=trainable,
                                   resume_unfinished=True, restart_errored=False,
                                   storage_filesystem=_storage_fs(storage_path))
    else:
        tuner = _new_tuner(space, base, sweep_dir, trainable, storage_path, wandb, flatten, remote_uri)
    tuner.fit()
    return started


def _trainable(res):
    """``sweep_trainable`` with the trial's resource request (memory in bytes, per worker)."""
    from ray import tune

    if res.workers > 1:  # the driver holds a sliver; the TorchTrainer's workers hold the rest
        return tune.with_resources(sweep_trainable, {"cpu": 0.01})
    return tune.with_resources(sweep_trainable, {"cpu": res.cpu, "gpu": res.gpu, "memory": int(res.memory * 2**30)})


def _constants(space, base, storage_path: str, flatten) -> dict:
    """Every trial's fixed config entries (flattened), with ``__base__``, the base's hash."""
    from vldistill.trainers.config import to_dict

    res = space.resources
    constants = flatten(to_dict(base))
    constants["threads"] = max(1, int(res.cpu))
    constants["progress"] = False
    constants[BASE_KEY] = content_key(constants)
    if res.workers > 1:
        constants[WORKERS_KEY] = res.workers
        constants[RESOURCES_KEY] = {"CPU": res.cpu, "GPU": res.gpu, "memory": int(res.memory * 2**30)}
        constants[STORAGE_KEY] = f"{storage_path}/train"
        constants[PLACEMENT_KEY] = res.placement
    return constants


def _new_tuner(space, base, sweep_dir: Path, trainable, storage_path: str, wandb: bool, flatten,
               remote_uri: str | None):
    """A new Tune experiment: the seeded Optuna searcher, the scheduler, the row writer
    (and W&B), every trial queued (``queue_depth``), atomic local storage."""
    import ray
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune
    from ray.tune import schedulers as tune_schedulers

    from vldistill.platform.searcher import DefineByRun, SeededOptunaSearch
    from vldistill.search_spaces.registry import SAMPLERS, SCHEDULERS

    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    multi = space.multi_objective
    searcher = SeededOptunaSearch(space=DefineByRun(space), metric=list(space.metrics) if multi else space.metrics[0],
                                  mode=list(space.modes) if multi else space.modes[0],
                                  sampler=SAMPLERS[space.sampler](space), study_name=space.name, storage=storage,
                                  seeds=space.seeds, search_space=space)
    scheduler = SCHEDULERS[space.scheduler.type](space, base.optim.epochs, tune_schedulers)
    total = space.trial_count()
    row_params = list(space.params) or (space.design.keys if space.design is not None else [])
    r = space.resources
    # a race stops when its comparisons are settled: its trial count is a ceiling ("<=16")
    shown = f"<={total}" if space.racing is not None else total
    callbacks = [_callbacks_module()(str(sweep_dir), row_params, {"cpu": r.cpu, "gpu": r.gpu, "workers": r.workers},
                                     shown, remote_uri)]
    callbacks += _wandb_callback(sweep_dir, space.name, wandb)
    depth, why = queue_depth(space, ray.cluster_resources())
    log.info("%s trial(s): up to %d started or queued at once (%s); %d fit the cluster now", shown, depth,
             why, _concurrency(r, ray.cluster_resources()))
    return tune.Tuner(
        trainable, param_space=_constants(space, base, storage_path, flatten),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=total,
                                    max_concurrent_trials=depth, reuse_actors=True),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=storage_path,
                                  storage_filesystem=_storage_fs(storage_path), callbacks=callbacks,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  # a crashed trial process restarts from its last
                                  # checkpoint (deterministic errors end the trial instead)
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  verbose=1))


def _storage_fs(storage_path: str):
    """Atomic file writes for a local ``storage_path`` (see ``platform/atomic_fs.py``: a
    driver killed mid-sync must not leave a truncated experiment state); ``None`` (Ray's
    default) for ``s3://`` / ``gs://``, whose objects appear whole on upload anyway."""
    from vldistill.trainers.storage import is_uri

    if is_uri(storage_path):
        return None
    from vldistill.platform.atomic_fs import atomic_local_fs
    return atomic_local_fs()


def check_tune_state(tune_dir: Path) -> None:
    """Before ``Tuner.restore``: the newest experiment and search-algorithm state files load.

    Tune itself logs a damaged state file and *restarts* the experiment (finished trials
    forgotten), so a damaged one is a named error here instead, before Ray starts.
    """
    import ray.cloudpickle as cloudpickle

    for pattern, load in (("experiment_state-*.json", lambda f: json.load(f)),
                          ("search_gen_state-*.json", cloudpickle.load),
                          ("searcher-state-*.pkl", cloudpickle.load)):
        files = sorted(tune_dir.glob(pattern))
        if not files:
            continue
        try:
            with open(files[-1], "rb") as f:
                load(f)
        except Exception as e:  # noqa: BLE001  (any failure to load is the same problem)
            raise SweepError(f"--resume: {files[-1]} is damaged ({type(e).__name__}: {e or 'empty file'}); "
                             "Tune would restart the sweep from nothing. It was written by a Ray "
                             "without atomic storage writes; resume is not possible from it") from None


def _write_summary(sweep_dir: Path, space, assets: list[dict] | None = None) -> None:
    rows = read_rows(sweep_dir)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = {"name": space.name, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
               "trials": len(rows), "status_counts": counts,
               "cpu_hours": sum(r["wall_seconds"] * r["resources"]["cpu"] * r["resources"]["workers"]
                                for r in rows) / 3600,
               "assets": assets or []}  # shared assets: where each was built, seconds, images/s
    done = [r for r in rows if r["status"] == "completed" and space.metrics[0] in r["metrics"]]
    if done:
        sign = 1 if space.modes[0] == "max" else -1
        best = max(done, key=lambda r: sign * r["metrics"][space.metrics[0]])
        summary["best"] = {"trial_id": best["trial_id"], "params": best["params"], "seed": best["seed"],
                           space.metrics[0]: best["metrics"][space.metrics[0]]}
        log.info("best %s = %.4f: %s (seed %s)", space.metrics[0], best["metrics"][space.metrics[0]],
                 best["params"], best["seed"])
    (sweep_dir / "sweep.json").write_text(json.dumps(summary, indent=1))
    log.info("sweep %s: %d trials %s; results in %s", space.name, len(rows), counts, sweep_dir)


def _maybe_report(sweep_dir: Path, wandb: bool = False) -> None:
    try:
        from vldistill.platform.report import build_report
    except ImportError:
        return
    try:
        paths = build_report(sweep_dir, wandb_run=wandb)
        log.info("report: %s", paths.get("report.md", sweep_dir / "report.md"))
    except Exception as e:  # the sweep's results are safe on disk; the report can be re-run
        log.warning("report failed (%s); re-run with: vldistill report %s", e, sweep_dir)
