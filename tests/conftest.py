"""Shared fixtures: the real quick profile shrunk for speed, and an isolated project root.

``pipeline.config.ROOT`` is a module constant that several modules import by name (and derive
other constants from, e.g. ``pipeline.train.CHECKPOINTS``, re-imported by
``pipeline.stages.pretrain``). The ``project`` fixture rebases every such module-level path into
``tmp_path``, so stage tests never touch the repository's build/, reports/, .checkpoints/ or
mlflow.db.
"""
from __future__ import annotations

import copy
import importlib
import pkgutil
import shutil
import sys
from pathlib import Path

import pytest
import torch

import pipeline
from pipeline import config, profile

REPO = config.ROOT

# Shrunken sizes: every stage finishes in about a second on one CPU core.
TINY = {
    "data": {"n_pretrain": 64, "n_base_test": 32, "builtin": {"scales": [0.25]}},
    "domains": {"n_train": 32, "n_test": 16, "preview_count": 2},
    "model": {"width": 4},
    "train": {"batch_size": 16, "device": "cpu", "threads": 1},  # 1: robust on a shared 2-core machine
    "pretrain": {"epochs": 2},
    "adapt": {"epochs": 1},
    "tuning": {"retune_epochs": 1},
    "equalizer": {"epochs": 1},
    "evaluate": {"reconstructions": 2},
}


def shrink(raw: dict) -> dict:
    return profile.merge(copy.deepcopy(raw), copy.deepcopy(TINY))


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
    return build_splits(make_params(shrink(profile.render("quick"))))


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite store; creating one costs seconds, copying it does not."""
    import mlflow.tracking
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def _pipeline_modules():
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        try:
            yield importlib.import_module(info.name)
        except Exception:  # a module another engineer is still writing: not ours to test here
            continue


class Project:
    def __init__(self, root: Path, raw: dict):
        self.root, self.raw = root, raw

    @property
    def params(self) -> config.Params:
        return make_params(self.raw)

    def write_params(self, raw: dict | None = None) -> None:
        if raw is not None:
            self.raw = raw
        profile.write(self.raw, self.root / "params.yaml")

    def files(self) -> set[str]:
        """Every file under the project root, relative, as POSIX strings."""
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()}


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_params, mlflow_template) -> Project:
    """An isolated project root in ``tmp_path`` holding the shrunken params.yaml (cwd is there)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "profiles", root / "profiles")
    patched = []
    for module in list(_pipeline_modules()):  # import them all before patching any
        for name, value in list(vars(module).items()):
            if isinstance(value, Path) and (value == REPO or REPO in value.parents):
                monkeypatch.setattr(module, name, root / value.relative_to(REPO))
                patched.append(f"{module.__name__}.{name}")
    # The modules the brief names must be among them (a rename would silently leak into the repo).
    for needed in ("pipeline.config.ROOT", "pipeline.data.ROOT", "pipeline.train.ROOT", "pipeline.train.CHECKPOINTS",
                   "pipeline.tracking.ROOT", "pipeline.stages.pretrain.CHECKPOINTS", "pipeline.profile.ROOT"):
        assert needed in patched, f"{needed} not patched"
    shutil.copy(mlflow_template, root / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
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
    from pipeline.stages.domains import data_dir
    for name, arr in tiny_splits.items():
        write_npy(data_dir(project.params) / f"{name}.npy", arr)
    return project


def adapt_every_cell(project: Project, cache: dict) -> Project:
    """Pretrain, then adapt every method's cells of ``project``'s params (sam per domain x sparsity,
    tuning per domain, then the equalizers, which need every tuned agent). ``cache`` is a module's
    ``{"dir": Path, "ready": bool}``: the first test builds and leaves build/ there, the others copy it."""
    from pipeline.stages import adapt, pretrain
    if cache["ready"]:
        shutil.copytree(cache["dir"], project.root / "build", dirs_exist_ok=True)
        return project
    params = project.params
    pretrain.main(params)
    for d in params.domains.names:
        for s in params.adapt.sparsities:
            adapt.main(params, ["--method", "sam", "--domain", d, "--sparsity", str(s)])
        adapt.main(params, ["--method", "tuning", "--domain", d])
    for d in params.domains.names:
        adapt.main(params, ["--method", "equalizer", "--domain", d])
    shutil.copytree(project.root / "build", cache["dir"])
    cache["ready"] = True
    return project
