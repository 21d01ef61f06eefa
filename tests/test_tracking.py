"""MLflow tracking is best effort: a locked store costs the run its tracking, never its outputs;
a resumed run logs every epoch."""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import numpy as np
import pytest

from pipeline import data

# ------------------------------------------------------------------------------ locked mlflow.db
LOCK_LIMIT_S = 30.0  # longer than this is a finding: an offline user would think the stage hangs


def test_locked_mlflow_db_costs_tracking_not_outputs(project, capsys):
    import mlflow.tracking  # noqa: F401 - imported up front: the clock below measures the lock, not imports

    from pipeline.stages import domains
    db = project.paths.mlflow_db
    params, paths = project.params, project.paths
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    probe = sqlite3.connect(db, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # the lock really holds
        probe.execute("SELECT count(*) FROM sqlite_master").fetchall()
    probe.close()

    outcome: dict = {}

    def stage():
        try:
            domains.main(params, paths)
            outcome["done"] = True
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            outcome["error"] = err

    start = time.monotonic()
    worker = threading.Thread(target=stage, daemon=True)
    worker.start()
    worker.join(LOCK_LIMIT_S)
    elapsed = time.monotonic() - start
    blocked = worker.is_alive()
    holder.execute("ROLLBACK")
    holder.close()
    if blocked:
        worker.join(300)
        pytest.fail(f"with mlflow.db locked the domains stage blocked > {LOCK_LIMIT_S:.0f} s "
                    f"(finished {time.monotonic() - start:.0f} s after start once the lock was released)")
    assert "error" not in outcome, f"the stage failed instead of going on untracked: {outcome.get('error')!r}"
    assert outcome.get("done")
    for name in data.split_names(params):
        assert data.load_images(paths.split(name)).dtype == np.uint8
    assert (paths.figures / "domains_preview.png").is_file()
    manifest = json.loads(paths.manifest.read_text())
    assert set(manifest) >= {"source", "splits"} and "provenance" not in manifest  # no run id in DVC's data
    err = capsys.readouterr().err
    assert err.count("TRACKING FAILED") == 1 and "locked" in err, err
    print(f"locked mlflow.db: the stage finished in {elapsed:.1f} s")
    # the store is intact and usable once the lock is gone
    from mlflow.tracking import MlflowClient
    assert "Default" in [e.name for e in MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()]



# ------------------------------------------------------------------------------ resume and MLflow
class _Killed(Exception):
    """Stands for SIGKILL in the middle of a stage (in-process)."""


def test_a_resumed_run_logs_every_epoch_to_mlflow(prepared, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline import pretraining
    from pipeline.stages import pretrain
    params = prepared.params
    assert params.pretrain.epochs == 2
    real_fit = pretraining.fit

    def dying_fit(*args, on_epoch, **kwargs):
        def die_in_epoch_2(epoch, loss):
            if epoch == 2:
                raise _Killed("killed in epoch 2")
            return on_epoch(epoch, loss)
        return real_fit(*args, on_epoch=die_in_epoch_2, **kwargs)

    monkeypatch.setattr(pretraining, "fit", dying_fit)
    with pytest.raises(_Killed):
        pretrain.main(params, prepared.paths)
    monkeypatch.setattr(pretraining, "fit", real_fit)
    pretrain.main(params, prepared.paths)  # resumes at epoch 1/2
    client = MlflowClient(tracking_uri=f"sqlite:///{prepared.paths.mlflow_db}")
    exp = client.get_experiment_by_name("zfda-bench")
    finished = [r for r in client.search_runs([exp.experiment_id], "tags.stage = 'pretrain'")
                if r.info.status == "FINISHED"]
    assert len(finished) == 1
    for metric in ("train_loss", "test_psnr"):
        steps = sorted(m.step for m in client.get_metric_history(finished[0].info.run_id, metric))
        assert steps == [1, 2], (metric, steps)


# ------------------------------------------------------------------------------ killed runs
def _dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has ended."""
    import subprocess
    import sys

    import psutil
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return proc.pid, started


def test_a_run_left_running_by_a_dead_process_is_closed_as_killed_by_the_next_tracker(project):
    import os
    import socket

    import psutil
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from pipeline.tracking import TAG_EXECUTION, TAG_NOTE, TAG_RESUMED, Tracker, owner_tags
    params, paths = project.params, project.paths
    client = MlflowClient(tracking_uri=f"sqlite:///{paths.mlflow_db}")
    exp = client.create_experiment(tracking.EXPERIMENT)
    pid, started = _dead_pid()
    dead = owner_tags(pid, started)
    me = owner_tags(os.getpid(), psutil.Process().create_time())
    same = {"profile": params.profile, "data.source": params.data.source}

    def running(stage: str, cell: str, owner: dict, **extra) -> str:
        tags = {"stage": stage, "cell": cell, **same, **owner, **extra}
        return client.create_run(exp, tags=tags, run_name=f"{stage}[{cell}]").info.run_id

    parent = client.create_run(exp, tags={TAG_EXECUTION: f"dvc-{pid}-{int(started)}", **same, **dead}).info.run_id
    killed = running("pretrain", "", dead)
    reused_pid = running("pretrain", "", {**me, tracking.TAG_STARTED: "1.00"})  # this pid, another process
    alive = running("pretrain", "", me)  # a live owner: a parallel run
    elsewhere = running("pretrain", "", {**dead, tracking.TAG_HOST: socket.gethostname() + "-other"})
    no_owner = running("pretrain", "", {})  # made before owners were recorded: unknown, left alone
    other_cell = running("adapt", "sam VA-0.01", dead)  # another stage's run: its own tracker closes it
    other_profile = running("pretrain", "", dead, profile="other")  # not this run's to resume

    with Tracker(params, paths, "pretrain") as tracker:
        tracker.log_metrics({"resumed_from_epoch": 3})
    status = {k: client.get_run(v).info.status for k, v in dict(
        parent=parent, killed=killed, reused_pid=reused_pid, alive=alive, elsewhere=elsewhere, no_owner=no_owner,
        other_cell=other_cell, other_profile=other_profile).items()}
    assert status == dict(parent="KILLED", killed="KILLED", reused_pid="KILLED", alive="RUNNING",
                          elsewhere="RUNNING", no_owner="RUNNING", other_cell="RUNNING", other_profile="RUNNING")
    new = client.get_run(tracker.run_id)
    assert new.info.status == "FINISHED"
    assert sorted(new.data.tags[TAG_RESUMED].split(",")) == sorted([killed, reused_pid])
    assert killed in new.data.tags[TAG_NOTE] and "epoch 3" in new.data.tags[TAG_NOTE], new.data.tags[TAG_NOTE]
    assert tracker.run_id in client.get_run(killed).data.tags[TAG_NOTE]
    assert new.data.tags[tracking.TAG_PID] == str(os.getpid())
    new_parent = client.get_run(new.data.tags["mlflow.parentRunId"])
    assert new_parent.data.tags[TAG_RESUMED] == parent and new_parent.info.status == "FINISHED"

    # the next tracker of the stage finds nothing left to close; a cell's tracker leaves the parent alone
    with Tracker(params, paths, "pretrain") as again:
        pass
    assert TAG_RESUMED not in client.get_run(again.run_id).data.tags
    with Tracker(params, paths, "adapt", "sam VA-0.01", closes_parent=False) as cell:
        client.update_run(new_parent.info.run_id, status="RUNNING")  # a stage of the execution is running
    assert client.get_run(other_cell).info.status == "KILLED"
    assert client.get_run(cell.run_id).data.tags[TAG_RESUMED] == other_cell
    assert client.get_run(new_parent.info.run_id).info.status == "RUNNING"
