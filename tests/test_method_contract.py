"""The contract every adaptation method keeps, checked over ``pipeline.methods.registry()``: a new
method file gets these tests for free.

- its cells' metrics have exactly the keys ``CELL_KEYS``;
- the unadapted agent (``BASE_AGENT``) of each of its variants is the pretrained model, bit for bit;
- ``memory_bytes`` is a byte count of files the adapt stage wrote (their size or their tensor bytes);
- adapting a cell writes only the cell's own outputs: the pretrained model and every other cell's
  files stay byte-identical (training changes only the method's own parameters).
"""
from __future__ import annotations

import hashlib
from typing import get_args
import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.methods import BASE_AGENT, CELL_KEYS, Context, registry
from pipeline.selection import cell_grid
from pipeline.tracking import Tracker

from .conftest import ADAPTED_DOMAINS, ADAPTED_SPARSITIES, REPO

METHODS = sorted(registry())
CPU = torch.device("cpu")


def cells(name: str) -> list[tuple[str, float | None]]:
    from pipeline.config import parse
    from pipeline.profile import render, shrink

    from .conftest import adapted_raw
    return cell_grid(parse(adapted_raw(shrink(render("quick")))), registry()[name])


def context(project) -> Context:
    from pipeline.train import setup_runtime
    setup_runtime(project.params)
    return Context(project.params, project.paths, CPU)


def test_every_method_file_is_found_under_its_own_name():
    files = sorted(f.stem for f in (REPO / "pipeline" / "methods").glob("*.py") if f.stem != "__init__")
    assert files == METHODS == ["base_control", "bitfit", "delta_topk", "equalizer", "lora", "sam", "tuning"]
    assert all(registry()[name].__name__ == f"pipeline.methods.{name}" for name in METHODS)


def test_the_schema_has_a_block_for_every_method_config_and_the_profiles_list_every_method():
    from pipeline.config import Params
    from pipeline.profile import render
    with_block = sorted(n for n, m in registry().items() if hasattr(m, "Config"))
    assert with_block == ["bitfit", "delta_topk", "equalizer", "lora", "tuning"]
    assert all(get_args(Params.model_fields[n].annotation) == (registry()[n].Config, type(None)) for n in with_block)
    assert sorted(render("quick")["adapt"]["methods"]) == METHODS


@pytest.mark.parametrize("name", METHODS)
def test_cells_have_exactly_the_shared_keys(adapted, name):
    for domain, sparsity in cells(name):
        result = json.loads(adapted.paths.cell(name, domain, sparsity).metrics.read_text())
        assert tuple(result) == CELL_KEYS, (name, domain, sparsity)
        assert (result["method"], result["domain"], result["sparsity"]) == (name, domain, sparsity)


@pytest.mark.parametrize("name", METHODS)
def test_the_unadapted_agent_is_the_pretrained_model(adapted, name):
    ctx = context(adapted)
    x = ctx.split("base_test")[:8].float() / 255
    pre = ctx.pretrained()
    reference = ctx.link(pre, pre)(x, torch.Generator().manual_seed(5))
    for sparsity in {s for _, s in cells(name)}:
        for variant in registry()[name].variants(ctx, sparsity):
            with torch.no_grad():
                got = variant.pair(BASE_AGENT, BASE_AGENT)(x, torch.Generator().manual_seed(5))
            assert torch.equal(got, reference), (variant.method, sparsity)


def _byte_counts(files) -> set[int]:
    """Every byte count a stored agent may be charged from these files: each file's size or tensor
    bytes, alone or with one other file's (e.g. an adapted copy plus the equalizers)."""
    single = set()
    for f in files:
        single.add(f.stat().st_size)
        single.add(sum(t.numel() * t.element_size() for t in load_file(str(f)).values()))
    return single | {a + b for a, b in itertools.combinations(sorted(single), 2)}


@pytest.mark.parametrize("name", METHODS)
def test_memory_bytes_are_bytes_of_files_the_adapt_stage_wrote(adapted, name):
    counts = _byte_counts(sorted(adapted.paths.build.glob("adapt/*/*.safetensors")))
    for domain, sparsity in cells(name):
        result = json.loads(adapted.paths.cell(name, domain, sparsity).metrics.read_text())
        assert result["memory_bytes"] in counts, (name, domain, sparsity, result["memory_bytes"])
        base_bytes = 4 * sum(t.numel() for t in load_file(str(adapted.paths.pretrained)).values())
        assert result["memory_cost_pct"] == pytest.approx(100 * result["memory_bytes"] / base_bytes, rel=1e-12)


def _digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", METHODS)
def test_adapting_a_cell_writes_only_its_own_outputs(adapted, name):
    """One cell recomputed from scratch (its stored copy removed): only its own files may change."""
    from pipeline.paths import Cell
    domain, sparsity = cells(name)[-1]
    cell = adapted.paths.cell(name, domain, sparsity)
    before, result = _digests(adapted.paths.root), json.loads(cell.metrics.read_text())
    out = Cell(adapted.root / "elsewhere", cell.name, cell.checkpoints)
    out.folder.mkdir()
    ctx = context(adapted)
    ctx.checkpoints = out.checkpoints
    torch.manual_seed(adapted.params.adapt.seed)
    with Tracker(adapted.params, adapted.paths, "contract", cell.name) as tracker:
        again = registry()[name].adapt(ctx, domain, sparsity, out, tracker)
    scratch = ("elsewhere/", "mlflow.db", out.checkpoints.relative_to(adapted.root).as_posix() + "/")
    after = {f: d for f, d in _digests(adapted.paths.root).items() if not f.startswith(scratch)}
    assert after == {f: d for f, d in before.items() if not f.startswith("mlflow.db")}, \
        f"adapting {name} {cell.name} wrote outside its cell: {sorted(set(after) ^ set(before))}"
    written = sorted(p.name for p in out.folder.iterdir())
    assert written and all(p.startswith(cell.name) for p in written), written
    for f in written:  # the same cell gives the same files (what the adapt stage stored)
        if f.endswith(".safetensors"):
            assert (out.folder / f).read_bytes() == (cell.folder / f).read_bytes(), f
    assert (again["domain_psnr"], again["memory_bytes"]) == (result["domain_psnr"], result["memory_bytes"])
