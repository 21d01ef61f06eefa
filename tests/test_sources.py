"""The source a computation runs (pipeline.sources): its closure follows imports, deferred ones too, and
its digest moves with the code, not with comments or docstrings."""
from __future__ import annotations

import shutil

import pytest

from pipeline import cells, sources

from .conftest import REPO


def rel(paths) -> set[str]:
    return {p.relative_to(sources.ROOT).as_posix() for p in paths}


def test_the_closure_follows_deferred_imports_and_stops_at_the_registry():
    sam = rel(sources.closure("pipeline.methods.sam"))
    assert {"pipeline/methods/sam.py", "pipeline/sam/layer.py", "pipeline/train.py", "pipeline/config.py"} <= sam
    assert "pipeline/methods/__init__.py" in sam  # the package runs before its module
    assert "pipeline/methods/lora.py" not in sam  # found by name at run time only, never imported by sam
    lora = rel(sources.closure("pipeline.methods.lora"))
    assert "pipeline/methods/sam.py" not in lora and "pipeline/sam/layer.py" not in lora  # NEEDS sam's files, not its code


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the pipeline package that the digests read instead of the repository's."""
    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sources, "ROOT", tmp_path)
    return tmp_path / "pipeline"


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_comments_and_docstrings_leave_every_digest_alone(tree):
    before = {m: cells.code_digest(m) for m in ("sam", "lora", "tuning")}
    _edit(tree / "train.py", '"""Training and evaluation loops', '"""Reworded: training and evaluation loops')
    _edit(tree / "methods" / "lora.py", "\nNAME = ", "\n# a comment a reader added\nNAME = ")
    assert {m: cells.code_digest(m) for m in before} == before


def test_a_code_change_re_keys_exactly_the_cells_that_run_it(tree):
    before = {m: cells.code_digest(m) for m in ("sam", "lora", "tuning", "bitfit")}
    _edit(tree / "methods" / "lora.py", "\nNAME = ", "\nEXTRA = 1\nNAME = ")
    after = {m: cells.code_digest(m) for m in before}
    assert after["lora"] != before["lora"]
    assert {m: after[m] for m in ("sam", "tuning", "bitfit")} == {m: before[m] for m in ("sam", "tuning", "bitfit")}
    _edit(tree / "train.py", "\ndef fit(", "\nSHARED = 2\n\n\ndef fit(")  # shared code: every method re-keys
    assert all(cells.code_digest(m) != after[m] for m in before)
