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


def decisions(ps: dict, verdicts: dict | None = None) -> dict:
    """Per-domain decisions with known p-values (and verdicts: PASS where p <= 0.05 unless given)."""
    from pipeline.claims import Decision, Estimate
    from pipeline.stats import Interval
    est = Estimate(Interval(1.0, 0.5, 1.5, 3), "3 seeds, Student-t")
    verdicts = verdicts or {}
    return {k: Decision(est, verdicts.get(k, "PASS" if p is not None and p <= 0.05 else "INCONCLUSIVE"), p)
            for k, p in ps.items()}


def test_some_domain_is_holm_on_the_per_domain_p_values():
    from pipeline.claims import some_domain
    # m = 4: 0.01 <= 0.0125, 0.015 <= 0.0167, then 0.03 > 0.025 stops; VP (0.04) is never reached.
    assert some_domain(decisions({"VA": 0.01, "VP": 0.04, "VC": 0.015, "VH": 0.03})) == ("PASS", ["VA", "VC"])
    # each below 0.05 alone, yet Holm keeps both: 0.03 > 0.025
    assert some_domain(decisions({"VA": 0.03, "VP": 0.04})) == ("INCONCLUSIVE", [])
    every_fails = decisions({"VA": 1.0, "VP": 0.9}, {"VA": "FAIL", "VP": "FAIL"})
    assert some_domain(every_fails) == ("FAIL", [])
    one_open = decisions({"VA": 1.0, "VP": 0.9}, {"VA": "FAIL", "VP": "INCONCLUSIVE"})
    assert some_domain(one_open) == ("INCONCLUSIVE", [])


def test_some_domain_without_p_values_takes_the_point_estimates():
    from pipeline.claims import some_domain
    points = decisions({"VA": None, "VP": None}, {"VA": "FAIL", "VP": "PASS"})
    assert some_domain(points) == ("PASS", ["VP"])
    with pytest.raises(ValueError, match="no domains"):
        some_domain({})


def test_the_per_domain_block_gives_both_combinations_and_the_reading():
    from pipeline.claims import EVERY, SOME, per_domain_block
    found = decisions({"VA": 0.01, "VP": 0.5, "VC": 0.9}, {"VA": "PASS", "VP": "INCONCLUSIVE", "VC": "FAIL"})
    block = per_domain_block(found, EVERY)
    assert (block["every_domain"], block["some_domain"], block["holm_shown"]) == ("FAIL", "PASS", ["VA"])
    assert block["status"] == "FAIL" and per_domain_block(found, SOME)["status"] == "PASS"
    assert block["domains"]["VC"] == {"mean": 1.0, "ci95": [0.5, 1.5], "n": 3, "over": "3 seeds, Student-t",
                                      "p": 0.9, "status": "FAIL"}
    with pytest.raises(ValueError, match="reading"):
        per_domain_block(found, "most domains")
