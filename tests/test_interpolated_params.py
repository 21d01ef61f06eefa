"""The params keys that dvc.yaml interpolates (``${...}``): paths and matrices.

DVC reads them when it parses dvc.yaml, before the validate stage can run, and stops on some
structural errors with messages that do not name the key (docs/troubleshooting.md). The validate
stage's entry point, ``python -m pipeline.stages.validate`` (the same check ``python -m
pipeline.profile`` runs before it writes params.yaml), names the key in one line for null, a wrong
type and an empty list of each.
"""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from pipeline import profile
from pipeline.stages import run, validate

from .conftest import REPO
from .dvc_copy import dvc, make_copy

NULL, EMPTY = None, []
# key -> the values to try: null, wrong types, an empty list (ablate.studies: [] is valid: no ablations).
# adapt.sparsities is no longer among them: the adapt stages run all their cells in one process, so no
# dvc.yaml matrix spans it, and its errors reach the validate stage (tests/test_config.py covers them).
CASES = {
    "data.source": [NULL, 3, ["builtin"], {"builtin": 1}, EMPTY],
    "profile": [NULL, 1, ["quick"], {"quick": 1}, EMPTY],
    "domains.names": [NULL, "VA", 3, {"VA": 1}, EMPTY],
    "ablate.studies": [NULL, "snr", 3, {"snr": 1}],
}


def interpolated_keys() -> set[str]:
    """Every params key dvc.yaml interpolates (``${item.*}`` are the matrices' own)."""
    found = set(re.findall(r"\$\{\s*([\w.]+)\s*\}", (REPO / "dvc.yaml").read_text()))
    return {k for k in found if not k.startswith("item.")}


def with_value(raw: dict, key: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *blocks, leaf = key.split(".")
    target = raw
    for b in blocks:
        target = target[b]
    target[leaf] = value
    return raw


def test_the_cases_cover_every_key_dvc_yaml_interpolates():
    assert interpolated_keys() == set(CASES)


@pytest.mark.parametrize("key,value", [(k, v) for k, values in CASES.items() for v in values],
                         ids=[f"{k}={v!r}" for k, values in CASES.items() for v in values])
def test_a_structural_error_in_an_interpolated_key_is_one_line_naming_it(project, capsys, key, value):
    (project.root / "params.yaml").write_text(yaml.safe_dump(with_value(project.raw, key, value), sort_keys=False))
    before = project.files()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run(validate.main, project.root)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: params: {key} = "), lines
    assert project.files() == before  # nothing written, not even the stamp


def test_an_empty_ablate_studies_is_valid_and_means_no_ablations(tiny_params):
    from pipeline.config import parse
    assert parse(with_value(tiny_params, "ablate.studies", [])).ablate.studies == ()


def test_troubleshooting_maps_every_interpolated_key():
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    section = text.split("## DVC stops before any stage runs", 1)[1].split("\n## ", 1)[0]
    assert "python -m pipeline.stages.validate" in section
    for key in interpolated_keys():
        assert f"`{key}`" in section, key


# DVC's own words for three kinds of structural error (reproduced with dvc 3.67), quoted by docs/troubleshooting.md
DVC_MESSAGES = [
    ("ablate.studies", 3, "ERROR: unexpected error - 'Value' object is not iterable"),
    ("data.source", ["builtin"], "Cannot interpolate data of type 'list'"),
    ("profile", {"quick": 1}, "Cannot interpolate data of type 'dict'"),
]


@pytest.fixture(scope="module")
def parse_copy(tmp_path_factory, mlflow_template):
    return make_copy(tmp_path_factory.mktemp("parse") / "repo", mlflow_template)


@pytest.mark.slow
@pytest.mark.parametrize("key,value,message", DVC_MESSAGES, ids=[f"{k}={v!r}" for k, v, _ in DVC_MESSAGES])
def test_dvc_stops_with_the_message_troubleshooting_maps_and_validate_names_the_key(parse_copy, key, value, message):
    repo = parse_copy
    good = yaml.safe_load((repo / "params.yaml").read_text())
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump(with_value(good, key, value), sort_keys=False))
        done = dvc(repo, "repro")
        text = done.stdout + done.stderr
        assert done.returncode != 0 and message in text, text
        assert key not in text  # the finding: DVC does not say which key
        assert "Running stage" not in text  # DVC stopped before the validate stage
        assert message in (REPO / "docs" / "troubleshooting.md").read_text()
        check = subprocess.run([sys.executable, "-m", "pipeline.stages.validate"], cwd=repo, capture_output=True,
                               text=True, timeout=120)
        assert check.returncode == 2 and check.stderr.startswith(f"error: params: {key} = "), check.stderr
        assert len(check.stderr.splitlines()) == 1
    finally:
        profile.write(good, repo / "params.yaml")
