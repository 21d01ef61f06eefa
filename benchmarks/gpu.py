"""``python -m benchmarks.gpu``: the GPU checks, one script for the first CUDA machine.

1. The paper profile's pretraining for 2 epochs (its model, data sizes and ``train.precision``;
   builtin photos by default, since a GPU node may have no network; ``--source cifar100`` with a
   local copy), through the pipeline's own ``domains`` and ``pretrain`` stages in a work folder.
2. A sweep of 32 small adapt cells (sam, 4 domains × 8 sparsities, 2 epochs) on the pretrained
   model: Ray tasks with a fractional GPU each (``GPU_FRACTION``), on a local Ray or on the cluster
   of ``RAY_ADDRESS``; with ``--executor local`` or without Ray installed, the same cells one after
   another (the row says which).
3. The benchmark's GPU rows (``benchmarks.rows.gpu_rows``).
4. Batched cells (``pipeline.batched``): K cells in one stacked step against one ``fit`` after another,
   cells/s at K = 1, 4, 8, 16, 32 and the crossover (``benchmarks.batched.gpu_rows``).

The rows go into ``reports/benchmarks.md`` (``--out``) as one section naming the GPU, replaced on
the next run and leaving the CPU report around it untouched. Without CUDA it prints one line and
exits 0. ``--device cpu --tiny`` runs the same code on the CPU with tiny sizes (tests).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline import config, profile
from pipeline.config import Params
from pipeline.paths import REPO, Paths

from .report import Row, table
from .rows import gpu_rows
from .timing import FULL, QUICK

SWEEP_SPARSITIES = (0.0001, 0.0003, 0.001, 0.002, 0.003, 0.005, 0.01, 0.03)  # × 4 domains = 32 cells
GPU_FRACTION = 1 / 8  # Ray's share of one GPU per cell: 8 small cells at a time on each GPU
BEGIN, END = "<!-- benchmarks.gpu: begin -->", "<!-- benchmarks.gpu: end -->"


def sweep_params(source: str, device: str, tiny: bool, threads: int) -> dict:
    """The paper profile with 2 pretraining epochs and the sweep's adapt block (2 epochs, 8 sparsities)."""
    raw = profile.render("paper", source)
    if tiny:
        raw = profile.shrink(raw)
    raw["pretrain"]["epochs"] = 2
    raw["adapt"].update({"epochs": 1 if tiny else 2, "sparsities": list(SWEEP_SPARSITIES), "seeds": 1,
                         "freeze_epochs": 0})
    raw["ablate"]["studies"] = []  # the sweep runs the sam stage only
    raw["train"].update({"device": device, "threads": threads})
    config.parse(raw)
    return raw


