"""The executors side by side: one sweep of sam cells through ``local``, ``pool`` and ``ray``.

``python -m benchmarks.executors`` prepares one small project (the quick profile's domains and a
2-epoch pretraining, ``train.threads`` 1 so that every executor computes the same bits), then runs the
sam adapt stage over the same cells in a fresh copy of it for each executor, one after another:

- ``local``: one after another in this process (1 core);
- ``pool``: ``--workers`` processes on this machine;
- ``ray``: one Ray task per cell, on ``RAY_ADDRESS``'s cluster when set (as ``.ci/run`` starts one on
  127.0.0.1), else a local Ray started by the stage (its start-up is then in the wall time).

Each copy starts with an empty cell store, so every executor computes every cell. Reported: the stage's
wall time, the speed-up over local and whether the cells' safetensors bytes and metrics (less their wall
times) equal local's. The section goes into ``reports/benchmarks.md`` between its own markers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipeline import config, profile
from pipeline.paths import Paths

from .gpu import upsert_section
from .report import Row, table

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- benchmarks.executors: begin -->", "<!-- benchmarks.executors: end -->"
KINDS = ("local", "pool", "ray")


def sweep_raw(source: str, epochs: int, sparsities: list[float], tiny: bool = False) -> dict:
    raw = profile.render("quick", source)
    if tiny:
        raw = profile.shrink(raw)
    raw["pretrain"]["epochs"] = 2
    raw["adapt"].update({"epochs": epochs, "sparsities": sparsities, "seeds": 1, "freeze_epochs": 0})
    raw["ablate"]["studies"] = []
    raw["train"]["threads"] = 1  # the same kernels, hence the same bits, in every executor
    config.parse(raw)
    return raw


def prepare(root: Path, raw: dict) -> None:
    from pipeline.stages import domains, pretrain
    root.mkdir(parents=True, exist_ok=True)
    profile.write(raw, root / "params.yaml")
    params = config.parse(raw)
    paths = Paths.of(params, root)
    domains.main(params, paths)
    pretrain.main(params, paths)


def outputs(folder: Path) -> tuple[dict, dict]:
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}
    metrics = {}
    for p in sorted(folder.glob("*.json")):
        cell = json.loads(p.read_text())
        cell["details"] = {k: v for k, v in cell["details"].items() if k != "train_seconds"}
        metrics[p.name] = cell
    return files, metrics


def run_executor(base: Path, work: Path, raw: dict, kind: str, workers: int) -> tuple[float, dict, dict]:
    """The sam stage in a fresh copy of ``base`` (no computed cells) through ``kind``."""
    from pipeline.stages import adapt
    root = work / kind
    shutil.copytree(base, root, ignore=shutil.ignore_patterns(".cells", ".checkpoints"))
    raw = {**raw, "execute": {**raw["execute"], "executor": kind, "workers": workers if kind == "pool" else 0}}
    profile.write(raw, root / "params.yaml")
    params = config.parse(raw)
    paths = Paths.of(params, root)
    start = time.perf_counter()
    adapt.main(params, paths, ["--method", "sam"])
    wall = time.perf_counter() - start
    return (wall, *outputs(paths.adapt("sam")))


def section(rows: list[Row], info: dict[str, str]) -> str:
    lines = [BEGIN, "## Executors: local, pool and Ray on one sweep", "",
             "Written by `python -m benchmarks.executors` (module docstring: what runs).", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += ["", table(["Measurement", "Measured", "Goal", "Ratio", "Status"],
                        [(r.name, r.measured, r.goal, r.ratio, r.status) for r in rows], right=["Ratio"])]
    return "\n".join(lines + ["", END]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md")
    ap.add_argument("--source", choices=["builtin", "cifar100"], default="builtin")
    ap.add_argument("--epochs", type=int, default=2, help="adaptation epochs of each cell")
    ap.add_argument("--sparsities", default="0.001,0.01")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pool workers (and Ray CPUs)")
    ap.add_argument("--executors", default=",".join(KINDS))
    ap.add_argument("--work", type=Path, help="folder for the copies (default: a temporary one)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: profiles/tiny.yaml's sizes
    a = ap.parse_args(argv)
    kinds = [k for k in a.executors.split(",") if k]
    if kinds[0] != "local" or set(kinds) - set(KINDS):
        raise SystemExit(f"--executors: local first, then any of {KINDS}; got {a.executors!r}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("ZFDA_EXECUTION", f"benchmarks-executors-{int(time.time())}")
    raw = sweep_raw(a.source, a.epochs, [float(s) for s in a.sparsities.split(",")], a.tiny)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zfda-executors-") as tmp:
        work = (a.work or Path(tmp)).resolve()  # absolute: Ray workers start elsewhere
        base = work / "base"
        prepare(base, raw)
        runs = {kind: run_executor(base, work, raw, kind, a.workers) for kind in kinds}
    n_cells = len(runs["local"][1])
    local_wall, local_files, local_metrics = runs["local"]
    rows = []
    for kind, (wall, files, metrics) in runs.items():
        same = files == local_files and metrics == local_metrics
        if kind == "local":
            rows.append(Row(f"sam stage over {n_cells} cells, local (1 process, 1 thread)", f"{wall:.1f} s",
                            "—", "1.000", "INFO"))
            continue
        how = (f"{a.workers} worker processes" if kind == "pool" else
               f"Ray tasks on {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS")
               else "Ray tasks on a local Ray the stage starts (start-up included)")
        rows.append(Row(f"sam stage over {n_cells} cells, {kind} ({how}) / local: wall-time speed-up; same bytes",
                        f"{wall:.1f} s vs {local_wall:.1f} s; safetensors and metrics "
                        f"{'identical to local' if same else 'DIFFER from local'}",
                        "same bytes", f"{local_wall / wall:.2f}×", "PASS" if same else "FAIL"))
    import platform

    import torch
    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": str(os.cpu_count()),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "sweep": f"quick profile ({a.source}), sam at sparsities {a.sparsities} on every domain, "
                     f"{a.epochs} adaptation epochs, train.threads 1",
            "wall_time": f"{time.perf_counter() - started:.0f} s"}
    try:
        import ray
        info["ray"] = ray.__version__
    except ImportError:
        pass
    upsert_section(a.out, section(rows, info), BEGIN, END)
    for r in rows:
        print(f"{r.status:5} {r.name}: {r.measured} ({r.ratio})")
    return 0 if all(r.status != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
