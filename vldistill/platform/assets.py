"""The sweep's shared-asset stage: teacher work as Ray work, on the teacher's resources.

Before any trial starts, the sweep driver (which may sit on a CPU-only head node, and
never builds the teacher itself) asks the cluster for every asset its trials read
(``trainers/assets.py`` lists them):

1. **one Ray task** on the teacher's resources (``teacher_resources``: by default one GPU
   when the cluster has any) runs ``trainers.assets.prepare_shared``: the dataset (the
   embedded world is written), the teacher (the embedded one is trained), its text
   targets, metrics and evaluation-set embeddings, caption/sentence embeddings and P3's
   synthetic set, all into the content-addressed cache. ``max_calls=1``: the worker process
   exits afterwards, releasing the teacher's memory (and GPU).
2. **the view cache** (K teacher views per training image) as a Ray Data pipeline: one row
   per missing shard -> ``map_batches`` with an actor pool
   (``ray.data.ActorPoolStrategy(min_size=1, max_size=...)``), each actor holding the
   teacher on its device (``num_gpus`` from ``teacher_resources``, bf16 autocast on CUDA)
   and writing fp16 shards into the cache (``trainers/cache.py``). Ray Data restarts a
   killed actor and retries its shard; a killed *driver* leaves the finished shards, and
   the next build computes only the missing ones. ``meta.json`` is written last (with the
   node ids, devices, seconds and images/s), so a trial never sees a partial cache.

Two sweeps asking for the same assets at once: the second waits on a file lock of the
stage (and of the view-cache entry) in the driver's cache directory, then finds them
built. The lock is a local ``flock``: drivers that share a cache must run on one machine
(with ``ray job submit`` they all run on the head) or on a file system with POSIX locks.

Progress: the driver logs one line per asset (images/s, ETA, nodes), and the records go
into ``sweep.json`` under ``"assets"``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)


class AssetError(Exception):
    """A shared asset could not be built (the cause names the key, file or value)."""


@dataclass(frozen=True)
class TeacherResources:
    """What each teacher actor/task asks Ray for (``teacher_resources`` of a search space,
    or ``teacher_resources.<key>=...`` on the sweep's command line).

    ``gpu=None`` (auto): 1 when the cluster declares GPUs, else 0. ``max_actors=0``: as
    many view-cache actors as fit the cluster when the build starts (at least 1); set it
    higher on an autoscaling cluster so that the pool's demand scales GPU workers up.
    """

    cpu: float = 1.0
    gpu: float | None = None
    max_actors: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "TeacherResources":
        d = dict(d or {})
        unknown = sorted(set(d) - {"cpu", "gpu", "max_actors"})
        if unknown:
            raise ValueError(f"teacher_resources.{unknown[0]}: unknown key; known: cpu, gpu, max_actors")
        try:
            res = cls(cpu=float(d.get("cpu", 1.0)), gpu=None if d.get("gpu") in (None, "auto") else float(d["gpu"]),
                      max_actors=int(d.get("max_actors", 0)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"teacher_resources: {e}") from None
        if res.cpu <= 0:
            raise ValueError(f"teacher_resources.cpu: must be > 0, got {res.cpu}")
        if res.gpu is not None and res.gpu < 0:
            raise ValueError(f"teacher_resources.gpu: must be >= 0, got {res.gpu}")
        if res.max_actors < 0:
            raise ValueError(f"teacher_resources.max_actors: must be >= 0, got {res.max_actors}")
        return res

    def resolve(self, cluster: dict) -> dict:
        """Concrete numbers for the cluster as it is now (``ray.cluster_resources()``)."""
        gpu = self.gpu if self.gpu is not None else (1.0 if cluster.get("GPU", 0) > 0 else 0.0)
        fit = int(cluster.get("GPU", 0) // gpu) if gpu > 0 else int(cluster.get("CPU", 0) // self.cpu)
        return {"cpu": self.cpu, "gpu": gpu, "fit": max(fit, 1),
                "max_actors": self.max_actors or max(fit, 1)}


def _stage_key(cfg) -> str:
    from vldistill.trainers.config import to_dict

    d = to_dict(cfg)
    parts = {k: d.get(k) for k in ("data", "teacher", "augment", "teacher_cache", "cache_dir")}
    parts["text"] = d["distill"].get("text")
    return content_key(parts)


def _lock_dir(cfg) -> Path:
    from vldistill.trainers.assets import cache_uri
    from vldistill.trainers.storage import local_copy_dir
    from vldistill.trainers.teachers import cache_root

    uri = cache_uri(cfg)
    root = local_copy_dir(uri, "cache") if uri else cache_root(cfg.cache_dir)
    return root / "locks"


def build_shared(cfg, resources: TeacherResources) -> list[dict]:
    """Build every shared asset of ``cfg`` on the cluster (Ray must be initialised);
    returns one record per asset (what, where, how long, how fast).

    Raises:
        The asset's own error (``ConfigError``, ``DataError``...) unwrapped from Ray.
    """
    import ray

    from vldistill.trainers.assets import cache_uri
    from vldistill.trainers.cache import _Flock
    from vldistill.trainers.config import to_dict

    res = resources.resolve(ray.cluster_resources())
    locks = _lock_dir(cfg)
    locks.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with _Flock(locks / f"shared-{_stage_key(cfg)}.lock"):
        records = []
        if cache_uri(cfg) is None:  # a local or shared cache: the cluster's CPUs decode it
            records.append(build_image_store(to_dict(cfg), res))
        out = _run_prep(to_dict(cfg), res)
        records += out["records"]
        for r in out["records"]:
            log.info("shared assets: %s ready in %.1f s on node %s (%s, %s)%s", r["asset"], r["seconds"],
                     _short(r["nodes"][0]), r["device"], r["precision"],
                     "" if r.get("teacher_built", True) else "; everything was cached")
        if out["view_cache"] is not None:
            from vldistill.trainers.cache import ViewCachePlan, build_lock
            plan = ViewCachePlan.from_dict(out["view_cache"])
            with build_lock(plan) if not plan.uri else _Flock(locks / f"view-{plan.key}.lock"):
                records.append(build_view_cache(plan, to_dict(cfg), res))
    log.info("shared assets ready in %.0f s", time.time() - t0)
    return records


def _plan_images_task(cfg_dict: dict) -> dict | None:
    import ray

    from vldistill.trainers.assets import plan_shared_images
    from vldistill.trainers.config import from_dict

    out = plan_shared_images(from_dict(cfg_dict))
    return out if out is None else {**out, "node": ray.get_runtime_context().get_node_id()}


def _decode_batch(batch: dict, folder: str, root: str, image_size: int) -> dict:
    """Ray Data task: decode the image-store shards of ``batch`` (``data/store.py``)."""
    import numpy as np
    import ray

    from vldistill.trainers.data.store import decode_shard

    recs = [decode_shard(folder, root, image_size, str(n), int(i), list(p))
            for n, i, p in zip(batch["set"], batch["shard"], batch["paths"])]
    node = ray.get_runtime_context().get_node_id()
    return {"images": np.array([r["images"] for r in recs]), "node": np.array([node] * len(recs))}


def build_image_store(cfg_dict: dict, res: dict) -> dict:
    """The image store (every set of the run decoded once, ``trainers/data/store.py``): a
    Ray task writes the dataset (the embedded world) and plans it, then a Ray Data job of
    1-CPU tasks over the cluster decodes the missing shards into the shared cache; the
    driver writes ``meta.json`` last. Raises the builder's ``DataError`` (a named file)."""
    import ray
    import ray.data

    from vldistill.trainers.data.store import SHARD, StorePlan, write_meta

    t0 = time.time()
    task = ray.remote(max_calls=1)(_plan_images_task).options(num_cpus=1, name="vldistill-image-store-plan")
    out = _unwrap(lambda: ray.get(task.remote(cfg_dict)), "the image-store plan")
    if out is None or "built_here" in out:
        what = "cached" if out is None else (f"{out['key']}, {out['built_here']} images at {out['image_size']} px, "
                                              "decoded in the planning task")
        log.info("image store ready (%s)", what)
        return {"asset": f"image store ({what})", "seconds": round(time.time() - t0, 2),
                "nodes": [] if out is None else [out["node"]], "device": "cpu", "precision": "uint8",
                "teacher_built": False}
    node = out.pop("node")
    todo = [tuple(j) for j in out.pop("todo")]
    plan = StorePlan(**out)
    label = f"image store {plan.key}"
    log.info("%s: %d of %d shards to decode (%d images at %d px) by Ray Data tasks of 1 CPU", label,
             len(todo), len(plan.shards()), plan.images(), plan.image_size)
    progress = _Progress(label, len(todo), unit="images")
    items = [{"set": n, "shard": i, "paths": plan.sets[n]["paths"][i * SHARD:(i + 1) * SHARD]} for n, i in todo]
    if items:
        ds = ray.data.from_items(items).map_batches(
            _decode_batch, fn_kwargs={"folder": plan.folder, "root": plan.root, "image_size": plan.image_size},
            num_cpus=1, batch_size=1)

        def run():
            with _quiet_ray_data():
                for row in ds.iter_rows():
                    progress.update(row)
        _unwrap(run, label)
    seconds = time.time() - t0
    nodes = sorted(progress.nodes)
    write_meta(plan, [{"images": progress.forwards}], seconds, {"built_by": "ray-data", "nodes": nodes,
                                                                "planned_on": node})
    log.info("%s ready: %d images in %.1f s on %d node(s)", label, progress.forwards, seconds, len(nodes))
    return {"asset": f"image store {plan.key} ({plan.images()} images at {plan.image_size} px)",
            "seconds": round(seconds, 2), "images_per_s": round(progress.forwards / max(seconds, 1e-9), 1),
            "nodes": nodes, "device": "cpu", "precision": "uint8", "teacher_built": False}


def _unwrap(fn, what: str):
    """Run ``fn``; an error raised inside Ray (a task, or a Ray Data job's task, wrapped in
    several layers) comes back as itself: ours (``ConfigError``, ``DataError``: named, exit
    2) first, else the innermost non-Ray one; only a Ray failure becomes an ``AssetError``."""
    import ray

    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (Ray wraps user errors in several layers)
        chain, cause = [], e
        while cause is not None and cause not in chain:
            chain.append(cause)
            cause = getattr(cause, "cause", None) or cause.__cause__
        ours = [c for c in chain if type(c).__module__.startswith("vldistill")]
        user = [c for c in chain if isinstance(c, Exception) and not isinstance(c, ray.exceptions.RayError)
                and not type(c).__module__.startswith("ray")]
        if ours or user:
            raise (ours or user)[-1] from None
        raise AssetError(f"{what} failed: {e}") from None


def _short(node: str) -> str:
    return node[:8]


def _prep_task(cfg_dict: dict) -> dict:
    """Ray task: every shared asset but the view cache, on this worker's device."""
    import ray
    import torch

    from vldistill.trainers.assets import prepare_shared
    from vldistill.trainers.config import from_dict

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, min(int(cpus), os.cpu_count() or 1)))
    out = prepare_shared(dataclasses.replace(from_dict(cfg_dict), progress=False))  # the driver logs
    node = ray.get_runtime_context().get_node_id()
    for r in out["records"]:
        r["nodes"] = [node]
    return out


