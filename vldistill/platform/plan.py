"""What a sweep would do, told before it runs: ``vldistill sweep ... --plan`` and ``vldistill spaces``.

A sweep can cost hours. ``--plan`` checks the space exactly as a sweep does (same errors,
exit code 2) and prints, without starting Ray and without writing a file: the
configurations (every one for a grid; the sampler, its budget and the ranges otherwise),
the trial count under the seed policy, the per-trial resources and the concurrency the
sweep would pick on this machine, and which shared assets (world, teacher, teacher metrics,
teacher cache, P3's synthetic set) are missing from the content-addressed cache.

Cache keys are computed from the config alone (the world's and the embedded teacher's keys
are hashes of their recipes; the teacher cache's key hashes the training file list, which
is listed, never decoded). Keys that need a built artifact (the teacher metrics hash the
prompts' embeddings' key) are reported as "unknown until built".

``vldistill spaces`` lists the shipped search spaces with the question and cost each file
states in its leading comment. Ray is never imported here.
"""

from __future__ import annotations

import itertools
import json
import os
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

MISSING, PRESENT = "missing", "present"


# ----- vldistill spaces --------------------------------------------------------------------


def space_header(path: Path) -> tuple[str, str]:
    """``(question, cost)`` from the comment a search-space file starts with."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    question, _, cost = text.partition("Cost:")
    return question.strip(), ("Cost:" + cost).strip() if cost else ""


def spaces_text() -> str:
    """Every shipped space: name, question, cost (``vldistill spaces``)."""
    from vldistill.search_spaces.loader import SHIPPED_DIR, list_search_spaces

    out = []
    for name in list_search_spaces():
        question, cost = space_header(SHIPPED_DIR / f"{name}.yaml")
        body = [textwrap.fill(t, 96, initial_indent="  ", subsequent_indent="  ")
                for t in (question, cost or "Cost: not stated")]
        out.append("\n".join([name, *body]))
    out.append("run one: vldistill sweep search_space=NAME   (see what it would run: add --plan)")
    return "\n\n".join(out)


# ----- configurations and trials -----------------------------------------------------------


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def grid_configurations(space) -> list[dict]:
    """Every grid point in declared order (a conditional parameter whose condition fails is
    ``None``: inactive, the base config's value)."""
    keys = list(space.params)
    points = []
    for combo in itertools.product(*(space.params[k].values for k in keys)):
        chosen: dict = {}
        for k, v in zip(keys, combo):
            chosen[k] = v if space.params[k].is_active(chosen) else None
        points.append(chosen)
    return points


def _configurations(space) -> list[str]:
    if space.sampler == "grid":
        points = grid_configurations(space)
        lines = [f"configurations: {len(points)} grid points (sampler grid, seed {space.sampler_seed})"]
        for i, p in enumerate(points, 1):
            lines.append(f"  {i:>3}. " + "  ".join(f"{k}={_value(v)}" for k, v in p.items() if v is not None))
        distinct = len({tuple(sorted((k, repr(v)) for k, v in p.items())) for p in points})
        if distinct < len(points):
            lines.append(f"  ({distinct} distinct: inactive conditional parameters repeat a point)")
        if space.num_samples < len(points):
            lines.append(f"  num_samples={space.num_samples}: the sampler runs {space.num_samples} of them, "
                         f"in its seeded order")
        return lines
    lines = [f"configurations: {space.num_samples} drawn by the {space.sampler} sampler "
             f"(seed {space.sampler_seed}) from"]
    for k, p in space.params.items():
        rng = (f"{p.kind} {json.dumps(list(p.values))}" if p.categorical
               else f"{p.kind} [{_value(p.low)}, {_value(p.high)}]")
        when = f"  (when {json.dumps(p.when)})" if p.when else ""
        lines.append(f"  {k}: {rng}{when}")
    return lines


def _trials(space, base) -> list[str]:
    configs = space.trial_count() // len(space.seeds)
    sch = space.scheduler
    epochs = (sch.max_t or base.optim.epochs) if sch.type == "asha" else base.optim.epochs
    r = space.racing
    if r is not None:
        from vldistill.platform.racing import pool_of
        from vldistill.search_spaces.designs import space_comparisons

        pooled = ", sd pooled over the factorial" if pool_of(space_comparisons(space), r.variance) else ""
        return [f"trials: {configs} configurations x {r.min}-{r.max} seeds, raced (margin {r.margin:g}, "
                f"alpha {r.alpha:g}, futility {r.futility:g}{pooled}) = {configs * r.min} to {configs * r.max} "
                f"trials of {epochs} epochs: seeds go a round at a time to the configurations of "
                "undecided comparisons"]
    line = (f"trials: {configs} configurations x {len(space.seeds)} seeds {list(space.seeds)} = "
            f"{space.trial_count()} trials of {'up to ' if sch.type == 'asha' else ''}{epochs} epochs")
    if sch.type == "asha":
        rungs, t = [], float(sch.grace_period)
        while t < epochs:
            rungs.append(f"{t:g}")
            t *= sch.reduction_factor
        line += f"; ASHA may stop a trial at epochs {', '.join(rungs)}"
    return [line]


# ----- resources and concurrency ---------------------------------------------------------


def _resources(space, address: str | None) -> list[str]:
    from vldistill.platform.sweep import _concurrency, queue_depth

    r = space.resources
    lines = [f"per trial: {r.workers} worker(s) x {r.cpu:g} CPU, {r.gpu:g} GPU, {r.memory:g} GiB memory"
             + (f", placement {r.placement}" if r.workers > 1 else "")]
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        depth, why = queue_depth(space, {})
        lines.append(f"cluster {address}: not checked (--plan does not join it); Tune keeps {depth} "
                     f"trial(s) started or queued ({why}); Ray starts those the cluster fits")
        return lines
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = (os.cpu_count() or 1) + (1 if r.workers > 1 else 0)
    local = {"CPU": cpus, "GPU": gpus}
    n = _concurrency(r, local)
    depth, why = queue_depth(space, local)
    n = min(n, depth)
    lines.append(f"this machine (a local Ray of {cpus} CPUs, {gpus} GPUs): {n} trial(s) at once"
                 + (" (resources.max_concurrent)" if r.max_concurrent is not None and n == depth else "")
                 + f"; Tune keeps {depth} started or queued ({why})")
    return lines


# ----- shared assets ---------------------------------------------------------------------


def _state(path: Path) -> str:
    return PRESENT if path.exists() else MISSING


def _teacher_key(cfg) -> tuple[str | None, list[tuple[str, str, str]]]:
    """The teacher's content key and its cache row (open_clip teachers are not cached)."""
    from vldistill.trainers.assets import world_spec
    from vldistill.trainers.teachers import _open_clip_identity, cache_root, embedded_key

    root = cache_root(cfg.cache_dir)
    if cfg.teacher.name == "embedded":
        key = embedded_key(cfg.teacher.embedded, world_spec(cfg))
        ckpt = root / "teachers" / key / "teacher.pt"
        state = _state(ckpt) if ckpt.exists() else f"{MISSING} (trained before the first trial)"
        return key, [("teacher (embedded)", str(ckpt), state)]
    key, weights = _open_clip_identity(cfg.teacher.name, cfg.teacher.pretrained)
    return key, [(f"teacher ({cfg.teacher.name})", str(weights or "random init, seeded"),
                  "not cached (loaded from its weights)")]


def shared_assets(cfg) -> list[tuple[str, str, str]]:
    """``(asset, cache path, state)`` of every shared asset the sweep prepares before its
    first trial for ``cfg`` (the base config, or one of ``asset_configs``), from config and
    file listings alone."""
    from vldistill.trainers.assets import cache_uri, data_root, needs_view_cache
    from vldistill.trainers.cache import cache_key, is_complete
    from vldistill.trainers.data.folder import read_dataset, split_paths
    from vldistill.trainers.synth import synth_key
    from vldistill.trainers.teachers import cache_root

    if cache_uri(cfg):
        return [("cache", str(cache_uri(cfg)), "not checked (a storage URI; --plan reads local files only)")]
    root, d, wroot = cache_root(cfg.cache_dir), cfg.data, data_root(cfg)
    rows: list[tuple[str, str, str]] = []
    if d.source == "world":
        rows.append(("world", str(wroot), _state(wroot / "world.json")))
    else:
        rows.append(("dataset (folder)", str(wroot), PRESENT if wroot.is_dir() else MISSING))
    tkey, trow = _teacher_key(cfg)
    rows += trow
    ready = all(r[2] == PRESENT or r[2].startswith("not cached") for r in rows)
    after = f"{MISSING} (built after the teacher)"
    rows.append(("teacher metrics + eval embeddings", str(root / "teacher_eval"),
                 "unknown until built (the key hashes the prompts' text key)" if ready else after))
    info = read_dataset(wroot, d.train_domain) if ready else None
    if d.train_source == "synthetic":
        if info is None:
            rows.append(("synthetic training set (P3)", str(root / "synthetic"), after))
        else:
            path = root / "synthetic" / synth_key(tkey, [info.name(c) for c in info.base], d.synthetic)
            rows.append(("synthetic training set (P3)", str(path), _state(path / "data.pt")))
    elif needs_view_cache(cfg):
        if info is None:
            rows.append(("teacher cache", str(root / "teacher_cache"), after))
        else:
            train = split_paths(info, d.train_fraction, d.images_per_class, d.split_seed)[0]
            splits = SimpleNamespace(info=info, train_paths=train, train_key=None)
            path = root / "teacher_cache" / cache_key(tkey, splits, d.image_size, cfg.augment,
                                                      cfg.augment.views)
            rows.append((f"teacher cache ({len(train)} images x {cfg.augment.views} views)", str(path),
                         PRESENT if is_complete(path) else MISSING))
    return rows


def _assets(space, base) -> list[str]:
    from vldistill.platform.sweep import asset_configs
    from vldistill.trainers.teachers import cache_root

    configs = asset_configs(space, base)
    rows = shared_assets(base)
    for cfg in configs[1:]:
        rows += [r for r in shared_assets(cfg) if r not in rows]
    res = getattr(space, "teacher_resources", None) or {}
    how = ", ".join(f"{k} {v}" for k, v in res.items()) or "cpu 1, gpu auto (the defaults)"
    lines = [f"shared assets (cache {cache_root(base.cache_dir)}):",
             f"  built before the first trial, as Ray work on teacher_resources: {how}"]
    width = max(len(r[0]) for r in rows)
    for what, path, state in rows:
        lines += [f"  {what:<{width}}  {state}", f"  {'':<{width}}  {path}"]
    if len(configs) > 1:
        lines.insert(2, f"  for {len(configs)} configurations: the space's params/design points change what "
                        "its trials read (class text, dataset, teacher...); trials never build assets")
    return lines


def plan_text(space_ref: str | None, overrides: Sequence[str] = (), address: str | None = None) -> str:
    """The plan of ``vldistill sweep [search_space=...] [overrides]``; raises what the sweep
    would raise (``SweepError`` / ``ConfigError``) for an invalid space or override."""
    from vldistill.platform.sweep import (_split_teacher_resources, checked_base_config, load_space,
                                          with_teacher_resources)

    overrides, teacher_res = _split_teacher_resources(overrides)
    space = load_space(space_ref)
    base = checked_base_config(space, overrides)
    space = with_teacher_resources(space, teacher_res)
    question, cost = space_header(Path(space.source)) if space.source else ("", "")
    head = [f"plan of sweep {space.name!r} ({space.source or 'inline'})"]
    head += [textwrap.fill(t, 96, initial_indent="  ", subsequent_indent="  ") for t in (question, cost) if t]
    objective = ", ".join(f"{m} ({mode})" for m, mode in zip(space.metrics, space.modes))
    head.append(f"objective: {objective}; scheduler: {space.scheduler.type}")
    sections = [head, _configurations(space), _trials(space, base), _resources(space, address),
                _assets(space, base), ["nothing was started or written (drop --plan to run it)"]]
    return "\n\n".join("\n".join(s) for s in sections)
