"""Content-keyed adaptation cells: planned for every method of ``adapt.methods``, computed through an executor.

A trial (``pipeline.selection``) is one seed (``adapt.seeds`` replicates) at one point of the method's
``search`` grid; a cell is a domain x sparsity x trial of one method, trained with that trial's params.
A cell's key hashes everything its result depends on: its coordinates, the method's ``PARAMS`` less the
lists that span the cells, the source of the code it runs (``pipeline.sources``: the method's file and
what it imports, so a change to one method's file re-keys only that method's cells), the data and the
upstream files it reads. Computed cells are kept in ``.cells/<run>/<method>/<cell>-<key>/``, outside
every DVC output: a cell whose key is unchanged is copied, not recomputed. A cell is computed in a
temporary folder and renamed into place when complete: a killed worker leaves nothing half-written
that could be read, and two workers finishing the same cell keep the first complete copy.

A method that defines ``adapt_cells`` may train its cells K at a time in one stacked step
(``pipeline.batched``, ``execute.batch``; ``batch_size`` decides per method, from the method's grid, not
from what is left to compute, so a resumed run takes the path of the run it resumes). ``plan`` cuts each
segment of cells (the grid, each extended point, the replicas) into batches; a stacked step rounds
otherwise than one cell at a time, and otherwise for another K, so such a cell's key holds the path, its
batch's K and the digest of ``pipeline.batched``: each path's bytes are a function of the key and neither
is ever read for the other. ``compute_batch`` computes a batch as ``compute`` computes one cell:
temporary folders, each renamed into place when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import sources
from .config import ConfigError
from .paths import Cell, Paths, cell_name
from .selection import Trial, cell_grid, choose, grid_points, scoring_seeds, trial_params
from .storage import file_sha256, pid_alive, write_json
from .tracking import Tracker, execution_key, tracking_uri

if TYPE_CHECKING:
    from .config import Params

# What spans the cells (or picks the methods), not part of a cell's key.
GRID_KEYS = ("adapt.sparsities", "domains.names", "adapt.seeds", "adapt.methods")
STAGE_PARAMS = ("adapt.seeds", "search")  # the adapt stage lists these too (they span its cells)
TIMING_KEYS = ("train_seconds", "seconds")  # a cell's details that are clock readings: MLflow only


def method_module(name: str):
    from .methods import registry
    methods = registry()
    if name not in methods:
        raise ConfigError(f"adapt: unknown method {name!r}; known: {sorted(methods)}")
    return methods[name]


# ------------------------------------------------------------------------------------------ keys
def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def key_params(params: Params, module) -> dict:
    """The values of the method's ``PARAMS`` (the keys its cells depend on), grid lists removed."""
    tree = params.model_dump(mode="json")
    out = {}
    for key in module.PARAMS:
        value = _lookup(tree, key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{key}.{k}" not in GRID_KEYS}
        out[key] = value
    return out


def code_digest(method: str) -> str:
    """sha256 of the source a cell of ``method`` runs: this module and the method's file, with their imports."""
    return sources.digest(__name__, f"pipeline.methods.{method}")


def input_digests(paths: Paths, module) -> dict[str, str]:
    """sha256 of every file a cell may read: the data splits, the pretrained model, upstream methods' files."""
    files = sorted(paths.data.glob("*.npy")) + [paths.pretrained]
    for upstream in getattr(module, "NEEDS", ()):
        folder = paths.adapt(upstream)
        files += sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]
    missing = [f for f in files if not f.is_file()]
    if missing or not files[:-1]:
        raise ConfigError(f"adapt: inputs missing ({', '.join(map(str, missing)) or paths.data}); run the "
                          "earlier stages first (dvc repro)")
    return {f.relative_to(paths.root).as_posix(): file_sha256(f) for f in files}


def cell_key(module, domain: str, sparsity: float | None, common: dict, params: dict | None = None,
             trial: Trial = Trial(), chosen: dict | None = None) -> str:
    """``params``: the trial's key params (None: ``common`` holds them); ``chosen``: upstream choices."""
    parts = {"method": module.NAME, "domain": domain, "sparsity": sparsity, **common}
    if params is not None:
        parts["params"] = params
    if trial != Trial():
        parts["trial"] = trial.tag
    if chosen:
        parts["chosen"] = sorted((m, d, str(s), h) for m, c in chosen.items() for (d, s), h in c.items())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Task:
    """One cell to compute (picklable: it travels to pool and Ray workers)."""
    params: Params
    paths: Paths
    method: str
    domain: str
    sparsity: float | None
    key: str
    trial: Trial = Trial()
    chosen: tuple = ()  # upstream methods' chosen grid points, as (method, ((domain, sparsity), point)...)
    batch: str = ""  # the batch it trains in, stacked with the batch's other cells (compute_batch); "": alone

    @property
    def batched(self) -> bool:
        return bool(self.batch)

    @property
    def name(self) -> str:
        return cell_name(self.domain, self.sparsity, self.trial.tag)

    @property
    def stored(self) -> Path:
        return self.paths.cell_store(self.method) / f"{self.name}-{self.key}"


