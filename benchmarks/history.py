"""The last real quick-profile execution, read from MLflow, against the stage cells DVC lists.

Runs come from ``MlflowClient.search_runs`` (the Tracker's layout: one parent run per execution,
one child run per stage cell, named ``stage`` or ``stage[cell]``); the cells a full quick run has
come from DVC itself (``dvc.yaml`` with the quick profile's params, matrix stages expanded by DVC).
"""
from __future__ import annotations

import logging
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from pipeline import profile
from pipeline.tracking import EXPERIMENT, TAG_EXECUTION

from .report import QUICK_GOAL_S, Row, judge, table

OVERHEAD_GOAL = 1.15  # start-up, I/O, tracking and re-computation outside the loops: at most 15 % of the wall time


def _read_runs(db: Path) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    """Every active run of the experiment in the SQLite store ``db``: (times, status, name), tags."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs: dict[str, dict] = {}
    tags: dict[str, dict[str, str]] = {}
    token = None
    while exp is not None:
        page = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token)
        for r in page:
            runs[r.info.run_id] = {"name": r.info.run_name, "status": r.info.status, "start": r.info.start_time,
                                   "end": r.info.end_time, "metrics": dict(r.data.metrics)}
            tags[r.info.run_id] = dict(r.data.tags)
        token = page.token
        if not token:
            break
    return runs, tags


def dvc_stages(raw: dict, dvc_yaml: Path) -> list[tuple[str, str]]:
    """(name, cmd) of every stage DVC derives from ``dvc_yaml`` with params ``raw`` (matrix cells as
    ``stage@a-b``), read through DVC's Python API in a throw-away DVC project."""
    from dvc.repo import Repo
    log = logging.getLogger("dvc")
    level = log.level
    with tempfile.TemporaryDirectory(prefix="zfda-stages-") as tmp:
        shutil.copy(dvc_yaml, Path(tmp) / "dvc.yaml")
        profile.write(raw, Path(tmp) / "params.yaml")
        log.setLevel(logging.WARNING)  # Repo.init logs "Initialized DVC repository."
        try:
            with Repo.init(tmp, no_scm=True) as repo:
                return [(stage.name, stage.cmd) for stage in repo.index.stages]
        finally:
            log.setLevel(level)


def expected_cells(raw: dict, dvc_yaml: Path) -> tuple[list[str], list[str]]:
    """(tracked, untracked): the MLflow child-run names the pipeline's stages have for params ``raw``
    (DVC's ``stage@cell`` as the Tracker's ``stage[cell]``), and the stages whose module never opens
    a ``Tracker`` (no MLflow run to read; every stage module opens its own, no stage imports another)."""
    tracked, untracked = [], []
    for name, cmd in dvc_stages(raw, dvc_yaml):
        stage, _, cell = name.partition("@")
        module = re.search(r"-m\s+([\w.]+)", cmd or "")
        src = dvc_yaml.parent / (module.group(1).replace(".", "/") + ".py") if module else None
        if src is not None and src.is_file() and "Tracker(" not in src.read_text():
            untracked += [stage] if stage not in untracked else []
        else:
            tracked.append(f"{stage}[{cell}]" if cell else stage)
    return tracked, untracked


def mlflow_quick_history(db: Path, expected: Sequence[str] | None = None,
                         now_ms: float | None = None) -> dict | None:
    """The latest pipeline execution of the quick profile in ``db`` (parent run + stage child runs)
    and a composite estimate of a full run: each expected stage cell's latest finished duration,
    plus the latest execution's median gap between consecutive stages (process start, DVC)."""
    if not db.is_file():
        return None
    runs, tags = _read_runs(db)
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    children: dict[str, list[str]] = {}
    for rid, t in tags.items():
        if "mlflow.parentRunId" in t and t.get("stage", "") not in ("", "benchmark"):
            children.setdefault(t["mlflow.parentRunId"], []).append(rid)
    parents = [p for p in children if p in runs and tags.get(p, {}).get("profile") == "quick"]
    if not parents:
        return None
    latest = max(parents, key=lambda p: runs[p]["start"] or 0)
    source = tags[latest].get("data.source", "?")

    def dur(rid):
        r = runs[rid]
        return ((r["end"] if r["end"] else now_ms) - r["start"]) / 1000

    def ordered(p):
        return sorted(children[p], key=lambda k: runs[k]["start"])

    def processes(p):
        """The stage-process runs of execution ``p``: a cell's run inside its stage's run (one process
        per method) is not a process of its own, so no gap is measured before or after it."""
        def inside(k, j):
            a, b = runs[k], runs[j]
            return j != k and b["start"] <= a["start"] and a["end"] and b["end"] and a["end"] <= b["end"]
        return [k for k in ordered(p) if not any(inside(k, j) for j in children[p])]

    kids = ordered(latest)
    stages = [{"name": runs[k]["name"], "status": runs[k]["status"], "seconds": dur(k),
               "offset": (runs[k]["start"] - runs[kids[0]]["start"]) / 1000} for k in kids]
    # gaps between consecutive stage runs of one execution (process start, imports, DVC), all executions
    gaps = [(runs[b]["start"] - runs[a]["end"]) / 1000 for p in parents for a, b in zip(processes(p), processes(p)[1:])
            if runs[a]["end"] and runs[b]["start"] >= runs[a]["end"]]
    span = (max((runs[k]["end"] or now_ms) for k in kids) - runs[kids[0]]["start"]) / 1000
    # the time inside the training and evaluation loops, over the stage processes' runs (a cell's run in its
    # stage's process is inside its stage's: counted once); None where a stage logged none (older runs)
    procs = processes(latest)
    loop_keys = ("loop_train_seconds", "loop_evaluate_seconds")
    logged = all(k in runs[p]["metrics"] for p in procs for k in loop_keys)
    loops = {k: sum(runs[p]["metrics"][k] for p in procs) for k in loop_keys} if logged and procs else None
    # composite over every quick execution of the same data source
    best: dict[str, tuple[int, float]] = {}
    for p in parents:
        if tags[p].get("data.source") != source:
            continue
        for k in children[p]:
            r = runs[k]
            if r["status"] == "FINISHED" and r["end"] and r["start"] > best.get(r["name"], (-1, 0))[0]:
                best[r["name"]] = (r["start"], dur(k))
    wanted = list(expected) if expected else sorted(best)
    found = [n for n in wanted if n in best]
    gap = statistics.median(gaps) if gaps else 0.0
    composite = sum(best[n][1] for n in found) + gap * len(found)
    return {"execution": tags[latest].get(TAG_EXECUTION, latest), "parent_status": runs[latest]["status"],
            "data_source": source, "stages": stages, "span_s": span, "median_gap_s": gap, "loops_s": loops,
            "composite_s": composite, "expected": len(wanted), "found": len(found),
            "missing": [n for n in wanted if n not in best]}


