"""pipeline/claims/guarantees.py: C1, ZF, C2 and C4 on a tidy table with known numbers."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline import claims

from ..synthetic import BASE_BYTES, DOMAINS, EQUALIZER_BYTES, memory_bytes, sam_rows, through_csv, tidy


def test_c1_fails_on_a_misalignment_of_1e_9(tmp_path):
    raw = tidy()
    raw.loc[sam_rows(raw, "misalignment", 0.01).idxmax(), "value"] = 1e-9
    c1 = claims.c1_zero_misalignment(through_csv(raw, tmp_path), {})
    assert c1["status"] == "FAIL"
    assert c1["measured"]["max_abs_misalignment_db"] == {"0.001": 0.0, "0.01": 1e-9}
    assert c1["summary"] == "max |misalignment| per γ: 0.1 %: 0 dB, 1 %: 1e-09 dB"


def test_c1_also_checks_the_unrounded_maximum_of_evaluate_json(df):
    """The CSV has 6 decimals; evaluate.json's max_abs_misalignment is exact."""
    summary = {"sam_gamma_0.001": {"max_abs_misalignment": 0.0}, "sam_gamma_0.01": {"max_abs_misalignment": 3e-8}}
    assert claims.c1_zero_misalignment(df, summary)["status"] == "FAIL"
    summary["sam_gamma_0.01"]["max_abs_misalignment"] = 0.0
    assert claims.c1_zero_misalignment(df, summary)["status"] == "PASS"


def test_c2_fails_when_one_domain_costs_1_2_percent_at_gamma_one_percent(tmp_path):
    raw = tidy()
    raw.loc[sam_rows(raw, "memory_cost", 0.01).idxmax(), "value"] = 1.2
    c2 = claims.c2_memory_below_one_percent(through_csv(raw, tmp_path), {})
    assert c2["status"] == "FAIL" and c2["measured"]["max_memory_cost_pct"]["0.01"] == 1.2


def test_c4_needs_misalignment_or_a_full_copy_on_every_route(tmp_path, df):
    c4 = claims.c4_alignment_is_paid(df, {})
    assert c4["status"] == "PASS"
    copy = c4["measured"]["tuning_copy"]
    assert (copy["mean_misalignment_db"], copy["memory_cost_pct"], copy["pays"]) == (0.0, 100.0, True)
    assert c4["measured"]["tuning_retune"]["mean_misalignment_db"] == pytest.approx(1.0)
    assert c4["measured"]["tuning_retune"]["forgetting_db"] == pytest.approx({"VA": 5.5, "VP": 5.2, "VC": 5.1})
    # Re-tuning that keeps its agents aligned for free would break the guarantee.
    raw = tidy()
    retune = (raw["method"] == "tuning_retune") & (raw["metric"] == "misalignment")
    raw.loc[retune, "value"] = 0.0
    assert claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})["status"] == "FAIL"
    # ... as would a copy that costs less than the model ...
    raw = tidy()
    raw.loc[(raw["method"] == "tuning_copy") & (raw["metric"] == "memory_cost"), "value"] = 99.9
    assert claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})["status"] == "FAIL"
    # ... or an equalizer that stores nothing and leaves no misalignment.
    raw = tidy()
    eq = raw["method"] == "equalizer"
    raw.loc[eq & raw["metric"].isin(["memory_bytes", "memory_cost", "misalignment"]), "value"] = 0.0
    assert claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})["status"] == "FAIL"


def test_c4_states_the_equalizers_honest_cost_and_its_growth_with_k(tmp_path, df):
    """D = 3 domains: each agent stores 2 equalizers (0.25 % each), 0.5 % in all; K - 1 of them at K agents."""
    eq = claims.c4_alignment_is_paid(df, {})["measured"]["equalizer"]
    per_partner = 100 * EQUALIZER_BYTES / BASE_BYTES
    assert eq["agents"] == len(DOMAINS) and eq["memory_cost_pct"] == pytest.approx((len(DOMAINS) - 1) * per_partner)
    assert eq["per_partner_cost_pct"] == pytest.approx(per_partner)
    assert eq["cost_pct_at_1024_agents"] == pytest.approx(1023 * per_partner)
    k_copy = eq["agents_to_reach_a_full_copy"]
    assert (k_copy - 1) * per_partner >= 100 > (k_copy - 2) * per_partner
    sam_pct = 100 * memory_bytes("sam", 0.01, len(DOMAINS)) / BASE_BYTES
    k_sam = eq["agents_to_exceed_sam_pct"]
    assert (k_sam - 1) * per_partner > sam_pct >= (k_sam - 2) * per_partner
    c4 = claims.c4_alignment_is_paid(df, {})
    assert "less than a full copy" in c4["summary"] and f"from K = {k_copy} agents" in c4["summary"]
    assert "holds for tuning_copy only" in c4["definition"]
    # An equalizer that costs more than the model: the text says so instead.
    raw = tidy()
    rows = (raw["method"] == "equalizer") & (raw["metric"] == "memory_cost")
    raw.loc[rows, "value"] = 120.0
    c4 = claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})
    assert "at least a full copy already at K = 3" in c4["summary"] and "tuning_copy only" not in c4["summary"]


def switch_off_rows(ok: dict[tuple[str, int], bool]) -> pd.DataFrame:
    """What evaluate writes for the switch-off check: one row per (variant, seed) and link checked."""
    return pd.DataFrame([{"method": variant.split()[0], "variant": variant, "seed": seed, "metric": "switch_off_exact",
                          "value": float(holds)} for (variant, seed), holds in ok.items()])


def test_zf_names_every_cell_that_is_not_bit_for_bit():
    rows = switch_off_rows({("sam 0.01", 0): True, ("lora 0.01", 0): True, ("lora 0.01", 1): False})
    zf = claims.zf_switch_off_exact(rows, {})
    assert zf["status"] == "FAIL" and zf["kind"] == "guarantee"
    assert zf["measured"] == {"cells_checked": 3, "methods": ["lora", "sam"], "broken": ["lora 0.01 (seed 1)"]}
    assert zf["summary"] == "not bit for bit: lora 0.01 (seed 1)"
    zf = claims.zf_switch_off_exact(rows.iloc[:2], {})
    assert zf["status"] == "PASS" and zf["summary"] == "2 cells of lora, sam: every link switched off = W0 bit for bit"


def test_zf_states_the_image_count_the_evaluate_stage_checks():
    from pipeline import evaluation
    assert f"on the first {evaluation.EXACT_IMAGES} base test images" in claims.ZF.definition