def _open(task: Task) -> tuple[Cell, Path]:
    """The cell's temporary folder (stale ones of dead workers removed) and its ``Cell`` paths in it."""
    final = task.paths.cell(task.method, task.domain, task.sparsity, task.trial.tag)
    tmp = task.stored.with_name(f".tmp-{task.stored.name}-{os.getpid()}")
    for stale in task.stored.parent.glob(f".tmp-{task.stored.name}-*"):  # left by a killed worker
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return Cell(tmp, final.name, final.checkpoints), tmp


def _tag(tracker: Tracker, task: Task, rt: dict, batch: int = 1) -> Tracker:
    tracker.set_tags({**rt, "method": task.method, "domain": task.domain, "sparsity": str(task.sparsity),
                      "seed": str(task.trial.seed), "grid_point": str(task.trial.point), "cell_key": task.key,
                      "stacked_cells": str(batch)})
    return tracker


def _tracker(task: Task, out: Cell) -> Tracker:
    return Tracker(task.params, task.paths, "adapt", f"{task.method} {out.name}", closes_parent=False)


def _context(task: Task, device, out: Cell):
    from .methods import Context
    return Context(task.params, task.paths, device, checkpoints=out.checkpoints, trial=task.trial,
                   chosen={m: dict(c) for m, c in task.chosen})


def _close(task: Task, out: Cell, tmp: Path, result: dict, tracker: Tracker, drop_checkpoints: bool = True) -> dict:
    """Check and write the cell's result, then rename its folder into the store (atomic); then drop its epoch
    checkpoints (``drop_checkpoints`` False: the caller does, once every cell of its batch is stored)."""
    from .methods import CELL_KEYS
    assert tuple(result) == CELL_KEYS, f"{task.method}.adapt returned keys {tuple(result)}, expected {CELL_KEYS}"
    assert "val_psnr" in result["details"], f"{task.method}.adapt: details lack val_psnr (pipeline/selection.py)"
    tracker.log_metrics({k: v for k, v in result.items() if k in ("domain_psnr", "memory_bytes", "memory_cost_pct")})
    tracker.log_metrics({k: v for k, v in result["details"].items() if isinstance(v, (int, float))})
    # No run id, commit or seconds here (the seconds are in MLflow): a cell's file is a pure function of
    # its key, byte-identical across equal runs, so DVC's hash of the adapt folder is too.
    write_json(out.metrics, {**result, "details": {k: v for k, v in result["details"].items()
                                                   if k not in TIMING_KEYS}})
    try:
        os.rename(tmp, task.stored)  # complete: visible to readers only now
    except OSError:  # the same cell finished by another worker meanwhile: keep the first copy
        shutil.rmtree(tmp, ignore_errors=True)
    if drop_checkpoints:
        shutil.rmtree(out.checkpoints, ignore_errors=True)  # the cell is complete: its checkpoints have served
    print(f"adapt {task.method} {out.name}: domain PSNR {result['domain_psnr']:.2f} dB, "
          f"memory {result['memory_cost_pct']:.3f} %", flush=True)
    return result


def _stored(task: Task) -> dict:
    return json.loads((task.stored / f"{task.name}.json").read_text())


def compute(task: Task) -> dict:
    """Compute one cell into a temporary folder, then rename it into the cell store (atomic)."""
    import torch

    from .train import setup_runtime
    if task.stored.is_dir():  # another worker finished it first
        return _stored(task)
    if task.batched:
        raise ValueError(f"compute: {task.method} {task.name} trains in batch {task.batch}: compute_batch with every "
                         "cell of it (cells.batches)")
    out, tmp = _open(task)
    rt = setup_runtime(task.params)
    ctx = _context(task, rt.pop("device_obj"), out)
    torch.manual_seed(task.params.adapt.seed)
    with _tracker(task, out) as tracker:
        _tag(tracker, task, rt)
        result = method_module(task.method).adapt(ctx, task.domain, task.sparsity, out, tracker)
        return _close(task, out, tmp, result, tracker)


