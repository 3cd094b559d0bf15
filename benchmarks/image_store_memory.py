"""Private memory of a sweep's driver and trial as the dataset grows: image store vs in-memory.

Writes the embedded world at two sizes (N and ~4N images; ``--small`` / ``--large`` set
``data.world.per_class``), decodes at ``--size`` px (default 128), and runs the same
one-trial sweep on each with today's code (the image store, this checkout) and with the
code before it (``--old REV``, default ``909530d``: every process decoded its sets into RAM),
each in a fresh process, in one run.

Measured: the peak ``RssAnon`` (anonymous = private pages; the store's pages are page cache,
shared by a node's trials and reclaimable), sampled every 50 ms, of the sweep driver
process; of the sweep's trial process (the Ray worker running ``sweep_trainable``, a
descendant of the driver); and of the same trial run by ``vldistill train`` with its
children (the store's forked decoders on the store side). Printed: each peak, and the growth from N to 4N as a fraction of the decoded
bytes added (``images x 3 x size^2``). Target: < 10% for the store.

Also, in-process: student steps/s reading batches from the memory-mapped store vs from an
in-memory tensor (same model, same batches, alternating), target >= 0.95.

    python benchmarks/image_store_memory.py [--small 150] [--large 600] [--size 128]

Each size has its own private cache; the store side runs first and builds the world and
the teacher there (in the sweep's shared-asset Ray task: neither the driver nor the trial,
which are what is measured), the in-memory side reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SPACE = """
name: mem_bench
metric: novel_acc
mode: max
sampler: grid
sampler_seed: 0
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1}
overrides: [experiment=smoke, optim.epochs=1, eval.every=1]
params:
  distill.cls.tau: {choice: [0.07]}
"""


def _rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _trial_pids(root: int) -> list[int]:
    """The sweep's trial processes: descendants of its driver (driver -> raylet -> workers)
    whose title is Tune's function trainable; other Ray jobs on the machine are not counted."""
    out, todo, seen = [], [root], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ImplicitFunc" in cmd or b"sweep_trainable" in cmd:
            out.append(p)
        todo += _children(p)
    return out


def _sampled(cmd: list[str], env: dict, measures: dict) -> dict:
    """Run ``cmd`` (outside the repository: ``-m`` puts the cwd first on sys.path); the peak
    of each ``measures[name](pid)`` over the run, sampled every 50 ms."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tempfile.gettempdir())
    peaks = dict.fromkeys(measures, 0)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for name, measure in measures.items():
                peaks[name] = max(peaks[name], measure(proc.pid))
            time.sleep(0.05)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return peaks


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _tree_rss_anon(pid: int) -> int:
    todo, total, seen = [pid], 0, set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_anon(p)
        todo += _children(p)
    return total


def _train(pythonpath: Path, out: Path, cache: Path, per_class: int, size: int) -> int:
    """Peak RssAnon of ``vldistill train`` (the trial without Ray) and its children."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "VLDISTILL_CACHE": str(cache), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "vldistill.platform.cli", "train", "experiment=smoke", "optim.epochs=1",
           "eval.every=1", "progress=false", f"out_dir={out}", f"data.world.per_class={per_class}",
           f"data.world.shift_per_class={per_class // 2}", f"data.image_size={size}", "data.images_per_class=4"]
    return _sampled(cmd, env, {"train": _tree_rss_anon})["train"]


def _sweep(pythonpath: Path, space: Path, out: Path, cache: Path, per_class: int, size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "VLDISTILL_CACHE": str(cache), "WANDB_MODE": "offline",
           "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "vldistill.platform.cli", "sweep", f"search_space={space}", f"out_dir={out}",
           "--no-wandb", f"data.world.per_class={per_class}", f"data.world.shift_per_class={per_class // 2}",
           f"data.image_size={size}", "data.images_per_class=4"]
    return _sampled(cmd, env, {"driver": _rss_anon,
                               "trial": lambda pid: max([0] + [_rss_anon(p) for p in _trial_pids(pid)])})


