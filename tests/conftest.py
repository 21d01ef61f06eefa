"""Shared fixtures: the real quick profile shrunk for speed, and an isolated project root.

Every path the pipeline touches comes from one ``pipeline.paths.Paths`` object; the ``project``
fixture builds one on ``tmp_path`` and tests hand it to the stages, so they never touch the
repository's build/, reports/, .checkpoints/ or mlflow.db (no module global is patched).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from pipeline import config, profile
from pipeline.paths import REPO, Paths
from pipeline.profile import shrink  # profiles/tiny.yaml: every stage in about a second on one core


def make_params(raw: dict) -> config.Params:
    """Validated ``Params`` of a raw params mapping (what ``params.yaml`` holds)."""
    return config.parse(raw)


@pytest.fixture(autouse=True)
def _offline_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture
def tiny_params() -> dict:
    """The real ``profiles/quick.yaml`` (builtin source), shrunk; a fresh raw dict per test."""
    return shrink(profile.render("quick"))


@pytest.fixture(scope="session")
def tiny_splits() -> dict:
    """``build_splits`` of the tiny params, computed once (read-only: copy before changing)."""
    from pipeline.data import build_splits
    params = make_params(shrink(profile.render("quick")))
    return build_splits(params, Paths.of(params))  # builtin photos: no path is read


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite store; creating one costs seconds, copying it does not."""
    import mlflow.tracking
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


class Project:
    def __init__(self, root: Path, raw: dict):
        self.root, self.raw = root, raw

    @property
    def params(self) -> config.Params:
        return make_params(self.raw)

    @property
    def paths(self) -> Paths:
        return Paths.of(self.params, self.root)

    def write_params(self, raw: dict | None = None) -> None:
        if raw is not None:
            self.raw = raw
        profile.write(self.raw, self.root / "params.yaml")

    def files(self) -> set[str]:
        """Every file under the project root, relative, as POSIX strings."""
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()}


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_params, mlflow_template) -> Project:
    """An isolated project root in ``tmp_path`` holding the shrunken params.yaml (cwd is there);
    ``project.paths`` points every path of the pipeline into it."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "profiles", root / "profiles")
    shutil.copy(mlflow_template, root / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store is paths.mlflow_db
    monkeypatch.setenv("ZFDA_EXECUTION", f"pytest-{tmp_path.name}")
    monkeypatch.chdir(root)
    proj = Project(root, tiny_params)
    proj.write_params()
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield proj
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:  # a failed test must not leave a run open for the next
            mlflow.end_run("KILLED")


@pytest.fixture
def prepared(project, tiny_splits) -> Project:
    """The isolated project with the domains stage's arrays already in place (tiny params)."""
    from pipeline.stages import write_npy
    for name, arr in tiny_splits.items():
        write_npy(project.paths.split(name), arr)
    return project


def adapt_every_cell(project: Project, cache: dict) -> Project:
    """Pretrain, then adapt every method's cells of ``project``'s params (sam per domain x sparsity,
    tuning per domain, then the equalizers, which need every tuned agent). ``cache`` is a module's
    ``{"dir": Path, "ready": bool}``: the first test builds and leaves build/ there, the others copy it."""
    from pipeline.stages import adapt, pretrain
    if cache["ready"]:
        shutil.copytree(cache["dir"], project.root / "build", dirs_exist_ok=True)
        return project
    params, paths = project.params, project.paths
    pretrain.main(params, paths)
    for d in params.domains.names:
        for s in params.adapt.sparsities:
            adapt.main(params, paths, ["--method", "sam", "--domain", d, "--sparsity", str(s)])
        adapt.main(params, paths, ["--method", "tuning", "--domain", d])
    for d in params.domains.names:
        adapt.main(params, paths, ["--method", "equalizer", "--domain", d])
    shutil.copytree(project.root / "build", cache["dir"])
    cache["ready"] = True
    return project