def compute_batch(tasks: list[Task]) -> list[dict]:
    """Compute the cells of one planned batch at once: ``module.adapt_cells`` with every training in one
    stacked step of the batch's K cells (``pipeline.batched.fit_cells``); each cell in its own temporary
    folder, renamed into the store when complete, as ``compute`` does. A stacked step of another K rounds
    otherwise, so while any cell of the batch is missing, every cell of it trains again (a stored one keeps
    its first copy): a cell's bytes are a function of its key. The batch's epoch checkpoints are dropped
    once all its cells are stored, so a run killed while they were being stored resumes at their last epoch."""
    import contextlib

    import torch

    from .train import setup_runtime
    fit_cells = _stacking().fit_cells
    if len({(t.method, t.batch) for t in tasks}) != 1 or not tasks[0].batched:
        raise ValueError("compute_batch: the cells of one planned batch (Task.batch)")
    if all(t.stored.is_dir() for t in tasks):
        return [_stored(t) for t in tasks]
    module = method_module(tasks[0].method)
    rt = setup_runtime(tasks[0].params)
    device = rt.pop("device_obj")
    opened = [_open(t) for t in tasks]
    ctxs = [_context(t, device, out) for t, (out, _) in zip(tasks, opened)]
    torch.manual_seed(tasks[0].params.adapt.seed)
    with contextlib.ExitStack() as stack:
        trackers = [_tag(stack.enter_context(_tracker(t, out)), t, rt, len(tasks)) for t, (out, _) in zip(tasks, opened)]
        results = module.adapt_cells(ctxs, [t.domain for t in tasks], [t.sparsity for t in tasks],
                                     [out for out, _ in opened], trackers, fit_all=fit_cells)
        for t, (out, tmp), result, tracker in zip(tasks, opened, results, trackers, strict=True):
            _close(t, out, tmp, result, tracker, drop_checkpoints=False)  # a stored cell keeps its first copy
    for out, _ in opened:
        shutil.rmtree(out.checkpoints, ignore_errors=True)
    return [_stored(t) for t in tasks]


def batches(tasks: list[Task]) -> list[list[Task]]:
    """The tasks as the executor's items: the cells of one planned batch together (one ``compute_batch``),
    every other cell alone (``compute``)."""
    alone = [[t] for t in tasks if not t.batched]
    grouped: dict[tuple[str, str], list[Task]] = {}
    for t in tasks:
        if t.batched:
            grouped.setdefault((t.method, t.batch), []).append(t)
    return alone + list(grouped.values())


def compute_all(run_ex, tasks: list[Task]) -> int:
    """Compute the tasks not yet stored through the executor ``run_ex`` (a batch with any cell missing: whole,
    ``compute_batch``); returns how many cells were missing."""
    todo = [b for b in batches(tasks) if not all(t.stored.is_dir() for t in b)]
    missing = sum(not t.stored.is_dir() for b in todo for t in b)
    run_ex.map(compute_items, todo)
    return missing


def compute_items(item: list[Task]) -> list[dict]:
    """One executor item: a batch of one batched method's cells, or one cell."""
    return compute_batch(item) if item[0].batched else [compute(item[0])]


def batch_size(params: Params, module) -> int:
    """How many of the method's cells train in one stacked step (``execute.batch``); 0: one at a time. Never
    for a method without ``adapt_cells``; ``always``; ``auto``: where ``pipeline.batched.use_batched`` says it
    pays on the device the cells train on (``train.device``), at their torch threads, for K = the cells of the
    method's grid. At most ``batched.MAX_CELLS`` (CUDA) or ``batched.CPU_MAX_CELLS`` a step."""
    if not hasattr(module, "adapt_cells") or params.execute.batch == "never":
        return 0
    import torch

    from . import executors
    stacking = _stacking()
    device = "cuda" if params.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    k = len(cell_grid(params, module)) * scoring_seeds(params, module.NAME) * len(grid_points(params, module.NAME))
    if params.execute.batch == "auto" and not stacking.use_batched(device, k, executors.cell_threads(params.train.threads)):
        return 0
    return stacking.MAX_CELLS if device == "cuda" else stacking.CPU_MAX_CELLS


STACKING = "pipeline.batched"


def _stacking():
    """``pipeline.batched``, imported by name: the cells of the one-at-a-time path do not run it, so it is not
    in their code digest (``pipeline.sources`` does not follow a name); a batched cell's key holds its digest."""
    import importlib
    return importlib.import_module(STACKING)


