"""Determinism: the same content gives the same file bytes; two clean `dvc repro` runs give the same
metrics and leave nothing to do (slow)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from .dvc_copy import dvc_ok, dvc_status, make_copy, reports


SAM_SPARSITY = 0.01


# ------------------------------------------------------------------------------ byte-reproducible files
@pytest.mark.parametrize("what", ["sam", "model"])
def test_same_content_gives_the_same_file_bytes(tmp_path, tiny_params, what):
    from pipeline.config import parse
    from pipeline.sam import attach_sam, base_fingerprint, sam_state, save_sam
    from pipeline.train import build_model, save_model
    params = parse(tiny_params)
    torch.manual_seed(0)
    model = build_model(params)
    fp, state = base_fingerprint(model), sam_state(attach_sam(copy.deepcopy(model), SAM_SPARSITY))
    blobs = set()
    for i in range(16):  # 16 writes: an unordered 2-key header repeats by chance with p = 2**-15
        path = tmp_path / f"{what}-{i}.safetensors"
        if what == "model":
            save_model(model, path, {"profile": params.profile, "source": params.data.source})
        else:
            save_sam(path, state, sparsity=SAM_SPARSITY, allocation="linear", base_fingerprint=fp,
                     extra_meta={"domain": "VA"})
        blobs.add(path.read_bytes())
    assert len(blobs) == 1, f"{len(blobs)} different files for one content"



@pytest.mark.slow
def test_two_clean_runs_are_identical_and_leave_nothing_to_do(clean_run, tmp_path, mlflow_template):
    first = clean_run
    assert dvc_status(first, "evaluate") == {}, "dvc status right after a run: stages still to run"
    second = make_copy(tmp_path / "repo", mlflow_template)
    dvc_ok(second, "repro", "evaluate")
    assert dvc_status(second, "evaluate") == {}
    again = dvc_ok(second, "repro", "evaluate")
    assert "Running stage" not in again.stdout, f"`dvc repro` right after a run re-ran stages:\n{again.stdout}"

    csv_a, csv_b = (reports(c) / "metrics" / "evaluation.csv" for c in (first, second))
    assert csv_a.read_bytes() == csv_b.read_bytes()
    a, b = (json.loads((reports(c) / "metrics" / "evaluate.json").read_text()) for c in (first, second))
    prov_a, prov_b = a.pop("provenance"), b.pop("provenance")
    assert a == b
    assert prov_a["mlflow_run_id"] != prov_b["mlflow_run_id"]
    assert "not tracked" not in (prov_a["mlflow_run_id"], prov_b["mlflow_run_id"])