def _run_prep(cfg_dict: dict, res: dict) -> dict:
    """Run :func:`_prep_task` where the teacher runs: a GPU when it asks for one, else the
    CPUs of the largest node (it trains the embedded teacher: threads help)."""
    import ray

    cpus = res["cpu"]
    if res["gpu"] == 0:
        cpus = max([n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")] + [cpus])
    task = ray.remote(max_calls=1)(_prep_task).options(num_cpus=cpus, num_gpus=res["gpu"],
                                                        name="vldistill-shared-assets")
    return _unwrap(lambda: ray.get(task.remote(cfg_dict)), "the shared-asset task")


class _ShardActor:
    """Ray Data actor: a ``trainers.cache.ShardEncoder`` (teacher on this actor's device)."""

    def __init__(self, cfg: dict, plan: dict):
        import ray
        import torch

        from vldistill.trainers.assets import shard_encoder
        from vldistill.trainers.cache import ViewCachePlan
        from vldistill.trainers.config import from_dict

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, min(int(cpus), os.cpu_count() or 1)))
        self.node = ray.get_runtime_context().get_node_id()
        self.encoder = shard_encoder(from_dict(cfg), ViewCachePlan.from_dict(plan))

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        recs = [self.encoder(int(s)) for s in batch["shard"]]
        return {"shard": np.array([r["shard"] for r in recs]), "node": np.array([self.node] * len(recs)),
                "forwards": np.array([r["forwards"] for r in recs]),
                "seconds": np.array([r["seconds"] for r in recs]), "pid": np.array([r["pid"] for r in recs]),
                "device": np.array([r["device"] for r in recs])}


