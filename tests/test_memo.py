"""Stages keyed by content (pipeline.memo): unchanged inputs restore the outputs, a change that can move a
number recomputes; comments and docstrings are no such change."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from pipeline.memo import Memo

from .dvc_copy import build, dvc_ok, make_copy
from .test_reproducible_outputs import locked_outputs

DVC = {"stages": {"fake": {"cmd": "python -m fake", "deps": ["build/${data.source}-${profile}/in.txt", "pipeline/mod.py"],
                           "params": ["adapt.epochs"],
                           "outs": ["build/${data.source}-${profile}/out", {"reports/${data.source}-${profile}/r.txt": {
                               "cache": False}}]}}}


@pytest.fixture
def fake(project):
    root, run = project.root, project.params.run_name
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC))
    (root / "pipeline").mkdir()
    (root / "pipeline" / "mod.py").write_text('"""A module."""\nX = 1\n')
    (root / "build" / run).mkdir(parents=True)
    (root / "build" / run / "in.txt").write_text("input\n")
    return project


def compute(project, value: str) -> None:
    run = project.params.run_name
    out = project.root / "build" / run / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "a.bin").write_text(value)
    (project.root / "reports" / run).mkdir(parents=True, exist_ok=True)
    (project.root / "reports" / run / "r.txt").write_text(value)


def test_a_stored_result_is_restored_byte_for_byte_and_a_missing_one_is_not(fake):
    memo = Memo(fake.params, fake.paths, "fake")
    assert memo.enabled and not memo.restore()
    compute(fake, "first")
    memo.save()
    compute(fake, "overwritten")
    assert memo.restore()
    run = fake.params.run_name
    assert (fake.root / "build" / run / "out" / "a.bin").read_text() == "first"
    assert (fake.root / "reports" / run / "r.txt").read_text() == "first"


def test_comments_and_docstrings_keep_the_key_code_params_and_data_change_it(fake):
    key = Memo(fake.params, fake.paths, "fake").key()
    mod, data = fake.root / "pipeline" / "mod.py", fake.root / "build" / fake.params.run_name / "in.txt"
    mod.write_text('"""Reworded."""\n# a comment\nX = 1  # the same code\n')
    assert Memo(fake.params, fake.paths, "fake").key() == key
    mod.write_text('"""A module."""\nX = 2\n')
    assert Memo(fake.params, fake.paths, "fake").key() != key
    mod.write_text('"""A module."""\nX = 1\n')
    data.write_text("other input\n")
    assert Memo(fake.params, fake.paths, "fake").key() != key
    data.write_text("input\n")
    original = fake.raw
    fake.write_params(dict(original, adapt={**original["adapt"], "epochs": original["adapt"]["epochs"] + 1}))
    assert Memo(fake.params, fake.paths, "fake").key() != key
    fake.write_params(dict(original, evaluate={**original["evaluate"], "reconstructions": 1}))
    assert Memo(fake.params, fake.paths, "fake").key() == key  # a param the stage does not list


def test_without_its_dvc_yaml_entry_a_stage_just_computes(project):
    assert not Memo(project.params, project.paths, "pretrain").enabled  # the test project has no dvc.yaml


def _commit(repo, message: str) -> None:
    git = ["git", "-c", "user.name=zfda-test", "-c", "user.email=zfda-test@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["commit", "-qam", message], cwd=repo, check=True, capture_output=True, timeout=60)


@pytest.mark.slow
def test_a_comment_change_restores_every_stage_and_a_param_change_recomputes_what_it_moves(tmp_path, mlflow_template):
    repo = make_copy(tmp_path / "project", mlflow_template)
    dvc_ok(repo, "repro")
    before = locked_outputs(repo)
    for module in ("pipeline/domains.py", "pipeline/train.py", "pipeline/metrics.py"):
        path = repo / module
        path.write_text(path.read_text() + "\n# a comment a reader added\n")
    _commit(repo, "comments only")
    again = dvc_ok(repo, "repro").stdout
    for stage in ("domains", "pretrain", "evaluate", "report", "network", "ablate@snr"):
        assert f"{stage}: inputs unchanged" in again, (stage, again[-3000:])
    assert "adapt: " in again and " 0 computed" in again  # every cell from its store
    assert locked_outputs(repo) == before  # not one output byte moved

    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["evaluate"]["reconstructions"] = 1  # moves evaluate's reconstructions, and nothing upstream
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    moved = dvc_ok(repo, "repro").stdout
    assert "Running stage 'pretrain'" not in moved or "pretrain: inputs unchanged" in moved  # DVC skips it, or it restores
    assert "evaluate: inputs unchanged" not in moved and (build(repo) / "eval" / "reconstructions.npy").is_file()
