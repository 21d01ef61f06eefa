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

    @property
    def name(self) -> str:
        return cell_name(self.domain, self.sparsity, self.trial.tag)

    @property
    def stored(self) -> Path:
        return self.paths.cell_store(self.method) / f"{self.name}-{self.key}"


def compute(task: Task) -> dict:
    """Compute one cell into a temporary folder, then rename it into the cell store (atomic)."""
    import torch

    from .methods import CELL_KEYS, Context
    from .train import setup_runtime
    if task.stored.is_dir():  # another worker finished it first
        return json.loads((task.stored / f"{task.name}.json").read_text())
    params, paths, module = task.params, task.paths, method_module(task.method)
    final = paths.cell(task.method, task.domain, task.sparsity, task.trial.tag)
    tmp = task.stored.with_name(f".tmp-{task.stored.name}-{os.getpid()}")
    for stale in task.stored.parent.glob(f".tmp-{task.stored.name}-*"):  # left by a killed worker
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = Cell(tmp, final.name, final.checkpoints)
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"), checkpoints=out.checkpoints, trial=task.trial,
                  chosen={m: dict(c) for m, c in task.chosen})
    torch.manual_seed(params.adapt.seed)
    with Tracker(params, paths, "adapt", f"{task.method} {out.name}", closes_parent=False) as tracker:
        tracker.set_tags({**rt, "method": task.method, "domain": task.domain, "sparsity": str(task.sparsity),
                          "seed": str(task.trial.seed), "grid_point": str(task.trial.point), "cell_key": task.key})
        result = module.adapt(ctx, task.domain, task.sparsity, out, tracker)
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
    shutil.rmtree(out.checkpoints, ignore_errors=True)  # the cell is complete: its checkpoints have served
    print(f"adapt {task.method} {out.name}: domain PSNR {result['domain_psnr']:.2f} dB, "
          f"memory {result['memory_cost_pct']:.3f} %", flush=True)
    return result


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

    def add(h: int, seeds, cells) -> None:
        for seed in seeds:
            trial = Trial(seed, h)
            tp = trial_params(params, points[h][0], seed)
            kp = key_params(tp, module)
            for d, s in cells:
                key = cell_key(module, d, s, common, kp, trial, {m: dict(c) for m, c in chosen})
                tasks.append(Task(tp, paths, module.NAME, d, s, key, trial, chosen))

    for h, (_, cells) in enumerate(points):
        add(h, range(scoring), cells)
    for (d, s), h in sorted((replicas or {}).items(), key=str):
        add(h, range(scoring, params.adapt.seeds), [(d, s)])
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