def _count(cache: Path) -> int:
    metas = list((cache / "images").glob("*/meta.json"))
    return json.loads(metas[0].read_text())["images"] if metas else 0


def throughput(size: int, steps: int = 30) -> float:
    """Student steps/s on batches gathered from a memory-mapped store / an in-memory tensor."""
    import numpy as np
    import timm
    import torch

    torch.manual_seed(0)
    n = 4096
    data = torch.randint(0, 255, (n, 3, size, size), dtype=torch.uint8)
    path = Path(tempfile.mkdtemp()) / "train.npy"
    np.save(path, data.numpy())
    mapped = torch.from_numpy(np.load(path, mmap_mode="c"))
    model = timm.create_model("mobilenetv3_small_100", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    idx = [torch.randint(0, n, (32,)) for _ in range(steps)]
    def run(src) -> float:
        t0 = time.perf_counter()
        for i in idx:
            x = src[i].float() / 255.0
            loss = model(x).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    # Untimed warm-up of both sides: the model's first steps (allocator, kernel selection)
    # and the mapped file's first page faults would otherwise be charged to whichever side
    # runs first.
    run(mapped), run(data)
    times = {"store": 0.0, "memory": 0.0}
    for rnd in range(6):
        for side in (("store", "memory") if rnd % 2 == 0 else ("memory", "store")):
            times[side] += run(mapped if side == "store" else data)
    shutil.rmtree(path.parent, ignore_errors=True)
    return times["memory"] / times["store"]  # >1: the store is faster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=150, help="data.world.per_class of the N world")
    ap.add_argument("--large", type=int, default=600, help="data.world.per_class of the ~4N world")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--old", default="909530d", help="git revision of the in-memory code")
    ap.add_argument("--throughput-only", action="store_true", help="only the student steps/s ratio")
    a = ap.parse_args()
    if a.throughput_only:
        print(f"student steps/s, store / in-memory (mobilenetv3_small, batch 32, {a.size} px): "
              f"{throughput(a.size):.3f}")
        return
    work = Path(tempfile.mkdtemp(prefix="vl-mem-bench-"))
    old = work / "old"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(old), a.old], check=True)
    space = work / "space.yaml"
    space.write_text(SPACE)
    try:
        results = {}
        for per_class in (a.small, a.large):
            cache = work / f"cache-{per_class}"  # the world and teacher: shared by both sides
            for name, code in (("store", REPO), ("in-memory", old)):
                r = _sweep(code, space, work / f"run-{name}-{per_class}", cache, per_class, a.size)
                r["train"] = _train(code, work / f"train-{name}-{per_class}", cache, per_class, a.size)
                results[(name, per_class)] = r
                print(name, per_class, r, flush=True)
            results[("store", per_class)]["images"] = _count(cache)
        n_small = results[("store", a.small)]["images"]
        n_large = results[("store", a.large)]["images"]
        added = (n_large - n_small) * 3 * a.size * a.size
        print(f"\nworld per_class {a.small} -> {a.large}: {n_small} -> {n_large} images at {a.size} px, "
              f"+{added / 2**20:.0f} MiB decoded")
        for name in ("in-memory", "store"):
            for who, label in (("driver", "sweep driver"), ("train", "trial (vldistill train, with children)"),
                               ("trial", "trial (Ray worker of the sweep)")):
                sm, big = results[(name, a.small)][who], results[(name, a.large)][who]
                print(f"  {name:9s} {label:40s} peak RssAnon {sm / 2**20:7.0f} -> {big / 2**20:7.0f} MiB: "
                      f"growth {100 * (big - sm) / added:6.1f}% of the added decoded bytes")
        ratio = throughput(a.size)
        print(f"student steps/s, store / in-memory (mobilenetv3_small, batch 32, {a.size} px): {ratio:.3f}")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
