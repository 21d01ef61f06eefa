"""pipeline/claims/__init__.py: every claim checked in the paper's order (check_all, measure_all)."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline import claims

from ..synthetic import entry


def test_claims_on_known_numbers(df):
    entries = claims.check_all(df, {})
    assert [e["id"] for e in entries] == ["C1", "C2", "C3", "C4", "C5", "H"]
    assert {e["id"]: e["kind"] for e in entries} == {"C1": "guarantee", "C2": "guarantee", "C3": "finding",
                                                     "C4": "guarantee", "C5": "finding", "H": "finding"}
    for e in entries:
        assert set(e) >= {"id", "statement", "definition", "measured", "status", "kind"}
    c1 = entry(entries, "C1")
    assert c1["status"] == "PASS" and c1["measured"]["max_abs_misalignment_db"] == {"0.001": 0.0, "0.01": 0.0}
    c2 = entry(entries, "C2")
    assert c2["status"] == "PASS"
    assert c2["measured"]["max_memory_cost_pct"] == pytest.approx({"0.001": 0.06, "0.01": 0.6})
    c3 = entry(entries, "C3")
    assert c3["measured"]["sparsity"] == "0.01"
    assert c3["measured"]["gap_db"] == pytest.approx({"VA": 0.5, "VP": 0.2, "VC": 0.1})
    assert c3["measured"]["mean_gap_db"] == pytest.approx(0.8 / 3) and c3["status"] == "PASS"
    c5 = entry(entries, "C5")
    assert c5["measured"]["delta_db"] == pytest.approx({"VA": 4.0, "VP": 4.0, "VC": 4.0}) and c5["status"] == "PASS"


def test_zf_comes_second_when_evaluate_measured_the_switch_off(df):
    rows = pd.DataFrame([{"method": "sam", "sparsity": 0.01, "seed": 0, "metric": "switch_off_exact", "domain": "base",
                          "tx": "", "rx": "", "value": 1.0, "unit": "1", "variant": "sam 0.01"}])
    results = claims.measure_all(pd.concat([df, rows], ignore_index=True), {})
    assert [r.claim.id for r in results] == ["C1", "ZF", "C2", "C3", "C4", "C5", "H"]
    assert all(isinstance(r.outcome, claims.Outcome) for r in results)
    assert results[1].outcome.verdict == "PASS" and results[1].outcome.measured["cells_checked"] == 1


def test_failed_guarantees_names_guarantees_only(df):
    entries = claims.check_all(df, {})
    assert claims.failed_guarantees(entries) == []
    entry(entries, "C4")["status"] = "FAIL"
    entry(entries, "C3")["status"] = "FAIL"  # a finding: not a failed guarantee
    assert claims.failed_guarantees(entries) == ["C4"]
