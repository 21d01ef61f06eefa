"""kill -9 under real `dvc repro`, then resume: the same final result as an uninterrupted run (slow)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch



from .dvc_copy import build, checkpoints, dvc_ok, dvc_status, kill_when, psnrs, repro_after_kill, reports, same_safetensors


@pytest.mark.slow
def test_kill_9_during_pretrain_resumes_to_the_uninterrupted_result(kill_copy, clean_run, tmp_path):
    repo = kill_copy
    ckpt = checkpoints(repo) / "pretrain.pt"
    model = build(repo) / "models" / "pretrained.safetensors"
    kill_when(repo, ["repro", "pretrain"], ckpt, tmp_path / "killed.log")
    assert ckpt.is_file(), "the checkpoint vanished with the kill"
    assert not model.exists(), "the kill came after pretraining had finished: the test proved nothing"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert 1 <= state["epoch"] < 6, state["epoch"]

    done = repro_after_kill(repo, "pretrain")
    assert re.search(r"pretrain: resumed from checkpoint at epoch \d/6", done.stdout), done.stdout
    assert psnrs(repo) == psnrs(clean_run)
    assert (reports(repo) / "plots" / "pretrain_curve.csv").read_text() == \
        (reports(clean_run) / "plots" / "pretrain_curve.csv").read_text()
    assert same_safetensors(model, build(clean_run) / "models" / "pretrained.safetensors")
    assert not ckpt.exists(), "a finished stage leaves no checkpoint behind"
    assert dvc_status(repo, "pretrain") == {}


@pytest.mark.slow
def test_kill_9_during_an_adapt_cell_resumes_to_the_uninterrupted_result(kill_copy, clean_run, tmp_path):
    repo, cell = kill_copy, "VA-0.01"
    dvc_ok(repo, "repro", "pretrain")  # nothing to do when the test above ran
    ckpt = checkpoints(repo) / "sam" / cell / f"{cell}.pt"  # one checkpoint folder per cell
    result = build(repo) / "adapt" / "sam" / f"{cell}.json"
    # one process for every sam cell: killed while its first cell (VA-0.01) trains
    kill_when(repo, ["repro", "adapt"], ckpt, tmp_path / "killed.log")
    assert ckpt.is_file()
    assert not result.exists(), "the kill came after the cell had finished: the test proved nothing"
    assert 1 <= torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] < 6

    done = repro_after_kill(repo, "adapt")
    assert re.search(rf"sam {cell}: resumed from checkpoint at epoch \d/6", done.stdout), done.stdout
    ours = json.loads(result.read_text())
    theirs = json.loads((build(clean_run) / "adapt" / "sam" / f"{cell}.json").read_text())
    assert ours["domain_psnr"] == theirs["domain_psnr"]
    for key in ("memory_bytes", "memory_cost_pct"):
        assert ours[key] == theirs[key], key
    for key in ("kept_per_layer", "mask_moved_fraction", "curve"):
        assert ours["details"][key] == theirs["details"][key], key
    # the stored SAM: same tensors and metadata (not the same bytes: see test_same_content_gives_the_same_file_bytes)
    sam_file = Path("adapt") / "sam" / f"{cell}.safetensors"
    assert same_safetensors(build(repo) / sam_file, build(clean_run) / sam_file)
    assert not ckpt.exists()
    assert dvc_status(repo, "adapt") == {}
    # nothing half-written was ever read: every cell in the store is whole
    for stored in (repo / ".cells").glob("*/sam/*"):
        if not stored.name.startswith(".tmp-"):
            json.loads(next(stored.glob("*.json")).read_text())
