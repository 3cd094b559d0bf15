"""What a trial pays per epoch to persist its checkpoint into local Tune storage.

Every epoch a trial hands its ``last.pt`` to ``tune.report(checkpoint=...)`` and Ray copies
it into ``tune/<trial>/checkpoint_*`` with ``pyarrow.fs.copy_files`` (64 MiB chunks). The
sweep now gives Ray ``platform.atomic_fs.atomic_local_fs()`` as its storage filesystem (a
driver killed mid-copy must not leave a truncated experiment state), and no longer patches
Ray's private copy function into a hard link. This benchmark measures, in one run and in
rotating order, the three ways on the same file:

* ``ray-default``: ``copy_files`` into ``pyarrow.fs.LocalFileSystem`` (Ray without our fs);
* ``atomic``: ``copy_files`` into ``atomic_local_fs()`` from a plain local checkpoint
  (a stream through Python);
* ``atomic-link``: the same, the checkpoint given on that filesystem too
  (``atomic_fs.checkpoint_source``): ``copy_file`` hard-links -- what the sweep does now;
* ``hard-link``: ``os.link`` (what the removed private patch did).

The file is a real ResNet-18 checkpoint's size (weights + Adam state, ~135 MB), written
fresh before each copy as ``save_checkpoint`` does (tmp + ``os.replace``), so the page
cache state matches a trial's. ``--epochs`` repeats; the median and the per-trial cost for
a 15-epoch trial are printed.

    python benchmarks/checkpoint_persist.py [--mb 135] [--epochs 12]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vldistill.platform.atomic_fs import atomic_local_fs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=135)
    ap.add_argument("--epochs", type=int, default=12)
    a = ap.parse_args()
    payload = os.urandom(a.mb << 20)
    work = Path(tempfile.mkdtemp(prefix="vl-ckpt-bench-"))
    fs = {"ray-default": pafs.LocalFileSystem(), "atomic": atomic_local_fs(),
          "atomic-link": atomic_local_fs()}
    ways = ["ray-default", "atomic", "atomic-link", "hard-link"]
    times: dict[str, list[float]] = {w: [] for w in ways}
    try:
        for epoch in range(a.epochs):
            for way in ways[epoch % 4:] + ways[:epoch % 4]:  # rotate the order
                src = work / "staging"
                src.mkdir(exist_ok=True)
                (src / "last.pt.tmp").write_bytes(payload)
                os.replace(src / "last.pt.tmp", src / "last.pt")
                dst = work / f"checkpoint_{epoch:06d}_{way}"
                t0 = time.perf_counter()
                dst.mkdir()  # Ray creates the checkpoint directory first too
                if way == "hard-link":
                    os.link(src / "last.pt", dst / "last.pt")
                else:
                    pafs.copy_files(str(src), str(dst), destination_filesystem=fs[way],
                                    source_filesystem=fs[way] if way == "atomic-link" else None,
                                    chunk_size=64 << 20)
                times[way].append(time.perf_counter() - t0)
                assert (dst / "last.pt").stat().st_size == len(payload)
                shutil.rmtree(dst)  # num_to_keep=1: Ray deletes the previous one
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"checkpoint of {a.mb} MB persisted {a.epochs} times per way (rotating order), "
          f"load {os.getloadavg()[0]:.2f}")
    base = statistics.median(times["ray-default"])
    for way in ways:
        med = statistics.median(times[way])
        print(f"  {way:12s} median {med * 1000:7.1f} ms  (min {min(times[way]) * 1000:6.1f}, "
              f"max {max(times[way]) * 1000:6.1f})  x{med / base:.2f} of ray-default  "
              f"-> {15 * med:.2f} s per 15-epoch trial")
    extra = 15 * (statistics.median(times["atomic-link"]) - statistics.median(times["hard-link"]))
    print(f"the sweep's way (atomic-link) against the removed private patch (hard-link): "
          f"{extra:+.3f} s per 15-epoch trial")


if __name__ == "__main__":
    main()