def rows_history(h: dict | None, db: Path) -> tuple[list[Row], str]:
    if h is None:
        return [Row("Quick pipeline wall time from mlflow.db", f"no quick-profile execution in {db}", status="SKIP")], ""
    done = all(s["status"] == "FINISHED" for s in h["stages"])
    complete = done and h["parent_status"] == "FINISHED" and not h["missing"]
    n = len(h["stages"])
    rows = [Row(f"Quick pipeline ({h['data_source']}), latest execution {h['execution']}: {n} stage runs, "
                f"{'finished' if done else 'still running'}",
                f"{h['span_s']:.0f} s first stage start → last stage end"
                + ("" if complete else " (partial: DVC re-ran only changed stages)"),
                f"≤ {QUICK_GOAL_S:g} s", f"{h['span_s'] / QUICK_GOAL_S:.3f} of goal",
                judge(h["span_s"], "<=", QUICK_GOAL_S) if complete else "INFO", {"quick_latest_span_s": h["span_s"]})]
    miss = h["missing"]
    rows.append(Row(f"Quick pipeline ({h['data_source']}), composite: latest finished run of each stage cell "
                    f"+ {h['median_gap_s']:.1f} s median inter-stage gap",
                    f"{h['composite_s']:.0f} s over {h['found']}/{h['expected']} stage cells"
                    + (f"; no finished run yet: {', '.join(miss[:6])}{' …' if len(miss) > 6 else ''}" if miss else "")
                    + (f"; not tracked by design (excluded): {', '.join(h['untracked'])}" if h.get("untracked") else ""),
                    f"≤ {QUICK_GOAL_S:g} s", f"{h['composite_s'] / QUICK_GOAL_S:.3f} of goal",
                    judge(h["composite_s"], "<=", QUICK_GOAL_S) if not miss else "INFO",
                    {"quick_composite_s": h["composite_s"]}))
    loops = h.get("loops_s")
    if loops is None:
        rows.append(Row("Quick pipeline overhead ratio: wall time / time inside the training and evaluation loops",
                        "not logged by the stages of this execution", f"≤ {OVERHEAD_GOAL:g}", "—", "SKIP"))
    else:
        inside = sum(loops.values())
        ratio = h["span_s"] / inside if inside else float("inf")
        rows.append(Row(f"Quick pipeline overhead ratio ({h['data_source']}): first stage start → last stage end / "
                        "time inside the training and evaluation loops (start-up, I/O, tracking and the rest outside)",
                        f"{h['span_s']:.0f} s / {inside:.0f} s (training {loops['loop_train_seconds']:.0f} s, evaluation "
                        f"{loops['loop_evaluate_seconds']:.0f} s) = {ratio:.2f}"
                        + ("" if complete else " (partial execution)"), f"≤ {OVERHEAD_GOAL:g}",
                        f"{ratio / OVERHEAD_GOAL:.3f} of goal", judge(ratio, "<=", OVERHEAD_GOAL) if complete else "INFO",
                        {"quick_overhead_ratio": ratio, "quick_loop_seconds": inside}))
    columns = ["Stage", "Start offset (s)", "Duration (s)", "Status"]
    lines = [f"### Latest quick-profile execution in mlflow.db ({h['execution']}, parent {h['parent_status']})", "",
             table(columns, [(s["name"], f"{s['offset']:.0f}", f"{s['seconds']:.1f}", s["status"]) for s in h["stages"]],
                   right=columns[1:3]),
             "", "Durations are the stage's MLflow child run (from the Tracker's start, after the process's "
              "imports and data loading, to its end); the inter-stage gap covers process start and DVC."]
    return rows, "\n".join(lines)


def quick_history(db: Path, dvc_yaml: Path) -> tuple[list[Row], str]:
    """Rows and section of the latest quick execution in ``db``, judged against the quick profile's
    stage cells of ``dvc_yaml`` (when there is one)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError
    cells, untracked = expected_cells(profile.render("quick"), dvc_yaml) if dvc_yaml.is_file() else (None, [])
    try:
        h = mlflow_quick_history(db, cells)
    except (MlflowException, SQLAlchemyError, KeyError, OSError) as err:
        h = None
        print(f"{db} unreadable ({type(err).__name__}: {err})", file=sys.stderr)
    if h is not None:
        h["untracked"] = untracked
    return rows_history(h, db)
