"""Stage entry points on the shrunken config, inside an isolated project root (see conftest.project)."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import config, data, pretraining, profile, tracking, train
from pipeline.paths import Paths
from pipeline.stages import domains, pretrain, run, validate
from pipeline.train import ModelFileError, build_model, load_model, save_model

from .conftest import REPO, make_params


class Killed(Exception):
    """Stands for SIGKILL in the middle of a stage."""


def declared_outputs(params: config.Params) -> list[str]:
    """Every outs/metrics/plots path of the stages in dvc.yaml, for this params' data source and profile."""
    found = []
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind) or []:
                path = next(iter(item)) if isinstance(item, dict) else item
                found.append(path.replace("${data.source}", params.data.source).replace("${profile}", params.profile))
    return found


BOOKKEEPING = ("params.yaml", "profiles/", "mlflow.db", "mlartifacts/", ".checkpoints/")


def undeclared(project, before: set[str]) -> list[str]:
    """Files a stage wrote that no dvc.yaml stage declares (DVC would neither cache nor clean them)."""
    outs = declared_outputs(project.params)
    return sorted(f for f in project.files() - before
                  if not f.startswith(BOOKKEEPING) and not any(f == o or f.startswith(o + "/") for o in outs))


def metrics_json(paths: Paths) -> dict:
    return json.loads(paths.pretrain_json.read_text())


def psnrs(paths: Paths) -> dict:
    return {k: v for k, v in metrics_json(paths).items() if k.startswith("psnr_")}


def weights(paths: Paths) -> dict:
    return load_file(str(paths.pretrained))


def curve(paths: Paths) -> list[dict]:
    with open(paths.plots / "pretrain_curve.csv") as f:
        return list(csv.DictReader(f))


def checkpoint(paths: Paths) -> Path:
    return paths.checkpoints / "pretrain.pt"


def kill_at_epoch(monkeypatch, epoch: int):
    """Make pretrain's fit die in the on_epoch of ``epoch``, after the checkpoint of ``epoch - 1`` is written."""
    real_fit = pretraining.fit

    def fit(*args, on_epoch, **kwargs):
        def dying(e, loss):
            if e == epoch:
                raise Killed(f"killed in epoch {e}")
            return on_epoch(e, loss)
        return real_fit(*args, on_epoch=dying, **kwargs)
    monkeypatch.setattr(pretraining, "fit", fit)
    return lambda: monkeypatch.setattr(pretraining, "fit", real_fit)


# ---------------------------------------------------------------------------------------- isolation
def test_project_fixture_isolates_the_repository(project):
    """Every path the pipeline derives lies in the project root: one Paths object, no global patched."""
    root, paths = project.root, project.paths
    assert Path.cwd() == root and paths.root == root
    derived = [name for name, attr in vars(Paths).items() if isinstance(attr, property)]
    assert len(derived) > 15
    for name in derived:
        assert getattr(paths, name) == root or root in getattr(paths, name).parents, name
    cell = paths.cell("sam", "VA", 0.001)
    for path in (cell.metrics, cell.artifact(), cell.artifact("x"), cell.checkpoint("t"), paths.split("VA_test")):
        assert root in path.parents
    params = config.load(paths.params_file)
    assert params.model.width == 4 and params.data.n_pretrain == 64
    assert tracking.tracking_uri(paths) == f"sqlite:///{root / 'mlflow.db'}"


