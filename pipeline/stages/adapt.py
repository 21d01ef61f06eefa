"""Stage ``adapt``: every cell of every method in ``adapt.methods``, in one process.

``python -m pipeline.stages.adapt`` plans the cells of params.yaml wave by wave (a method runs in the
wave after its ``NEEDS``), computes the missing ones of each wave at once through the executor of
``execute.executor`` (local, pool, ray) and assembles ``build/<run>/adapt/<method>/`` (per cell: the
method's artefacts and ``<cell>.json``, keys CELL_KEYS; a method with ``adapt_cells`` trains its planned
batches K cells at a time, ``execute.batch``). Cells are content-keyed (``pipeline.cells``):
an unchanged cell is copied from the store, not recomputed. Then a wave's choices on an edge of their
grid are extended (``search.max_extend``, ``pipeline.selection``): the next step's cells are computed and
the choice made again, until every choice is interior or capped; with ``search.seeds`` below
``adapt.seeds`` the other seeds then train at each choice. The extended points go to the method's
``grid.json`` before the next wave plans. ``--method NAME`` (repeatable) runs only those methods (their
NEEDS must have run); DVC runs them all.
"""
from __future__ import annotations

import argparse
import shutil
import time
from typing import TYPE_CHECKING

from ..cells import assemble, compute_all, executor, method_module, plan, replicas_needed, scores
from ..methods import waves
from ..selection import extend, grid_points, picks, write_extended
from ..tracking import Tracker
from . import run

if TYPE_CHECKING:
    from ..config import Params
    from ..paths import Paths


def main(params: Params, paths: Paths, argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", action="append", help="only this method (repeatable); default: adapt.methods")
    only = ap.parse_args(argv).method
    start, cells, computed = time.perf_counter(), 0, 0
    with Tracker(params, paths, "adapt") as tracker:
        tracker.run_id  # the parent and this stage's run exist before any worker logs (no race on the store)
        run_ex = executor(params, paths)
        for wave in waves(params, only):
            extended, grow, done = {name: [] for name in wave}, True, 0
            while grow:  # the grid, then one step beyond each choice on an edge, until none is left
                tasks = {name: plan(params, paths, method_module(name), extended[name]) for name in wave}
                done += compute_all(run_ex, [t for ts in tasks.values() for t in ts])
                grown = {name: extend(params, name, extended[name], scores(ts)) for name, ts in tasks.items()}
                grow, extended = grown != extended, grown
            chosen = {name: picks(params, name, extended[name], scores(ts)) for name, ts in tasks.items()
                      if replicas_needed(params, name)}
            if chosen:  # search.seeds: the other seeds at each choice
                tasks.update({name: plan(params, paths, method_module(name), extended[name], c)
                              for name, c in chosen.items()})
                done += compute_all(run_ex, [t for name in chosen for t in tasks[name]])
            for name, ts in tasks.items():
                assemble(paths, name, ts)
                write_extended(paths, name, extended[name], len(grid_points(params, name)))
            n, more = sum(map(len, tasks.values())), sum(map(len, extended.values()))
            cells, computed = cells + n, computed + done
            print(f"adapt {', '.join(wave)}: {n} cells, {done} computed" + (f", {more} extended points" if more else "")
                  + f" ({run_ex.kind})", flush=True)
        tracker.log_metrics({"cells": cells, "cells_computed": computed, "seconds": time.perf_counter() - start})
        tracker.set_tags({"executor": run_ex.kind, "methods": ",".join(params.adapt.methods)})
    for stale in (p for p in paths.build.joinpath("adapt").iterdir() if not only and p.name not in params.adapt.methods):
        shutil.rmtree(stale)  # a method no longer listed leaves the stage's output
    print(f"adapt: {cells} cells, {computed} computed, {cells - computed} unchanged, "
          f"{time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    run(main)