class _Progress:
    """One log line per ~10 s (and at the end): shards, images/s, ETA, nodes.

    The rate is the steady one: forwards since the first shard came back (actor start-up,
    imports and teacher loading excluded), over the time since then."""

    def __init__(self, label: str, todo: int, every: float = 10.0, unit: str = "forwards"):
        self.label, self.todo, self.every, self.unit = label, todo, every, unit
        self.t0 = self.last = time.time()
        self.first: float | None = None
        self.done = self.forwards = self.after_first = 0
        self.nodes: dict[str, int] = {}

    def update(self, row: dict) -> None:
        self.done += 1
        self.forwards += int(row[self.unit])
        if self.first is None:
            self.first = time.time()
        else:
            self.after_first += int(row[self.unit])
        self.nodes[str(row["node"])] = self.nodes.get(str(row["node"]), 0) + 1
        if time.time() - self.last >= self.every or self.done == self.todo:
            self.last = time.time()
            log.info("%s", self.line())

    def rate(self) -> float:
        if self.first is None or self.after_first == 0:
            return self.forwards / max(time.time() - self.t0, 1e-9)
        return self.after_first / max(time.time() - self.first, 1e-9)

    def line(self) -> str:
        left = (self.todo - self.done) * self.forwards / max(self.done, 1)
        nodes = " ".join(f"{_short(n)}({k})" for n, k in sorted(self.nodes.items()))
        return (f"{self.label}: {self.done}/{self.todo} shards, {self.rate():,.0f} images/s, "
                f"ETA {_clock(left / max(self.rate(), 1e-9))}, nodes {nodes}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def build_view_cache(plan, cfg_dict: dict, res: dict) -> dict:
    """Build the missing shards of ``plan`` with a Ray Data actor pool; returns its record."""
    import ray.data

    from vldistill.trainers.cache import done_shards, is_complete, write_meta

    t0 = time.time()
    todo = [i for i in range(plan.shards) if i not in done_shards(plan)]
    record = {"asset": f"view cache {plan.key} ({plan.images} images x {plan.views} views)",
              "shards": plan.shards, "shards_built": len(todo)}
    if is_complete(Path(plan.folder)):  # another sweep built it while this one waited
        return {**record, "shards_built": 0, "seconds": 0.0, "nodes": [], "device": "", "precision": ""}
    actors = max(1, min(res["max_actors"], len(todo) or 1))
    log.info("view cache %s: %d of %d shards to build (%d images x %d views) by up to %d actor(s) "
             "with %s CPU / %s GPU each", plan.key, len(todo), plan.shards, plan.images, plan.views,
             actors, res["cpu"], res["gpu"])
    progress = _Progress(f"view cache {plan.key}", len(todo))
    rows = []
    if todo:
        ds = ray.data.from_items([{"shard": i} for i in todo]).map_batches(
            _ShardActor, fn_constructor_kwargs={"cfg": cfg_dict, "plan": plan.to_dict()},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors,
                                               initial_size=min(actors, res["fit"])),
            num_cpus=res["cpu"], num_gpus=res["gpu"], batch_size=1)
        with _quiet_ray_data():
            for row in ds.iter_rows():
                rows.append(row)
                progress.update(row)
    seconds = time.time() - t0
    nodes = sorted(progress.nodes)
    devices = sorted({str(r["device"]) for r in rows})
    where = {"built_by": "ray-data", "nodes": nodes, "shards_per_node": progress.nodes,
             "devices": devices, "actors": actors, "teacher_resources": res,
             "precision": "bf16" if any(d.startswith("cuda") for d in devices) else "fp32"}
    write_meta(plan, [{"forwards": int(r["forwards"])} for r in rows], seconds, where)
    rate = progress.rate()
    log.info("view cache %s ready: %d shards in %.1f s, %s images/s steady (%s overall), nodes %s",
             plan.key, len(todo), seconds, f"{rate:,.0f}", f"{progress.forwards / max(seconds, 1e-9):,.0f}",
             ", ".join(_short(n) for n in nodes))
    return {**record, "seconds": round(seconds, 2), "images_per_s": round(progress.forwards / max(seconds, 1e-9), 1),
            "steady_images_per_s": round(rate, 1), "nodes": nodes, "device": ",".join(devices),
            "precision": where["precision"], "forwards": progress.forwards}


class _quiet_ray_data:
    """Ray Data's own progress bars and per-dataset INFO lines off while the driver prints
    its one line per asset (the user's DataContext is restored afterwards)."""

    def __enter__(self):
        import ray.data

        self.ctx = ray.data.DataContext.get_current()
        self.saved = (self.ctx.enable_progress_bars, self.ctx.print_on_execution_start)
        self.ctx.enable_progress_bars, self.ctx.print_on_execution_start = False, False
        self.logger = logging.getLogger("ray.data")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc):
        self.ctx.enable_progress_bars, self.ctx.print_on_execution_start = self.saved
        self.logger.setLevel(self.level)


__all__ = ["TeacherResources", "build_shared", "build_view_cache", "AssetError"]