# ------------------------------------------------------------------------------------------- domains
def test_domains_stage_writes_every_split_and_the_preview(project, capsys):
    import matplotlib.image
    from mlflow.tracking import MlflowClient
    params, paths = project.params, project.paths
    before = project.files()
    domains.main(params, paths)
    folder = paths.data
    manifest = json.loads((folder / "manifest.json").read_text())
    assert list(manifest["splits"]) == data.split_names(params)
    for name in data.split_names(params):
        arr = data.load_images(folder / f"{name}.npy")
        entry = manifest["splits"][name]
        assert entry["shape"] == list(arr.shape)
        assert entry["sha256"] == hashlib.sha256(arr.tobytes()).hexdigest()
    assert len(data.load_images(folder / "VA_train.npy")) == params.domains.n_train
    assert len(data.load_images(folder / "base_test.npy")) == params.data.n_base_test
    png = paths.figures / "domains_preview.png"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and min(img.shape[:2]) > 32
    assert undeclared(project, before) == []
    assert not list(project.root.rglob("*.tmp*"))
    # tracked in the project's own store; the data folder names no run (its bytes are a function of the params)
    assert manifest["source"] == {"profile": params.profile, "data_source": params.data.source}
    assert "provenance" not in manifest
    client = MlflowClient(tracking_uri=tracking.tracking_uri(project.paths))
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                              "tags.stage = 'domains'")
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.info.status == "FINISHED" and run_.data.tags["stage"] == "domains"
    assert run_.data.params["domains.n_train"] == str(params.domains.n_train)
    assert "TRACKING FAILED" not in capsys.readouterr().err


def test_domains_stage_matches_build_splits(project, tiny_splits):
    domains.main(project.params, project.paths)
    for name, arr in tiny_splits.items():
        assert np.array_equal(data.load_images(project.paths.data / f"{name}.npy"), arr), name


def test_tracking_failure_does_not_cost_the_outputs(project, monkeypatch, capsys):
    garbage = project.root / "broken" / "mlflow.db"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not an SQLite database\n" * 64)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{garbage}")
    params, paths = project.params, project.paths
    domains.main(params, paths)
    folder = paths.data
    for name in data.split_names(params):
        assert (folder / f"{name}.npy").is_file()
    assert (paths.figures / "domains_preview.png").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest) >= {"source", "splits"} and "provenance" not in manifest
    err = capsys.readouterr().err
    assert "TRACKING FAILED" in err and "domains" in err
    assert err.count("TRACKING FAILED") == 1  # loud once, not once per call


# ------------------------------------------------------------------------------------------ pretrain
def test_pretrain_stage_smoke(prepared, capsys):
    params, paths = prepared.params, prepared.paths
    before = prepared.files()
    pretrain.main(params, paths)
    m = metrics_json(paths)
    expected = {"psnr_base_test"} | {f"psnr_{d}_test" for d in params.domains.names}
    assert expected <= set(m)
    for key in expected:
        assert isinstance(m[key], float) and math.isfinite(m[key]) and 5.0 < m[key] < 60.0, (key, m[key])
    assert m["parameters"] == sum(p.numel() for p in build_model(params).parameters())
    assert m["provenance"]["profile"] == "quick" and m["provenance"]["data_source"] == "builtin"
    rows = curve(paths)
    assert len(rows) == params.pretrain.epochs
    assert [int(r["epoch"]) for r in rows] == list(range(1, params.pretrain.epochs + 1))
    plot = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["pretrain"]["plots"][0]
    spec = next(iter(plot.values()))
    assert spec["x"] in rows[0] and spec["y"] in rows[0]
    assert all(math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["test_psnr"])) for r in rows)
    model = load_model(params, paths.pretrained)
    # the reported PSNR is the saved model's PSNR (same noise realisation)
    test_x = pretraining.load_split(paths, "base_test")
    again = train.evaluate_psnr(pretraining.self_link(model), test_x, noise_seed=params.evaluate.noise_seed,
                                batch_size=256, device=torch.device("cpu"))
    assert round(again, 4) == m["psnr_base_test"]
    assert not checkpoint(paths).exists(), "a finished stage leaves no checkpoint behind"
    assert undeclared(prepared, before) == []