def executor(params: Params, paths: Paths):
    from . import executors
    env = {"ZFDA_EXECUTION": execution_key(), "MLFLOW_TRACKING_URI": tracking_uri(paths),
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    e = params.execute
    return executors.make(e.executor, threads=executors.cell_threads(params.train.threads), workers=e.workers,
                          gpus_per_cell=e.gpus_per_cell, env=env)


def check_grid(params: Params, module) -> None:
    """A grid key outside the method's PARAMS would not reach its cells' keys: refuse it."""
    for key in params.search.get(module.NAME, {}):
        if not any(key == p or key.startswith(p + ".") for p in module.PARAMS):
            raise ConfigError(f"search.{module.NAME}.{key}: not among the method's params {list(module.PARAMS)}")


def plan(params: Params, paths: Paths, module, extended: list[dict] = (),
         replicas: dict[tuple[str, float | None], int] | None = None) -> list[Task]:
    """Every cell of the method: domain x sparsity x trial (seed x grid point), with its content key, then
    the ``extended`` points' cells (``{"setting", "cells"}``, numbered after the grid's; only their cells).
    The grid's and the extension's points train the scoring seeds (``selection.scoring_seeds``: every seed
    by default); with ``replicas`` ((domain, sparsity) -> the chosen point) the other seeds train at the
    chosen point too. Upstream methods (``NEEDS``) must be assembled first: their choices and files enter
    the keys."""
    check_grid(params, module)
    chosen = tuple((m, tuple(sorted(choose(params, paths, m, method_module(m)).items(), key=str)))
                   for m in getattr(module, "NEEDS", ()))
    common = {"code": code_digest(module.NAME), "inputs": input_digests(paths, module)}
    every = cell_grid(params, module)
    points = [(p, every) for p in grid_points(params, module.NAME)]
    points += [(e["setting"], [tuple(c) for c in e["cells"]]) for e in extended]
    scoring, tasks = scoring_seeds(params, module.NAME), []
    size = batch_size(params, module)

    def segment(name: str, parts: list[tuple[int, range, list]]) -> None:
        """Tasks planned together: on the batched path cut, in this order, into batches of ``size``; a cell's
        key holds its batch's K (a stacked step's rounding depends on K), so a segment's batches must not
        change when later segments (the extension's points, the replicas) are added."""
        coords = [(h, seed, d, s) for h, seeds, cells in parts for seed in seeds for d, s in cells]
        for i, (h, seed, d, s) in enumerate(coords):
            trial = Trial(seed, h)
            tp = trial_params(params, points[h][0], seed)
            kp = key_params(tp, module)
            batch, k = ((f"{name}/{i // size}", min(size, len(coords) - i // size * size)) if size else ("", 0))
            stacked = {"path": "batched", "batch": k, "stacking": sources.digest(STACKING)} if k else {}
            key = cell_key(module, d, s, {**common, **stacked}, kp, trial,
                           {m: dict(c) for m, c in chosen})
            tasks.append(Task(tp, paths, module.NAME, d, s, key, trial, chosen, batch))

    n_grid = len(grid_points(params, module.NAME))
    segment("grid", [(h, range(scoring), cells) for h, (_, cells) in enumerate(points[:n_grid])])
    for h in range(n_grid, len(points)):
        segment(f"extend{h}", [(h, range(scoring), points[h][1])])
    segment("replicas", [(h, range(scoring, params.adapt.seeds), [(d, s)])
                         for (d, s), h in sorted((replicas or {}).items(), key=str)])
    return tasks


def replicas_needed(params: Params, method: str) -> bool:
    """Whether the method's other seeds wait for its choice (``search.seeds`` below ``adapt.seeds``)."""
    return scoring_seeds(params, method) < params.adapt.seeds


def scores(tasks: list[Task]) -> dict[tuple[str, float | None], dict[int, float]]:
    """(domain, sparsity) -> grid point -> mean validation PSNR over the scoring seeds, from the computed
    cells."""
    vals: dict = {}
    for t in sorted(tasks, key=lambda t: t.trial.seed):
        if t.trial.seed >= scoring_seeds(t.params, t.method):
            continue  # a replicate at the chosen point: it does not score the point
        result = json.loads((t.stored / f"{t.name}.json").read_text())
        vals.setdefault((t.domain, t.sparsity), {}).setdefault(t.trial.point, []).append(result["details"]["val_psnr"])
    return {cell: {h: statistics.fmean(v) for h, v in sorted(by.items())} for cell, by in vals.items()}


def assemble(paths: Paths, method: str, tasks: list[Task]) -> None:
    """``build/<run>/adapt/<method>/``: exactly the files of ``tasks``' cells, copied from the store."""
    folder = paths.adapt(method)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for t in tasks:
        for f in sorted(t.stored.iterdir()):
            shutil.copy2(f, folder / f.name)
