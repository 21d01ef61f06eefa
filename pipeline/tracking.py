"""MLflow, in one place: a SQLite store at the repository root, one parent run per pipeline
execution, one child run per stage (or matrix cell).

A pipeline execution is identified by ``ZFDA_EXECUTION`` when set, else by the ``dvc`` process
that launched the stage (its pid and start time), else by the stage's own process. Tracking is
best effort: any MLflow failure (read-only or locked ``mlflow.db``...) is reported loudly on stderr
and tracking stops for that stage, but the stage still writes all its DVC outputs. MLflow's
start-up and every write run on one background thread per stage, off the stage's critical path.

A run records its owner (pid, host and start time of the process that opened it; for the parent
run, of the ``dvc`` process). A killed process cannot close its run: the next ``Tracker`` of the same
stage and cell closes every RUNNING run of it whose owner is gone as KILLED, and tags its own run
``resumed_from`` with their ids (the parent likewise, once its ``dvc`` process is gone). A run whose
owner still lives (a parallel cell, another worker) or ran on another host is left alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import flat_params
from .paths import Paths

if TYPE_CHECKING:
    from .config import Params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network calls from this offline tool
os.environ.setdefault("DO_NOT_TRACK", "1")

EXPERIMENT = "zfda-bench"
TAG_EXECUTION = "zfda.execution"
# The experiment kind MLflow 3 keeps for an experiment: model training, not GenAI. The 3.17 UI opens
# every experiment on the view of its sidebar toggle (GenAI by default, whatever this tag says), so
# the experiment's description and ``runs_page`` give the link that opens on the runs.
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TAG_NOTE = "mlflow.note.content"  # an experiment's or a run's Description in the UI
# The process that opened a run (the stage or worker process; for a parent run, the dvc process).
TAG_PID, TAG_HOST, TAG_STARTED = "zfda.pid", "zfda.host", "zfda.started"
TAG_RESUMED = "resumed_from"  # on a run that replaced killed ones: their run ids, comma-separated
# What a resumed stage takes over from a killed one (the note of the resumed run); every stage
# rewrites its outputs whole, so what is not named here is recomputed.
REUSED = {"pretrain": "the checkpoint of the last finished epoch (.checkpoints/<run>/pretrain.pt)",
          "adapt": "every cell completed before the kill (.cells/<run>/) and the unfinished cells' epoch checkpoints",
          "ablate": "the study's epoch checkpoints (.checkpoints/<run>/ablate/<study>/)"}
UI = "http://127.0.0.1:5000"  # `mlflow ui --host 127.0.0.1` (README)


def runs_page(experiment_id: str) -> str:
    """The UI page of the experiment's runs (model-training view) on ``mlflow ui``'s default port."""
    return f"{UI}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def experiment_note(experiment_id: str) -> str:
    return ("zfda-bench (model training, not GenAI): one parent run per `dvc repro`, a child run per stage or "
            "matrix cell. MLflow 3.17 opens experiments on its GenAI overview (no traces here): switch the "
            f"sidebar to **Model training**, or open {runs_page(experiment_id)}")


def tracking_uri(paths: Paths) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db}"


# What the pipeline itself writes into the tree: a run rewriting them (or an earlier run's fresh,
# uncommitted outputs) does not change the code and params that produced the run.
OUTPUTS = ("reports", "dvc.lock")


def git_commit(root: Path) -> str:
    """HEAD's hash of the project at ``root``, with ``-dirty`` when a tracked input (code, params,
    dvc.yaml: every tracked file but the pipeline's own ``OUTPUTS``) differs from it; ``unknown``
    outside git."""
    inputs = ["--", ".", *(f":(exclude){p}" for p in OUTPUTS)]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *inputs], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _execution() -> tuple[str, dict]:
    """The execution key and its owner's tags (none when ``ZFDA_EXECUTION`` names it: no owner known)."""
    if os.environ.get("ZFDA_EXECUTION"):
        return os.environ["ZFDA_EXECUTION"], {}
    try:
        import psutil
        proc = psutil.Process().parent()
        while proc is not None:
            cmd = " ".join(proc.cmdline()[:3])
            if "dvc" in Path(proc.cmdline()[0]).name or " -m dvc" in cmd or "/dvc " in cmd + " ":
                return f"dvc-{proc.pid}-{int(proc.create_time())}", owner_tags(proc.pid, proc.create_time())
            proc = proc.parent()
    except Exception:  # psutil missing or a process vanished: fall back to this process
        pass
    return f"process-{os.getpid()}-{int(time.time())}", owner_tags()


