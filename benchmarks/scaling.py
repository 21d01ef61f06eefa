"""``--scaling``: ``dvc repro`` from clean of the tiny config at several pipeline sizes, and a fit
of how the wall time grows with domains and sparsities."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from pipeline import config, profile

from .report import QUICK_GOAL_S, Row, judge, slug, table

SCALING_SIZES = ((2, 1), (2, 2), (4, 2), (4, 4))
_STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def stage_durations(events: Sequence[tuple[float, str]], end: float) -> dict[str, float]:
    """Per-stage seconds from timestamped ``dvc repro`` output lines: from a stage's 'Running stage'
    line to the next one (or the end), i.e. the stage's command plus DVC's bookkeeping of its outputs."""
    starts = [(t, m.group(1)) for t, line in events if (m := _STAGE_LINE.search(line))]
    return {name: (starts[i + 1][0] if i + 1 < len(starts) else end) - t for i, (t, name) in enumerate(starts)}


def least_squares(sizes: Sequence[tuple[int, int]], totals: Sequence[float]) -> tuple[float, float, float]:
    """total ≈ a + b·(domains·sparsities) + c·domains (ordinary least squares)."""
    import numpy as np
    X = np.array([[1.0, d * s, d] for d, s in sizes])
    coef, *_ = np.linalg.lstsq(X, np.asarray(totals, dtype=float), rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def _ignore(src_root: Path):
    top = {"build", ".checkpoints", "mlflow.db", "mlartifacts", "mlruns", "reports", "data", ".git", ".benchmarks",
           ".pytest_cache", "dvc.lock"}

    def ignore(d, names):
        d = Path(d)
        skip = {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith((".tmp", ".pyc"))}
        if d == src_root:
            skip |= {n for n in names if n in top or n.startswith("mlflow.db")}
        if d == src_root / ".dvc":
            skip |= {n for n in names if n in ("cache", "tmp")}
        return skip
    return ignore


def scaling_params(d: int, s: int) -> dict:
    """The quick profile (builtin source) shrunk by ``profiles/tiny.yaml``, with d domains and s
    sparsity ratios."""
    raw = profile.shrink(profile.render("quick", "builtin"))
    quick_domains = list(raw["domains"]["names"])
    keep = [x for x in (raw.get("ablate", {}).get("domains") or []) if x in quick_domains][:1]
    names = (keep + [x for x in quick_domains if x not in keep])[:d]
    raw["domains"]["names"] = [x for x in quick_domains if x in names]
    raw["adapt"]["sparsities"] = list(raw["adapt"]["sparsities"])[:s]
    if "ablate" in raw and "domains" in raw["ablate"]:
        raw["ablate"]["domains"] = [x for x in raw["ablate"]["domains"] if x in names] or names[:1]
    config.parse(raw)
    return raw


def _mlflow_template(path: Path) -> None:
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()


def run_scaling(sizes: Sequence[tuple[int, int]], work: Path, src: Path, *, timeout: float = 1800) -> list[dict]:
    """``dvc repro --no-run-cache`` from clean per size, each in a fresh copy of the working tree
    ``src`` (uncommitted files included; build/, reports/, mlflow.db, DVC cache left out), committed
    to a throw-away git repository; MLflow goes to a sqlite db in that copy."""
    template = work / "mlflow-template.db"
    _mlflow_template(template)
    results = []
    for d, s in sizes:
        root = work / f"repo-{d}x{s}"
        shutil.copytree(src, root, ignore=_ignore(src))
        raw = scaling_params(d, s)
        profile.write(raw, root / "params.yaml")
        git = ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost", "-c", "commit.gpgsign=false"]
        subprocess.run(git + ["init", "-q"], cwd=root, check=True)
        subprocess.run(git + ["add", "-A"], cwd=root, check=True)
        subprocess.run(git + ["commit", "-q", "-m", "benchmark snapshot"], cwd=root, check=True)
        shutil.copy(template, root / "mlflow.db")
        env = {**os.environ, "ZFDA_EXECUTION": f"benchmark-scaling-{d}x{s}-{os.getpid()}",
               "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PYTHONUNBUFFERED": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        print(f"scaling: dvc repro from clean, {d} domains x {s} sparsities in {root}", flush=True)
        events: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--no-run-cache"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        deadline = t0 + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            events.append((time.perf_counter() - t0, line.rstrip()))
            if _STAGE_LINE.search(line):
                print(f"  {events[-1][0]:7.1f} s  {line.strip()}", flush=True)
            if time.perf_counter() > deadline:
                proc.kill()
                break
        rc = proc.wait()
        total = time.perf_counter() - t0
        per = stage_durations(events, total)
        first = next((t for t, line in events if _STAGE_LINE.search(line)), total)
        results.append({"domains": d, "sparsities": s, "rc": rc, "total_s": total, "startup_s": first,
                        "stages": per, "tail": [line for _, line in events[-8:]] if rc else []})
        print(f"  total {total:.1f} s, exit code {rc}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
    return results


def rows_scaling(results: Sequence[dict]) -> tuple[list[Row], str]:
    rows: list[Row] = []
    ok = [r for r in results if r["rc"] == 0]
    for r in results:
        tag = f"{r['domains']}×{r['sparsities']}"
        rows.append(Row(f"dvc repro from clean, tiny config, {tag} (domains × sparsities)",
                        f"{r['total_s']:.1f} s, {len(r['stages'])} stages" + ("" if r["rc"] == 0 else
                                                                               f"; FAILED exit {r['rc']}"),
                        status="INFO" if r["rc"] == 0 else "FAIL",
                        metrics={slug(f"scaling_total_s_{r['domains']}x{r['sparsities']}"): r["total_s"]}))
    quick = profile.render("quick")
    qd, qs = len(quick["domains"]["names"]), len(quick["adapt"]["sparsities"])
    if len({(r["domains"], r["sparsities"]) for r in ok}) >= 3:
        a, b, c = least_squares([(r["domains"], r["sparsities"]) for r in ok], [r["total_s"] for r in ok])
        pred = a + b * qd * qs + c * qd
        rows.append(Row("Scaling fit: total ≈ a + b·(domains·sparsities) + c·domains (tiny config)",
                        f"a = {a:.1f} s, b = {b:.2f} s per SAM cell, c = {c:.2f} s per domain", status="INFO",
                        metrics={"scaling_fit_a": a, "scaling_fit_b": b, "scaling_fit_c": c}))
        rows.append(Row(f"Scaling fit prediction at the quick profile's {qd}×{qs} (tiny config: the pipeline's "
                        f"fixed-cost floor)", f"{pred:.0f} s", f"≤ {QUICK_GOAL_S:g} s", f"{pred / QUICK_GOAL_S:.3f} of goal",
                        judge(pred, "<=", QUICK_GOAL_S), {"scaling_prediction_quick_s": pred}))
    else:
        rows.append(Row("Scaling fit", "fewer than 3 successful sizes", status="FAIL"))
    families = sorted({n.split("@")[0] for r in results for n in r["stages"]})
    sizes = [f"{r['domains']}×{r['sparsities']}" for r in results]

    def family(fam: str, r: dict) -> str:
        if fam == "(dvc start)":
            return f"{r['startup_s']:.1f}"
        ts = [v for n, v in r["stages"].items() if n.split("@")[0] == fam]
        return f"{sum(ts):.1f} [{len(ts)}]" if ts else "—"

    body = [[fam] + [family(fam, r) for r in results] for fam in ["(dvc start)"] + families]
    body.append(["**total**"] + [f"**{r['total_s']:.1f}**" for r in results])
    lines = ["### dvc repro per stage family, tiny config (seconds; matrix stages summed, count in brackets)", "",
             table(["Stage"] + sizes, body, right=sizes)]
    for r in results:
        if r["rc"]:
            lines += ["", f"{r['domains']}×{r['sparsities']} failed; last output:", "```", *r["tail"], "```"]
    return rows, "\n".join(lines)
