"""Nothing committed is lost when a stage fails or is killed, and what a resumed stage reports it measured.

The slow tests run real ``dvc repro`` in temporary copies of the working tree (the helpers of
tests/dvc_copy.py) holding a copy of the committed ``reports/``; a failed or SIGKILLed stage
must leave every tracked file there byte-identical (``git status`` of the copy stays clean).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import profile
from pipeline.stages import report, run

from .conftest import REPO
from .dvc_copy import (
    build,
    checkpoints,
    copy_env,
    dvc_cmd,
    dvc_ok,
    dvc_status,
    kill_when,
    make_copy,
    repro_after_kill,
    slow_params,
)
from .report.test_stage import REPORT_FILES, write_inputs
from .synthetic import tidy

OFFLINE = "http://127.0.0.1:9"  # the discard port: every download through this proxy is refused at once


# ------------------------------------------------------------------------------ report outputs persist
def declared(stage: dict) -> list[tuple[str, dict]]:
    """(path, flags) of every outs/metrics/plots entry of one dvc.yaml stage."""
    found = []
    for kind in ("outs", "metrics", "plots"):
        for item in stage.get(kind) or []:
            found.append(next(iter(item.items())) if isinstance(item, dict) else (item, {}))
    return found


def test_report_outputs_persist_and_build_outputs_do_not():
    """DVC deletes a stage's outputs before it runs, unless they persist: the git-tracked report files
    persist (no cache holds them), the build artefacts do not (DVC cleans them; the adapt cells keep
    the run cache, which a persistent output turns off for its stage)."""
    outputs = [(name, path, flags) for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()
               for path, flags in declared(stage)]
    assert len(outputs) > 20
    for name, path, flags in outputs:
        if path.startswith("reports/"):
            assert flags.get("cache") is False and flags.get("persist") is True, (name, path, flags)
        else:
            assert path.startswith("build/") and not flags.get("persist"), (name, path, flags)


def test_the_report_stage_rewrites_its_persistent_tables_folder(project):
    """With persist, the tables folder is not emptied before the stage runs: the stage replaces every
    table it writes and removes any other file there, so nothing stale passes as this run's output."""
    params, paths = project.params, project.paths
    write_inputs(params, paths, tidy(list(params.domains.names), list(params.adapt.sparsities), new=True))
    paths.tables.mkdir(parents=True)
    (paths.tables / "main.md").write_text("an older main table\n")
    (paths.tables / "dropped_table.md").write_text("a table older code wrote\n")
    run(report.main, project.root)
    tables = {p.name for p in paths.tables.iterdir()}
    assert tables == {f.removeprefix("tables/") for f in REPORT_FILES if f.startswith("tables/")}
    assert "older" not in (paths.tables / "main.md").read_text()


# ------------------------------------------------------------------------------ slow: real dvc repro
def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=zfda-test", "-c", "user.email=zfda-test@localhost",
                           "-c", "commit.gpgsign=false", *args], cwd=repo, capture_output=True, text=True,
                          check=True, timeout=120)
    return done.stdout


def commit_reports(repo: Path) -> None:
    """The copy's reports/ as committed: the repository's own committed report files."""
    shutil.copytree(REPO / "reports", repo / "reports", dirs_exist_ok=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "committed reports")


def report_changes(repo: Path) -> list[str]:
    """Tracked report files changed or deleted since the last commit, and any file left beside them
    (temporary files included, which .gitignore hides from git status)."""
    changed = git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored", "reports").splitlines()
    return changed + [p.relative_to(repo).as_posix() for p in (repo / "reports").rglob("*.tmp*")]


@pytest.mark.slow
def test_a_failed_stage_keeps_every_committed_report_file(tmp_path, mlflow_template):
    """CIFAR-100 with no local copy and no network; the domains stage fails and
    reports/cifar100-quick/figures/domains_preview.png (and everything else) stays as committed."""
    repo = make_copy(tmp_path / "repo", mlflow_template)
    raw = slow_params()
    raw["data"]["source"] = "cifar100"
    raw["data"]["cifar100"].update(local="no-local-copy", root="no-download")
    profile.write(raw, repo / "params.yaml")
    commit_reports(repo)
    preview = repo / "reports" / "cifar100-quick" / "figures" / "domains_preview.png"
    assert preview.is_file()
    env = copy_env(repo)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = OFFLINE
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    done = subprocess.run(dvc_cmd("repro", "domains"), cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    assert "failed to reproduce 'domains'" in text and "data.cifar100.local" in text, text
    assert report_changes(repo) == [], text


@pytest.mark.slow
def test_a_killed_stage_keeps_every_committed_report_file(tmp_path, mlflow_template):
    """SIGKILL to dvc and the pretrain stage after its first epoch: pretrain.json and pretrain_curve.csv,
    which DVC would have removed before the stage ran, and every other report file stay as committed."""
    repo = make_copy(tmp_path / "repo", mlflow_template)
    commit_reports(repo)
    dvc_ok(repo, "repro", "domains")  # the stages before the one killed: their new reports are committed
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "domains")
    assert (repo / "reports" / "builtin-quick" / "metrics" / "pretrain.json").is_file()
    kill_when(repo, ["repro", "pretrain"], checkpoints(repo) / "pretrain.pt", tmp_path / "killed.log")
    assert not (build(repo) / "models" / "pretrained.safetensors").exists(), "the kill came too late"
    assert report_changes(repo) == [], (tmp_path / "killed.log").read_text()
    # the rerun resumes and replaces both files with its own (no stale output passes as the result)
    repro_after_kill(repo, "pretrain")
    assert sorted(report_changes(repo)) == [" M reports/builtin-quick/metrics/pretrain.json",
                                            " M reports/builtin-quick/plots/pretrain_curve.csv"]
    assert dvc_status(repo, "pretrain") == {}


# ------------------------------------------------------------------------------ timing after a resume
def test_pretrain_timing_after_a_resume_counts_the_epochs_it_timed(prepared, monkeypatch):
    """images/s divides the images of the epochs this run trained by the seconds it timed, and a
    resumed run says where it resumed (every epoch's images over the resumed epochs' time)."""
    import json

    from pipeline import data
    from pipeline.stages import pretrain

    from .test_stages import Killed, kill_at_epoch
    params, paths = prepared.params, prepared.paths
    assert params.pretrain.epochs == 2
    images = len(data.load_images(paths.split("base_train")))
    restore = kill_at_epoch(monkeypatch, 2)
    with pytest.raises(Killed):
        pretrain.main(params, paths)
    restore()
    pretrain.main(params, paths)  # resumes at epoch 1/2: trains and times epoch 2 only
    resumed = json.loads(paths.pretrain_json.read_text())
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["images_per_second"] == pytest.approx(images * 1 / resumed["train_seconds"], rel=1e-3)
    pretrain.main(params, paths)  # uninterrupted
    whole = json.loads(paths.pretrain_json.read_text())
    assert "resumed_from_epoch" not in whole
    assert whole["images_per_second"] == pytest.approx(images * 2 / whole["train_seconds"], rel=1e-3)