def execution_key() -> str:
    """What the stages of one ``dvc repro`` have in common: the dvc process that runs them."""
    return _execution()[0]


def owner_tags(pid: int | None = None, started: float | None = None) -> dict:
    """The tags naming a run's owner: ``pid`` (default: this process), its host and its start time."""
    if pid is None:
        pid = os.getpid()
    if started is None:
        try:
            import psutil
            started = psutil.Process(pid).create_time()
        except Exception:  # psutil missing: the pid alone
            started = None
    return {TAG_PID: str(pid), TAG_HOST: socket.gethostname(),
            **({TAG_STARTED: f"{started:.2f}"} if started is not None else {})}


def owner_gone(tags: dict) -> bool:
    """Whether the process named by a run's owner tags has ended: on the machine running the check, no
    process with that pid (or one started at another time: the pid was reused). Unknown (no tags, another host, psutil
    missing or denied) counts as alive: only a dead owner's run is ever closed."""
    pid, host, started = tags.get(TAG_PID), tags.get(TAG_HOST), tags.get(TAG_STARTED)
    if not pid or host != socket.gethostname():
        return False
    try:
        import psutil
        if not psutil.pid_exists(int(pid)):
            return True
        return started is not None and abs(psutil.Process(int(pid)).create_time() - float(started)) > 0.5
    except ImportError:
        return False
    except Exception as err:  # the process ended between the two calls, or is not ours to see
        return type(err).__name__ == "NoSuchProcess"


def dead(runs) -> list:
    """The RUNNING ones of ``runs`` whose owner is gone."""
    return [r for r in runs if r.info.status == "RUNNING" and owner_gone(r.data.tags)]


def close_killed(client, runs, by: str) -> None:
    """Close ``runs`` (their owner gone) as KILLED, each with a note naming the run ``by`` that resumed it.
    The caller tags ``by`` with their ids first: a kill in between leaves no KILLED run unnamed."""
    for r in runs:
        tags = r.data.tags
        note = (f"Killed: its process (pid {tags[TAG_PID]} on {tags[TAG_HOST]}) ended without closing this run; "
                f"closed as KILLED by run {by}, which resumed it.")
        try:
            client.set_tag(r.info.run_id, TAG_NOTE, (tags.get(TAG_NOTE, "") + "\n\n" + note).strip())
            client.set_terminated(r.info.run_id, "KILLED")
        except Exception as err:  # e.g. deleted meanwhile: the new run is tracked all the same
            print(f"MLflow: could not close the killed run {r.info.run_id} ({type(err).__name__}: {err})",
                  file=sys.stderr, flush=True)


def _import_ipython() -> None:
    """Import IPython (where installed) on the calling thread, before the tracking thread starts.

    MLflow's run tags (``resolve_tags``) import IPython on the tracking thread, and matplotlib's pyplot
    runs ``from IPython import get_ipython`` as soon as it sees IPython in ``sys.modules``: a figure drawn
    while the other thread is half-way through that import fails with "partially initialized module
    'IPython'". Imported here first, the module is whole before either thread looks (about 0.3 s)."""
    import importlib.util
    if "IPython" not in sys.modules and importlib.util.find_spec("IPython") is not None:
        import IPython  # noqa: F401


def _loop_seconds() -> dict[str, float]:
    """``pipeline.train.LOOP_SECONDS`` when this process has imported it (read, not imported: no torch here)."""
    train = sys.modules.get("pipeline.train")
    return dict(getattr(train, "LOOP_SECONDS", {"train": 0.0, "evaluate": 0.0}))


