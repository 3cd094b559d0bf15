"""Work spread over forked processes of this machine, with a progress bar.

The local builders (the view cache's shards in ``cache.py``, the image store's shards in
``data/store.py``) run a job per item: one single-thread process per core kept a 2-core
machine busier than one multi-thread process (``docs/benchmarks.md`` (a)). The job
function is inherited through ``fork`` (never pickled), items and results are small.
Inside a Ray process (sockets, threads) nothing forks: the items run here, one by one.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm.auto import tqdm

_STATE: dict[str, Callable] = {}  # the job function, inherited by the forked workers


def _call(item: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)  # one core per worker process
    return _STATE["fn"](item)


def forked_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, desc: str,
               progress: bool = True) -> list[Any]:
    """``[fn(i) for i in items]`` over ``workers`` forked processes (in order)."""
    ray = sys.modules.get("ray")
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    out: list[Any] = []
    try:
        if min(workers, len(items)) > 1 and not (ray is not None and ray.is_initialized()):
            _STATE["fn"] = fn
            try:
                with ProcessPoolExecutor(min(workers, len(items)),
                                         mp_context=multiprocessing.get_context("fork")) as pool:
                    for result in pool.map(_call, items):
                        out.append(result)
                        bar.update(1)
            finally:
                _STATE.clear()
        else:
            for item in items:
                out.append(fn(item))
                bar.update(1)
    finally:
        bar.close()
    return out
