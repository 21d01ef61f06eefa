"""`dvc exp run` for sweeps of whole profiles: a queued (or --temp) experiment runs in a temporary copy
``<project>/.dvc/tmp/exps/<name>/``; the paths that would break there (``data/cifar100``, ``mlflow.db``, the
cell store) are the project's own (``Paths.home``)."""
from __future__ import annotations

import json

import pytest

from pipeline.paths import Paths


def test_home_is_the_project_of_a_temporary_experiment_copy(tmp_path):
    project = tmp_path / "project"
    copy = Paths(project / ".dvc" / "tmp" / "exps" / "tmpab12", "builtin-quick")
    assert copy.home == project and Paths(project, "builtin-quick").home == project
    assert copy.mlflow_db == project / "mlflow.db" and copy.mlartifacts == project / "mlartifacts"
    assert copy.cell_store("sam") == project / ".cells" / "builtin-quick" / "sam"  # shared by experiments
    assert copy.build == copy.root / "build" / "builtin-quick"  # outputs stay the experiment's own
    assert copy.checkpoints == copy.root / ".checkpoints" / "builtin-quick"


def test_relative_data_paths_fall_back_to_the_project_in_an_experiment_copy(tmp_path):
    project = tmp_path / "work" / "project"
    (project / "data" / "cifar100").mkdir(parents=True)  # git-ignored: the copy does not have it
    copy = Paths(project / ".dvc" / "tmp" / "exps" / "tmpab12", "cifar100-quick")
    assert copy.resolve("data/cifar100") == project / "data" / "cifar100"  # exists from the project
    (copy.root / "data" / "x").mkdir(parents=True)
    assert copy.resolve("data/x") == copy.root / "data" / "x"  # the copy's own, when it has it
    assert copy.resolve("/abs/p").as_posix() == "/abs/p"


@pytest.mark.slow
def test_a_temporary_experiment_runs_and_logs_to_the_project(tmp_path, mlflow_template):
    """`dvc exp run --temp -S ...` (the mechanism of `dvc exp run --queue` + `dvc queue start`): the
    experiment completes in its temporary copy, `dvc exp show` lists it, its MLflow runs are in the
    project's mlflow.db and its cells in the project's cell store."""
    from mlflow.tracking import MlflowClient

    from .dvc_copy import dvc_ok, make_copy
    repo = make_copy(tmp_path / "repo", mlflow_template)
    done = dvc_ok(repo, "exp", "run", "--temp", "-n", "sweep-a", "-S", "adapt.value_lr=0.006", "adapt")
    assert "sweep-a" in done.stdout + done.stderr
    show = json.loads(dvc_ok(repo, "exp", "show", "--json").stdout)
    assert "sweep-a" in json.dumps(show)
    assert list((repo / ".cells").glob("*/sam/*")), "the experiment's cells are in the project's store"
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("zfda-bench")
    stages = {r.data.tags.get("stage") for r in client.search_runs([exp.experiment_id])}
    assert {"pretrain", "adapt"} <= stages


@pytest.mark.slow
def test_a_queued_experiment_runs_through_dvc_queue(tmp_path, mlflow_template):
    """`dvc exp run --queue -S ...` then `dvc queue start`: the queue's worker runs the experiment in its
    temporary copy; it succeeds, `dvc exp show` lists it, and it logged to the project's mlflow.db and
    cell store (the paths that would break in the copy)."""
    import time

    from mlflow.tracking import MlflowClient

    from .dvc_copy import DVC_TIMEOUT, dvc, dvc_ok, make_copy
    repo = make_copy(tmp_path / "repo", mlflow_template)
    dvc_ok(repo, "exp", "run", "--queue", "-n", "queued-a", "-S", "adapt.value_lr=0.006", "adapt")
    try:
        dvc_ok(repo, "queue", "start", "-j", "1")
        deadline, status = time.monotonic() + DVC_TIMEOUT, ""
        while time.monotonic() < deadline:
            status = dvc_ok(repo, "queue", "status").stdout
            if "queued-a" in status and ("Success" in status or "Failed" in status):
                break
            time.sleep(2)
        logs = dvc(repo, "queue", "logs", "queued-a")
        assert "Success" in status, f"queue status:\n{status}\nlogs:\n{logs.stdout}{logs.stderr}"
    finally:
        dvc(repo, "queue", "stop", "--kill")
    show = json.loads(dvc_ok(repo, "exp", "show", "--json").stdout)
    assert "queued-a" in json.dumps(show) and "0.006" in json.dumps(show)
    assert list((repo / ".cells").glob("*/sam/*")), "the queued experiment's cells are in the project's store"
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("zfda-bench")
    assert {"pretrain", "adapt"} <= {r.data.tags.get("stage") for r in client.search_runs([exp.experiment_id])}