class Tracker:
    """Context manager for one stage cell's MLflow child run; every call is failure-tolerant.

    MLflow costs a stage process about 3 s before its first write (importing mlflow, opening the
    SQLite store, creating the runs). That work runs on a background thread from ``__enter__``,
    overlapping the stage's data loading and training; every logging call is queued behind it and
    written in order by the same thread, and ``__exit__`` waits until all of it is in ``mlflow.db``.
    The child run's start time is taken at ``__enter__``, so durations in the UI are the stage's.
    Reading ``run_id`` waits for the run to exist (``None`` when tracking failed).
    At ``__exit__`` the run gets ``loop_train_seconds`` and ``loop_evaluate_seconds``: the time this
    process spent inside the training and evaluation loops while the run was open (``pipeline.train``'s
    ``LOOP_SECONDS``; a cell computed by a pool or Ray worker counts in its own run, not its stage's).
    """

    def __init__(self, params: Params, paths: Paths, stage: str, cell: str | None = None, *,
                 closes_parent: bool = True):
        """``closes_parent``: this run's start and end set the parent run's status (a stage's run does;
        the runs of cells inside a stage, in its process or in workers, leave the parent to the stage)."""
        self.params, self.paths, self.stage, self.cell = params, paths, stage, cell
        self.closes_parent = closes_parent
        self.resumed_from: list[str] = []  # the killed runs this one replaced
        self._logged: dict = {}  # every metric logged (for the resume note)
        self.enabled = True
        self._run_id: str | None = None
        self._parent_id: str | None = None
        self._experiment_id: str | None = None
        self._client = None
        self._ops: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._ready = threading.Event()
        self._fail_lock = threading.Lock()

    @property
    def run_id(self) -> str | None:
        if self._worker is not None:
            self._ready.wait()
        return self._run_id

    @property
    def runs_page(self) -> str | None:
        """Where ``mlflow ui`` shows this experiment's runs (None when tracking failed)."""
        return None if self.run_id is None else runs_page(self._experiment_id)

    def _fail(self, err: Exception) -> None:
        with self._fail_lock:
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

    def _submit(self, fn) -> None:
        """Queue one write for the tracking thread (or run it here when no thread is running)."""
        if not self.enabled:
            return
        if self._worker is None:
            self._call(fn)
        else:
            self._ops.put(fn)

    def _parent(self, client, experiment_id: str) -> str:
        key, owner = _execution()
        found = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_EXECUTION}` = '{key}'", max_results=1)
        if found:
            if self.closes_parent and found[0].info.status != "RUNNING":  # a stage of it runs again
                client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        name = f"{self.params.run_name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        p, commit = self.params, git_commit(self.paths.root)
        note = (f"One `dvc repro` of zfda-bench: profile **{p.profile}**, data source **{p.data.source}**, "
                f"channel {p.model.channel}, git commit `{commit}`. Results in `reports/{p.run_name}/`; "
                "the report's tables and figures are this run's artifacts, each stage is a child run.")
        run = client.create_run(experiment_id, run_name=name, tags={
            TAG_EXECUTION: key, "profile": p.profile, "data.source": p.data.source, "git.commit": commit,
            TAG_NOTE: note, **owner})
        # executions left RUNNING by a dvc process that is gone (killed): this one resumes them
        left = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
        killed = dead(r for r in left if TAG_EXECUTION in r.data.tags and self._same_run(r))
        if killed:
            ids = [r.info.run_id for r in killed]
            client.set_tag(run.info.run_id, TAG_RESUMED, ",".join(ids))
            client.set_tag(run.info.run_id, TAG_NOTE, f"{note}\n\nResumes the killed execution(s) {', '.join(ids)}.")
            close_killed(client, killed, run.info.run_id)
        return run.info.run_id

    def _same_run(self, run) -> bool:
        """A run of this profile and data source (what this one can resume)."""
        tags = run.data.tags
        return tags.get("profile") == self.params.profile and tags.get("data.source") == self.params.data.source

    def _close_killed(self, client, experiment_id: str, run_id: str) -> None:
        """Close the RUNNING runs of this stage and cell whose process is gone; tag this one as their resumption."""
        left = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                  f"tags.stage = '{self.stage}'", max_results=1000)
        mine = [r for r in left if r.info.run_id != run_id and r.data.tags.get("cell", "") == (self.cell or "")
                and self._same_run(r)]
        killed = dead(mine)
        if killed:  # tagged before they are closed: a kill in between leaves them RUNNING, for the next one
            self.resumed_from = [r.info.run_id for r in killed]
            self._log_batch(tags={TAG_RESUMED: ",".join(self.resumed_from), TAG_NOTE: self._resume_note()})
            close_killed(client, killed, run_id)

    def _resume_note(self) -> str:
        what = REUSED.get(self.stage, "nothing (the stage recomputes its outputs)")
        if self.stage == "adapt" and self.cell:
            what = "this cell's epoch checkpoints (.checkpoints/<run>/<method>/<cell>/)"
        note = f"Resumed after a kill: replaces the KILLED run(s) {', '.join(self.resumed_from)}; reuses {what}."
        if "resumed_from_epoch" in self._logged:
            note += f" Training resumed from the checkpoint at epoch {int(self._logged['resumed_from_epoch'])}."
        return note

    def _start(self, start_ms: int) -> None:
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
        client = MlflowClient(tracking_uri=tracking_uri(self.paths))
        exp = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = exp.experiment_id if exp else client.create_experiment(
            EXPERIMENT, artifact_location=self.paths.mlartifacts.as_uri())
        for key, value in ((TAG_EXPERIMENT_KIND, EXPERIMENT_KIND), (TAG_NOTE, experiment_note(experiment_id))):
            if exp is None or key not in exp.tags:  # new, or made before these tags; a user's own stay
                client.set_experiment_tag(experiment_id, key, value)
        self._experiment_id = experiment_id
        parent = self._parent(client, experiment_id)
        name = self.stage if self.cell is None else f"{self.stage}[{self.cell}]"
        tags = resolve_tags({"stage": self.stage, "cell": self.cell or "", "profile": self.params.profile,
                             "data.source": self.params.data.source, "git.commit": git_commit(self.paths.root),
                             MLFLOW_PARENT_RUN_ID: parent, **owner_tags()})
        run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
        self._client, self._parent_id, self._run_id = client, parent, run.info.run_id
        self._log_batch(params=flat_params(self.params))
        self._close_killed(client, experiment_id, run.info.run_id)

    def _work(self, start_ms: int) -> None:
        try:
            self._call(self._start, start_ms)
        finally:
            self._ready.set()
        while (fn := self._ops.get()) is not None:
            if self.enabled and self._run_id is not None:
                self._call(fn)

    def _log_batch(self, metrics=(), params=None, tags=None) -> None:
        from mlflow.entities import Param, RunTag
        self._client.log_batch(self._run_id, metrics=list(metrics),
                               params=[Param(k, str(v)) for k, v in (params or {}).items()],
                               tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def __enter__(self) -> "Tracker":
        self._loops = _loop_seconds()
        _import_ipython()
        self._worker = threading.Thread(target=self._work, args=(int(time.time() * 1000),),
                                        name=f"mlflow-{self.stage}", daemon=True)
        self._worker.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FAILED" if exc_type else "FINISHED"
        now = _loop_seconds()
        self.log_metrics({f"loop_{k}_seconds": now[k] - self._loops.get(k, 0.0) for k in now})

        def _end():
            # Every stage closes the parent run as it ends (and reopens it as it starts), so the parent's
            # end time and status are those of the execution's last stage so far; a killed stage leaves
            # it RUNNING, for the next execution to close as KILLED.
            if self.resumed_from and "resumed_from_epoch" in self._logged:
                self._log_batch(tags={TAG_NOTE: self._resume_note()})
            self._client.set_terminated(self._run_id, status)
            if self.closes_parent:
                self._client.set_terminated(self._parent_id, status)
        self._ops.put(_end)
        self._ops.put(None)
        self._worker.join()
        self._worker = None

    def log_params(self, values: dict) -> None:
        self._submit(lambda: self._log_batch(params=values))

    def log_metrics(self, values: dict, step: int | None = None) -> None:
        from_ms = int(time.time() * 1000)
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self._logged.update(clean)

        def _log():
            from mlflow.entities import Metric
            self._log_batch(metrics=[Metric(k, v, from_ms, step or 0) for k, v in clean.items()])
        self._submit(_log)

    def log_history(self, history: list[dict], prefix: str = "") -> None:
        """Per-epoch curves, after training: a resumed run logs the epochs from before the kill too."""
        for row in history:
            self.log_metrics({prefix + k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._submit(lambda: self._client.log_artifact(self._run_id, str(path), folder))

    def log_parent_artifact(self, path: Path, folder: str | None = None) -> None:
        """An artifact of the whole execution (the report's tables and figures), on the parent run."""
        self._submit(lambda: self._client.log_artifact(self._parent_id, str(path), folder))

    def set_tags(self, tags: dict) -> None:
        self._submit(lambda: self._log_batch(tags=tags))
