"""Fixtures of the report tests: the synthetic evaluation table with every metric evaluate writes."""
from __future__ import annotations

import pytest

from ..synthetic import through_csv, tidy


@pytest.fixture
def full(tmp_path):
    """tests/synthetic.py's table with every method and metric, one seed, written and read back."""
    return through_csv(tidy(new=True), tmp_path)
