"""pipeline/claims/combine.py: "on every domain" (intersection-union) and "on some domain" (Holm)."""
from __future__ import annotations

import pytest

from pipeline.claims import holm, intersection_union


@pytest.mark.parametrize("verdicts, combined", [
    (["PASS", "PASS", "PASS"], "PASS"),
    (["PASS", "INCONCLUSIVE", "PASS"], "INCONCLUSIVE"),
    (["PASS", "INCONCLUSIVE", "FAIL"], "FAIL"),
    (["FAIL"], "FAIL"),
    (["INCONCLUSIVE", "INCONCLUSIVE"], "INCONCLUSIVE"),
])
def test_intersection_union_passes_only_when_every_domain_passes(verdicts, combined):
    assert intersection_union(verdicts) == combined
    assert intersection_union(iter(verdicts)) == combined  # any iterable


def test_intersection_union_rejects_nothing_and_unknown_verdicts():
    with pytest.raises(ValueError, match="no verdicts"):
        intersection_union([])
    with pytest.raises(ValueError, match="'OK'"):
        intersection_union(["PASS", "OK"])


def test_holm_steps_down_and_stops_at_the_first_kept_hypothesis():
    # m = 4, alpha 0.05: the sorted p-values face 0.0125, 0.0167, 0.025, 0.05 in turn.
    assert holm([0.01, 0.04, 0.015, 0.03]) == [True, False, True, False]  # 0.03 > 0.025: stop there
    assert holm([0.01, 0.012, 0.02, 0.04]) == [True, True, True, True]
    assert holm([0.013, 0.012, 0.2, 0.001]) == [True, True, False, True]
    assert holm([0.03, 0.03]) == [False, False]  # the first fails 0.025, so the second never faces 0.05
    assert holm({"VA": 0.001, "VB": 0.2}, alpha=0.1) == {"VA": True, "VB": False}
    assert holm([]) == []


def test_holm_lies_between_unadjusted_tests_and_bonferroni():
    assert holm([0.03, 0.04]) == [False, False]  # unadjusted at 0.05 would reject both
    assert holm([0.024, 0.04]) == [True, True]   # Bonferroni (0.025 each) would keep 0.04


def test_holm_rejects_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        holm([0.01], alpha=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.01, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([float("nan")])