def test_pretrain_is_deterministic(prepared):
    params, paths = prepared.params, prepared.paths
    pretrain.main(params, paths)
    first, first_w, first_curve = psnrs(paths), weights(paths), curve(paths)
    pretrain.main(params, paths)
    assert psnrs(paths) == first
    assert curve(paths) == first_curve
    second_w = weights(paths)
    assert first_w.keys() == second_w.keys()
    assert all(torch.equal(first_w[k], second_w[k]) for k in first_w)


def test_pretrain_resumes_after_a_kill_to_the_same_result(prepared, monkeypatch, capsys):
    params, paths = prepared.params, prepared.paths
    assert params.pretrain.epochs == 2
    restore = kill_at_epoch(monkeypatch, 2)
    with pytest.raises(Killed):
        pretrain.main(params, paths)
    state = torch.load(checkpoint(paths), map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert not paths.pretrained.exists() and not paths.metrics.exists()
    restore()
    capsys.readouterr()
    pretrain.main(params, paths)
    assert "resumed from checkpoint at epoch 1/2" in capsys.readouterr().out
    resumed, resumed_w, resumed_curve = psnrs(paths), weights(paths), curve(paths)
    assert not checkpoint(paths).exists()
    pretrain.main(params, paths)  # uninterrupted (no checkpoint left)
    assert "resumed" not in capsys.readouterr().out
    assert psnrs(paths) == resumed
    assert curve(paths) == resumed_curve
    assert all(torch.equal(resumed_w[k], v) for k, v in weights(paths).items())


def test_checkpoint_of_other_input_data_is_not_resumed(prepared, monkeypatch):
    params, paths = prepared.params, prepared.paths
    restore = kill_at_epoch(monkeypatch, 2)
    with pytest.raises(Killed):
        pretrain.main(params, paths)
    restore()
    path = paths.data / "base_train.npy"
    np.save(path, 255 - data.load_images(path))  # the data changed while the checkpoint waited
    pretrain.main(params, paths)
    after_kill, after_kill_w = psnrs(paths), weights(paths)
    pretrain.main(params, paths)  # uninterrupted, on the same (new) data
    assert psnrs(paths) == after_kill
    assert all(torch.equal(after_kill_w[k], v) for k, v in weights(paths).items())


def test_checkpoint_of_another_noise_seed_is_not_resumed(prepared, monkeypatch):
    restore = kill_at_epoch(monkeypatch, 2)
    with pytest.raises(Killed):
        pretrain.main(prepared.params, prepared.paths)
    restore()
    prepared.raw["evaluate"]["noise_seed"] += 1
    params, paths = prepared.params, prepared.paths
    pretrain.main(params, paths)
    after_kill = curve(paths)
    pretrain.main(params, paths)
    assert curve(paths) == after_kill


# ---------------------------------------------------------------------------------------- model files
@pytest.fixture
def model_file(tmp_path, tiny_params):
    params = make_params(tiny_params)
    torch.manual_seed(0)
    model = build_model(params)
    path = tmp_path / "pretrained.safetensors"
    save_model(model, path, {"profile": "quick"})
    return params, model, path


def test_model_file_roundtrip(model_file):
    params, model, path = model_file
    loaded = load_model(params, path)
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_truncated_model_file_is_refused(model_file, keep):
    params, _, path = model_file
    blob = path.read_bytes()
    path.write_bytes(blob[:keep] if keep >= 0 else blob[: len(blob) // 2])
    with pytest.raises(ModelFileError, match="corrupt") as exc:
        load_model(params, path)
    assert "\n" not in str(exc.value)


def test_missing_model_file_is_refused(tmp_path, tiny_params):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(make_params(tiny_params), tmp_path / "none.safetensors")


def test_model_of_another_width_is_refused(model_file, tiny_params):
    _, _, path = model_file
    tiny_params["model"]["width"] = 8
    with pytest.raises(ModelFileError, match="model.width") as exc:
        load_model(make_params(tiny_params), path)
    assert "\n" not in str(exc.value)


def test_model_with_nan_weights_is_refused(model_file):
    params, model, path = model_file
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    save_model(model, path, {})
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(params, path)


# ------------------------------------------------------------------------------------ error boundary
def test_validate_entry_writes_its_stamp(project, capsys):
    before = project.files()
    run(validate.main, project.root)
    stamp = project.paths.stamp
    assert stamp.is_file()
    assert project.files() - before == {stamp.relative_to(project.root).as_posix()}


@pytest.mark.parametrize("case", ["epochs0", "bad_yaml", "missing", "extra_key"])
def test_validate_entry_with_bad_params_exits_2_with_one_line(project, capsys, case):
    params_file = project.root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    if case == "epochs0":
        raw["pretrain"]["epochs"] = 0
        params_file.write_text(yaml.safe_dump(raw))
    elif case == "extra_key":
        raw["model"]["depth"] = 3
        params_file.write_text(yaml.safe_dump(raw))
    elif case == "bad_yaml":
        params_file.write_text("model: {width: 4\npretrain: [\n")
    else:
        params_file.unlink()
    before = {f: (project.root / f).read_bytes() for f in project.files()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run(validate.main, project.root)
    assert exc.value.code == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    expected = {"epochs0": "pretrain.epochs", "extra_key": "model.depth", "bad_yaml": "not valid YAML",
                "missing": "not found"}[case]
    assert expected in lines[0]
    assert {f: (project.root / f).read_bytes() for f in project.files()} == before
    assert not (project.root / "build").exists()


def test_stage_data_error_exits_2_with_one_line_and_no_outputs(project, capsys, monkeypatch, tmp_path):
    import torchvision.datasets.utils as tv_utils
    from urllib.error import URLError

    def unreachable(*args, **kwargs):
        raise URLError("network is unreachable")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", unreachable)
    raw = project.raw
    raw["data"]["source"] = "cifar100"
    raw["data"]["cifar100"].update(local=str(tmp_path / "no-copy"), root=str(tmp_path / "no-download"))
    project.write_params(raw)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run(domains.main, project.root)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "data.cifar100.local" in lines[0] and "network" in lines[0], lines
    assert not (project.root / "build").exists() and not (project.root / "reports").exists()


# ------------------------------------------------------------------------- real command line (slow)
@pytest.mark.slow
def test_stage_commands_in_a_copied_tree(tmp_path, tiny_params):
    """`python -m pipeline.stages.validate` for real: the default root is the checkout the code runs
    from, so run a copy of it."""
    import shutil
    import subprocess
    import sys
    root = tmp_path / "tree"
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "profiles", root / "profiles")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PYTHONPATH": str(root)}
    bad = dict(tiny_params, pretrain={**tiny_params["pretrain"], "epochs": 0})
    profile.write(bad, root / "params.yaml")
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if "__pycache__" not in p.parts)
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.validate"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "pretrain.epochs" in done.stderr
    after = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
    profile.write(tiny_params, root / "params.yaml")
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.validate"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (root / "build" / "builtin-quick" / "params.ok").is_file()


def test_git_commit_is_dirty_for_changed_inputs_not_for_the_pipelines_outputs(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false"]
    (tmp_path / "reports" / "x").mkdir(parents=True)
    for name in ("params.yaml", "dvc.lock", "reports/x/claims.md"):
        (tmp_path / name).write_text("v1\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "c"]):
        subprocess.run(git + cmd, cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "dvc.lock").write_text("v2\n")            # a run rewrites its own outputs
    (tmp_path / "reports" / "x" / "claims.md").write_text("v2\n")
    (tmp_path / "untracked.txt").write_text("scratch\n")
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "params.yaml").write_text("v2\n")         # an input differs from the commit
    assert tracking.git_commit(tmp_path) == head + "-dirty"


def test_git_commit_follows_the_project_root(project):
    """Stages in the isolated project (no git there) must not report the repository's commit."""
    from pipeline.stages import provenance
    assert provenance(project.params, project.paths, None)["git_commit"] == "unknown"
