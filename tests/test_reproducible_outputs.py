"""Outputs are a pure function of their inputs: two clean `dvc repro` runs of the same commit and params
(two copies of the project) give the same dvc.lock hash for every output but the listed ones that name
their run or the clock (pipeline.paths.VARYING_OUTPUTS)."""
from __future__ import annotations

from fnmatch import fnmatch

import pytest
import yaml

from pipeline.paths import VARYING_OUTPUTS

from .dvc_copy import RUN, dvc_ok, make_copy


def locked_outputs(repo) -> dict[str, str]:
    """Every output's hash in dvc.lock (a folder's: the hash of its listing)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for st in lock.values() for kind in ("outs",) for o in st.get(kind, [])}


def varying(path: str) -> bool:
    """A listed file, or a folder output holding listed files (its hash covers theirs: tables/)."""
    prefix = f"reports/{RUN}/"
    rel = path[len(prefix):]
    return path.startswith(prefix) and any(fnmatch(rel, pat) or pat.startswith(rel + "/") for pat in VARYING_OUTPUTS)


def test_the_varying_list_matches_report_paths_only():
    assert varying(f"reports/{RUN}/tables/main.md") and varying(f"reports/{RUN}/metrics/pretrain.json")
    assert varying(f"reports/{RUN}/tables")  # the folder output holding the listed tables/*.md
    assert not varying(f"reports/{RUN}/tables/main.csv") and not varying(f"build/{RUN}/data")
    assert not varying(f"reports/{RUN}/figures") and not varying(f"build/{RUN}/adapt")
    assert not varying(f"reports/{RUN}/metrics/evaluation.csv")


@pytest.mark.slow
def test_two_clean_runs_give_the_same_hash_for_every_output_but_the_listed_ones(tmp_path, mlflow_template):
    first, second = (make_copy(tmp_path / name, mlflow_template) for name in ("one", "two"))
    for repo in (first, second):
        dvc_ok(repo, "repro")
    a, b = locked_outputs(first), locked_outputs(second)
    assert a.keys() == b.keys() and len(a) > 20
    differ = sorted(p for p in a if a[p] != b[p])
    assert [p for p in differ if not varying(p)] == [], differ
    assert any(varying(p) for p in differ)  # the list is not empty for nothing: run ids do differ
