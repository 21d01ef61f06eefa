"""Executors: how a stage runs its cells (domains x sparsities), whatever the machine.

- ``local`` (default): one after another in the stage's own process;
- ``pool``: worker processes on this machine (``execute.workers``; 0 = as many as the cores hold at
  ``train.threads`` threads each);
- ``ray``: Ray tasks, on a local Ray or an existing cluster (``RAY_ADDRESS``); on CUDA each task asks
  for ``execute.gpus_per_cell`` of a GPU, so many small cells share one GPU.

Results do not depend on the executor: a cell computes only from its own inputs and seeds (its
generators are seeded by params), and every worker runs torch with the same thread count the local
executor uses (``train.threads``: CPU kernels give other bits with another thread count, so the
threads are never "split" at the cost of the numbers; the pool instead runs fewer, whole workers).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Callable, Sequence

KINDS = ("local", "pool", "ray")
RETRIES = 2  # a cell whose worker dies (SIGKILL, out of memory) is run again this many times


def cell_threads(threads: int) -> int:
    """The torch threads of every cell: ``train.threads``, 0 meaning torch's default on this machine."""
    if threads:
        return threads
    import torch
    return torch.get_num_threads()


def _init_worker(threads: int, env: dict[str, str]) -> None:
    import torch
    os.environ.update(env)
    torch.set_num_threads(threads)


class Local:
    kind = "local"

    def map(self, fn: Callable, items: Sequence) -> list:
        return [fn(item) for item in items]


class Pool:
    """Worker processes (spawned: no state inherited from the stage process but ``env``).

    A worker that dies mid-cell (killed, out of memory) breaks the whole process pool; the results
    already returned are kept, a fresh pool runs the unfinished cells again (``RETRIES`` times), so the
    sweep completes with the numbers of an uninterrupted run: a cell computes only from its inputs, a
    half-written cell output is never read (the adapt stage renames whole cells into place) and a rerun
    cell resumes from its checkpoint."""
    kind = "pool"

    def __init__(self, workers: int, threads: int, env: dict[str, str]):
        self.workers, self.threads, self.env = workers, threads, env

    def map(self, fn: Callable, items: Sequence) -> list:
        results: dict[int, object] = {}
        for attempt in range(RETRIES + 1):
            todo = [i for i in range(len(items)) if i not in results]
            if not todo:
                break
            try:
                with ProcessPoolExecutor(max_workers=min(self.workers, len(todo)), mp_context=get_context("spawn"),
                                         initializer=_init_worker, initargs=(self.threads, self.env)) as pool:
                    futures = {pool.submit(fn, items[i]): i for i in todo}
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
            except BrokenProcessPool:
                left = len(items) - len(results)
                if attempt == RETRIES:
                    raise RuntimeError(f"pool: a worker died {RETRIES + 1} times; {left} of {len(items)} cells "
                                       "unfinished (out of memory? see the stage log)") from None
                print(f"pool: a worker died; {left} unfinished cells run again in a fresh pool", flush=True)
        return [results[i] for i in range(len(items))]


# Ray's switch that, set to 0, keeps a node's every component on 127.0.0.1 (Ray 2.60: ray_constants).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class Ray:
    """Ray tasks: ``RAY_ADDRESS`` names an existing cluster (e.g. ``127.0.0.1:6379``), else a local Ray
    is started for the stage: usage stats off (no network needed), and on loopback only (Ray otherwise
    registers a local node at the machine's network address, even when asked for 127.0.0.1)."""
    kind = "ray"

    def __init__(self, threads: int, gpus_per_cell: float, env: dict[str, str]):
        self.threads, self.gpus, self.env = threads, gpus_per_cell, env

    def map(self, fn: Callable, items: Sequence) -> list:
        if not items:
            return []
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault(LOOPBACK_ONLY, "0")
        import ray
        started = not ray.is_initialized()
        if started:
            # "local": a Ray of the stage's own; None would join whatever `ray start` left in /tmp/ray
            address = os.environ.get("RAY_ADDRESS") or "local"
            # The workers get this checkout's pipeline package (uploaded: a cluster's nodes lack it).
            package = os.path.dirname(os.path.abspath(__file__))
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     runtime_env={"env_vars": self.env, "py_modules": [package], "excludes": ["__pycache__"]},
                     **({"num_cpus": os.cpu_count()} if address == "local" else {}))
        try:
            gpus = self.gpus if _cuda() else 0
            task = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_retries=2)(_ray_cell)
            return ray.get([task.remote(fn, item, self.threads) for item in items])
        finally:
            if started:
                ray.shutdown()


def _ray_cell(fn: Callable, item, threads: int):
    _init_worker(threads, {})  # the env came with the runtime_env
    return fn(item)


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def make(kind: str, *, threads: int, workers: int = 0, gpus_per_cell: float = 0.0,
         env: dict[str, str] | None = None):
    """The executor ``kind`` (``KINDS``); ``env``: variables every worker needs (tracking, execution)."""
    env = dict(env or {})
    if kind == "local":
        return Local()
    if kind == "pool":
        return Pool(workers or max(1, (os.cpu_count() or 1) // threads), threads, env)
    if kind == "ray":
        return Ray(threads, gpus_per_cell, env)
    raise ValueError(f"executor must be one of {KINDS}, got {kind!r}")
