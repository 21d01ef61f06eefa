"""pipeline/claims/render.py: claims.json and claims.md, and the text of an interval."""
from __future__ import annotations

import json
import math

from pipeline import claims
from pipeline.claims import render
from pipeline.stats import Interval

from ..synthetic import write


def test_claims_files(tmp_path, df):
    write(tmp_path, claims.check_all(df, {}))
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert doc["provenance"]["mlflow_run_id"] == "r1" and len(doc["claims"]) == 6
    md = (tmp_path / "claims.md").read_text()
    assert "`abc`" in md.split("|")[0]  # provenance before the table
    assert "| C1 | guarantee |" in md and "## H:" in md and "argmax_baseline: tuning_retune" in md
    assert "gap_db: VA: 0.5, VP: 0.2, VC: 0.1" in md


def test_an_entry_has_the_claims_json_fields_in_order(df):
    result = claims.measure_all(df, {})[0]
    assert list(render.entry(result)) == ["id", "kind", "statement", "definition", "measured", "status", "summary"]
    assert render.entry(result)["definition"] == claims.C1.definition  # C1's definition states nothing measured


def test_markdown_escapes_pipes_in_the_table_only():
    entry = {"id": "C1", "kind": "guarantee", "statement": "max |x| = 0", "definition": "|x|", "measured": {"a": 1},
             "status": "PASS", "summary": "|x| = 0"}
    md = render.claims_markdown([entry], {"profile": "p", "data_source": "s", "git_commit": "c", "mlflow_run_id": "r"})
    assert "| C1 | guarantee | max \\|x\\| = 0 | \\|x\\| = 0 | **PASS** |" in md
    assert "## C1: max |x| = 0" in md and "- a: 1" in md


def test_interval_text_says_what_the_interval_is_over():
    est = claims.Estimate(Interval(0.27, 0.1, 0.44, 3), "3 seeds, Student-t")
    assert render.interval_text(est, "dB") == "+0.27 dB [95 % CI +0.10, +0.44; 3 seeds, Student-t]"
    assert render.interval_text(est, "dB", over=False) == "+0.27 dB [95 % CI +0.10, +0.44]"
    point = claims.Estimate(Interval(0.27, math.nan, math.nan, 1), claims.POINT_ONLY)
    assert render.interval_text(point, "dB") == f"+0.27 dB ({claims.POINT_ONLY})"


def test_claims_md_states_the_per_domain_rule_and_the_gains(tmp_path, df):
    entries = claims.check_all(df, {})
    claims.write_claims(entries, tmp_path, {"profile": "p", "data_source": "s", "git_commit": "c",
                                            "mlflow_run_id": "r"}, claims.main_gains(df))
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert list(doc) == ["provenance", "claims", "gains"] and doc["gains"]["bases"]["combined"] is False
    md = (tmp_path / "claims.md").read_text()
    per = md.split("## Findings per domain")[1].split("## Main gains")[0]
    assert "intersection-union" in per and "Holm's step-down procedure" in per and "no multiplicity correction" in per
    assert "| C3 | every domain | VA +0.50 dB (point estimate): INCONCLUSIVE; VP +0.20 dB (point estimate): PASS" in per
    assert "| H | some domain |" in per and "- H, some domain: \"up to 29.7 %\"" in per
    assert "none, one base only" in md.split("## Main gains")[1].split("## C1")[0]
    write(tmp_path, entries)  # without gains: no gains key, the per-domain section all the same
    assert "gains" not in json.loads((tmp_path / "claims.json").read_text())
    assert "## Main gains" not in (tmp_path / "claims.md").read_text()
