"""MLflow, in one place: a SQLite store at the repository root, one parent run per pipeline
execution, one child run per stage (or matrix cell).

A pipeline execution is identified by ``ZFDA_EXECUTION`` when set, else by the ``dvc`` process
that launched the stage (its pid and start time), else by the stage's own process. Tracking is
best effort: any MLflow failure (read-only or locked ``mlflow.db``...) is reported loudly on stderr
and tracking stops for that stage, but the stage still writes all its DVC outputs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .config import ROOT, Params, flat_params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network calls from this offline tool
os.environ.setdefault("DO_NOT_TRACK", "1")

EXPERIMENT = "zfda-bench"
TAG_EXECUTION = "zfda.execution"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def execution_key() -> str:
    """What the stages of one ``dvc repro`` have in common: the dvc process that runs them."""
    if os.environ.get("ZFDA_EXECUTION"):
        return os.environ["ZFDA_EXECUTION"]
    try:
        import psutil
        proc = psutil.Process().parent()
        while proc is not None:
            cmd = " ".join(proc.cmdline()[:3])
            if "dvc" in Path(proc.cmdline()[0]).name or " -m dvc" in cmd or "/dvc " in cmd + " ":
                return f"dvc-{proc.pid}-{int(proc.create_time())}"
            proc = proc.parent()
    except Exception:  # psutil missing or a process vanished: fall back to this process
        pass
    return f"process-{os.getpid()}-{int(time.time())}"


class Tracker:
    """Context manager for one stage cell's MLflow child run; every call is failure-tolerant."""

    def __init__(self, params: Params, stage: str, cell: str | None = None):
        self.params, self.stage, self.cell = params, stage, cell
        self.run_id: str | None = None
        self.enabled = True
        self._mlflow = None

    def _fail(self, err: Exception) -> None:
        if self.enabled:
            print(f"\n!!! MLflow TRACKING FAILED in stage {self.stage} ({type(err).__name__}: {err}); "
                  "the stage goes on and writes its outputs, but this run is NOT in mlflow.db !!!\n",
                  file=sys.stderr, flush=True)
        self.enabled = False

    def _call(self, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # tracking must never cost the pipeline its outputs
            self._fail(err)
            return None

    def _parent(self, client, experiment_id: str) -> str:
        key = execution_key()
        found = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_EXECUTION}` = '{key}'", max_results=1)
        if found:
            return found[0].info.run_id
        name = f"{self.params.run_name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        run = client.create_run(experiment_id, run_name=name, tags={
            TAG_EXECUTION: key, "profile": self.params.profile, "data.source": self.params.data.source,
            "git.commit": git_commit()})
        return run.info.run_id

    def _start(self) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient
        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri())
        client = MlflowClient()
        exp = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = exp.experiment_id if exp else client.create_experiment(
            EXPERIMENT, artifact_location=(ROOT / "mlartifacts").as_uri())
        parent = self._parent(client, experiment_id)
        name = self.stage if self.cell is None else f"{self.stage}[{self.cell}]"
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent, tags={
            "stage": self.stage, "cell": self.cell or "", "profile": self.params.profile,
            "data.source": self.params.data.source, "git.commit": git_commit()})
        self.run_id = run.info.run_id
        mlflow.log_params(flat_params(self.params))

    def __enter__(self) -> "Tracker":
        self._call(self._start)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is not None and self.run_id is not None:
            status = "FAILED" if exc_type else "FINISHED"
            self._call(self._mlflow.end_run, status)
            self._finish_parent(status)

    def log_params(self, values: dict) -> None:
        self._call(lambda: self._mlflow.log_params(values))

    def log_metrics(self, values: dict, step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self._call(lambda: self._mlflow.log_metrics(clean, step=step))

    def log_history(self, history: list[dict], prefix: str = "") -> None:
        """Per-epoch curves, after training: a resumed run logs the epochs from before the kill too."""
        for row in history:
            self.log_metrics({prefix + k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._call(lambda: self._mlflow.log_artifact(str(path), folder))

    def set_tags(self, tags: dict) -> None:
        self._call(lambda: self._mlflow.set_tags(tags))

    def _finish_parent(self, status: str) -> None:
        """Every stage closes the parent run as it ends, so the parent's end time and status are
        those of the execution's last stage so far (a later stage of the same execution reopens
        nothing: it only moves the end time on)."""
        def _end():
            client = self._mlflow.tracking.MlflowClient()
            parent = client.get_run(self.run_id).data.tags.get("mlflow.parentRunId")
            if parent:
                client.set_terminated(parent, status)
        self._call(_end)