def run_sweep(root: Path, raw: dict, n_cells: int, gpu_fraction: float, *, executor: str = "ray"
              ) -> tuple[list[dict], str]:
    """The sam adapt stage over ``n_cells`` cells (every domain x the first sparsities of SWEEP_SPARSITIES)
    through the pipeline's own executor: ``ray`` runs each cell as a Ray task holding ``gpu_fraction`` of a
    GPU (a local Ray, or ``RAY_ADDRESS``'s cluster; the stage's MLflow run exists before the workers
    start), ``local`` one after another in this process. Returns the cells' results and how they ran."""
    from pipeline.stages import adapt
    names = list(raw["domains"]["names"])
    names = names[:max(2, n_cells)] if n_cells < len(names) else names  # fewer cells than domains: fewer domains
    per_domain = max(1, n_cells // len(names))
    raw = {**raw, "domains": {**raw["domains"], "names": names},
           "ablate": {**raw["ablate"], "domains": [d for d in raw["ablate"]["domains"] if d in names] or names[:1]},
           "adapt": {**raw["adapt"], "sparsities": list(SWEEP_SPARSITIES[:per_domain])},
           "execute": {**raw["execute"], "executor": executor, "gpus_per_cell": gpu_fraction or 0.125}}
    profile.write(raw, root / "params.yaml")
    params = config.parse(raw)
    paths = Paths.of(params, root)
    start = time.perf_counter()
    adapt.main(params, paths, ["--method", "sam"])
    cells = [(d, g) for d in params.domains.names for g in params.adapt.sparsities]
    per_cell = (time.perf_counter() - start) / len(cells)  # cell files hold no clock readings: the stage's mean
    results = []
    for d, g in cells:
        out = json.loads(paths.cell("sam", d, g).metrics.read_text())
        results.append({"domain": d, "sparsity": g, "domain_psnr": out["domain_psnr"], "seconds": per_cell})
    if executor == "ray":
        import ray
        where = os.environ.get("RAY_ADDRESS") or "a local Ray"
        how = f"the pipeline's ray executor (Ray {ray.__version__} tasks on {where}, {gpu_fraction:g} GPU per cell)"
    else:
        how = "the pipeline's local executor (one after another in one process)"
    return results, how


def gpu_section(name: str, rows: list[Row], info: dict[str, str], notes: list[str]) -> str:
    lines = [BEGIN, f"## GPU: {name}", "", "Written by `python -m benchmarks.gpu`.", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += ["", table(["Measurement", "Measured", "Goal", "Ratio", "Status"],
                        [(r.name, r.measured, r.goal, r.ratio, r.status) for r in rows], right=["Ratio"])]
    lines += [x for n in notes for x in ("", n)]
    return "\n".join(lines + ["", END]) + "\n"


def upsert_section(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``section`` into the report at ``path``: in place of the previous section between the markers
    ``begin`` and ``end`` (the GPU section's by default), else at its end."""
    text = path.read_text() if path.is_file() else "# zfda-bench benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md")
    ap.add_argument("--work", type=Path, help="folder for the paper profile's run (default: a temporary one)")
    ap.add_argument("--source", choices=["builtin", "cifar100"], default="builtin")
    ap.add_argument("--cells", type=int, default=32, help="adapt cells of the sweep (at most 32)")
    ap.add_argument("--executor", choices=["ray", "local"], default="ray",
                    help="ray: one Ray task per cell with a fractional GPU; local: one after another here")
    ap.add_argument("--quick", action="store_true", help="the GPU rows with few repeats")
    ap.add_argument("--device", help=argparse.SUPPRESS)  # tests: the same code on another device
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: profiles/tiny.yaml's sizes
    args = ap.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print("benchmarks.gpu: skipped, no CUDA device here (torch.cuda.is_available() is False)")
        return 0
    device = args.device or "cuda"
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{device} (test run, no GPU)"
    start = time.perf_counter()
    os.environ.setdefault("ZFDA_EXECUTION", f"benchmarks-gpu-{int(time.time())}")
    cpus = max(1, (os.cpu_count() or 1) // round(1 / GPU_FRACTION))
    with tempfile.TemporaryDirectory(prefix="zfda-gpu-") as tmp:
        root = (args.work or Path(tmp) / "paper").resolve()  # absolute: Ray workers start elsewhere
        root.mkdir(parents=True, exist_ok=True)
        raw = sweep_params(args.source, device, args.tiny, cpus)
        profile.write(raw, root / "params.yaml")
        params = config.parse(raw)
        rows = pretrain_rows(params, Paths.of(params, root))
        t = time.perf_counter()
        fraction = GPU_FRACTION if device == "cuda" else 0.0  # the executor asks for GPUs only on CUDA
        results, how = run_sweep(root, raw, args.cells, fraction, executor=args.executor)
        rows.append(sweep_row(results, len(results), time.perf_counter() - t, how, params))
        here = config.parse(profile.shrink(profile.render("quick"))) if args.tiny else config.load(REPO / "params.yaml")
        s = QUICK if args.quick or args.tiny else FULL
        gpu, note = gpu_rows(here, s, Path(tmp), sorted({max(here.adapt.sparsities), min(here.adapt.sparsities)},
                                                        reverse=True), device=args.device)
        rows += gpu
        from .batched import gpu_rows as batched_rows  # benchmarks.batched imports upsert_section from here
        rows += batched_rows(torch.device(device), args.tiny, Path(tmp) / "batched")
    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "gpu": name,
            "cuda": str(torch.version.cuda), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": str(os.cpu_count()), "wall_time": f"{time.perf_counter() - start:.0f} s"}
    notes = [note, f"Pretraining and sweep: the paper profile (`profiles/paper.yaml`, source {args.source}) with "
             f"pretrain.epochs 2 and adapt.epochs {params.adapt.epochs}, through the pipeline's own stages in a work "
             f"folder (its mlflow.db there); the sweep's cells are sam at sparsities {list(SWEEP_SPARSITIES)} on every "
             "domain, timed from submission to the last result (worker start-up included)."]
    section = gpu_section(name, rows, info, notes)
    print(section, flush=True)
    upsert_section(args.out, section)
    print(f"written: {args.out}", flush=True)
    return 0


def pretrain_rows(params: Params, paths: Paths) -> list[Row]:
    """The domains stage (CPU work, timed apart), then the pretrain stage for 2 epochs."""
    from pipeline.stages import domains, pretrain
    t = time.perf_counter()
    domains.main(params, paths)
    data_s = time.perf_counter() - t
    t = time.perf_counter()
    pretrain.main(params, paths)
    wall = time.perf_counter() - t
    m = json.loads(paths.pretrain_json.read_text())
    n = params.data.n_pretrain * params.pretrain.epochs
    return [Row(f"GPU paper-profile pretraining, {params.pretrain.epochs} epochs × {params.data.n_pretrain} "
                f"{params.data.source} images (width {params.model.width}, batch {params.train.batch_size}, "
                f"{m['runtime']['precision']})",
                f"{m['images_per_second']:.0f} images/s in training ({m['train_seconds']:.1f} s, with the per-epoch "
                f"test evaluation); stage {wall:.1f} s; base test PSNR {m['psnr_base_test']:.2f} dB; "
                f"domains stage before it {data_s:.1f} s (CPU)",
                metrics={"gpu_paper_pretrain_images_per_s": m["images_per_second"],
                         "gpu_paper_pretrain_stage_s": wall, "gpu_paper_pretrain_images": float(n)})]


def sweep_row(results: list[dict], n: int, wall: float, how: str, params: Params) -> Row:
    name = (f"GPU sweep: {n} sam adapt cells ({len(params.domains.names)} domains × sparsities, "
            f"{params.adapt.epochs} epochs × {params.domains.n_train} images each)")
    if not results:
        return Row(name, f"no cell finished in {wall:.1f} s; {how}", status="FAIL", metrics={"gpu_sweep_cells": 0.0})
    psnr = [r["domain_psnr"] for r in results]
    cell_s = statistics.median(r["seconds"] for r in results)
    return Row(name, f"{wall:.1f} s wall, {len(results)}/{n} cells done, median cell {cell_s:.1f} s, "
                     f"{60 * len(results) / wall:.1f} cells/min; domain PSNR {min(psnr):.2f}–{max(psnr):.2f} dB; {how}",
               status="INFO" if len(results) == n else "FAIL",
               metrics={"gpu_sweep_wall_s": wall, "gpu_sweep_cells": float(len(results))})

if __name__ == "__main__":
    sys.exit(main())
