"""pipeline/claims/findings.py: the verdicts of C3, C5 and H from 95 % intervals (over seeds, or a
paired bootstrap over test images with one seed), and which γ stands in for 1 %."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import claims, stats

from ..synthetic import DOMAINS, domain_psnr, half_width, shift_domain, through_csv, tidy

SEEDS = (0, 1, 2)


def sam_shift(scale: float, tuned: float = 0.0):
    """sam's domain PSNR moves by (-1, 0, +1) x scale over the seeds; tuning_copy's by ``tuned``."""
    return lambda method, seed: (seed - 1) * scale if method == "sam" else tuned if method == "tuning_copy" else 0.0


@pytest.mark.parametrize("scale, tuned, status", [(0.05, 0.0, "PASS"), (0.2, 0.0, "INCONCLUSIVE"),
                                                  (0.05, 1.0, "FAIL")])
def test_c3_verdict_from_the_interval_over_seeds(tmp_path, scale, tuned, status):
    df = through_csv(tidy(seeds=SEEDS, shift=sam_shift(scale, tuned)), tmp_path)
    c3 = claims.c3_close_to_tuning(df, {})
    gap = np.mean([domain_psnr("tuning_copy", None, i) - domain_psnr("sam", 0.01, i) for i in range(3)]) + tuned
    per_seed = [gap - (s - 1) * scale for s in SEEDS]
    interval = c3["measured"]["mean_gap_interval"]
    assert interval["n"] == 3 and interval["mean"] == pytest.approx(gap, abs=1e-4)
    assert interval["ci95"] == pytest.approx([gap - half_width(per_seed), gap + half_width(per_seed)], abs=1e-4)
    assert c3["status"] == status and "3 seeds" in c3["summary"] and "95 % CI" in c3["summary"]


def test_c5_is_inconclusive_when_one_domain_straddles_zero(tmp_path):
    def shift(method, seed):  # sam on VC only 0.05 dB above the pretrained model on average, +-1 dB per seed
        return (seed - 1) * 1.0 if method == "sam" else 0.0

    raw = tidy(seeds=SEEDS, shift=shift)
    vc_sam = (raw["method"] == "sam") & (raw["metric"] == "domain_psnr") & (raw["domain"] == "VC")
    raw.loc[vc_sam, "value"] -= domain_psnr("sam", 0.01, 2) - domain_psnr("pretrained", None, 2) - 0.05
    c5 = claims.c5_improves_on_pretrained(through_csv(raw, tmp_path), {})
    assert c5["status"] == "INCONCLUSIVE"
    assert c5["measured"]["delta_interval"]["VC"]["status"] == "INCONCLUSIVE"
    assert c5["measured"]["delta_interval"]["VA"]["status"] == "PASS"  # 4 dB +- 2.5
    raw.loc[vc_sam, "value"] -= 10.0  # now clearly below the pretrained model on VC
    assert claims.c5_improves_on_pretrained(through_csv(raw, tmp_path), {})["status"] == "FAIL"


def test_c5_outcome_holds_one_sub_outcome_per_domain(df):
    outcome = claims.C5.measure(df, {}, None)
    assert list(outcome.domains) == DOMAINS and {o.verdict for o in outcome.domains.values()} == {"PASS"}
    assert outcome.domains["VA"].estimate.interval.mean == pytest.approx(4.0) and outcome.verdict == "PASS"


def per_image_values(n: int = 40, vc_gain: float = 4.0, noise: float = 1.0) -> claims.PerImage:
    """One seed; per image: pretrained ~ its domain PSNR, sam = pretrained + gain + noise (VC: ``vc_gain``)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for i, d in enumerate(DOMAINS):
        base = domain_psnr("pretrained", None, i) + rng.normal(0, 2, n)
        gain = vc_gain if d == "VC" else 4.0
        arrays[f"pretrained||0|domain_psnr|{d}|{d}|{d}"] = base
        arrays[f"sam|0.01|0|domain_psnr|{d}|{d}|{d}"] = base + gain + rng.normal(0, noise, n)
        arrays[f"tuning_copy||0|domain_psnr|{d}|{d}|{d}"] = base + 4.5 + rng.normal(0, noise, n)
    return claims.PerImage(arrays)


def test_one_seed_with_per_image_values_gets_a_paired_bootstrap(df):
    values = per_image_values(vc_gain=0.1, noise=3.0)
    c5 = claims.c5_improves_on_pretrained(df, {}, values)
    vc = c5["measured"]["delta_interval"]["VC"]
    sam, pre = values.domain("sam", "VC", 0, 0.01), values.domain("pretrained", "VC", 0)
    expected = stats.paired_bootstrap(sam, pre)
    assert vc["ci95"] == pytest.approx([expected.lo, expected.hi], abs=1e-4) and vc["n"] == 40
    assert vc["status"] == "INCONCLUSIVE" and c5["status"] == "INCONCLUSIVE"
    assert "paired bootstrap over 40 test images" in c5["summary"]
    # C3: the bootstrap of the per-image gap averaged over domains (one image of each domain per index)
    c3 = claims.c3_close_to_tuning(df, {}, values)
    tuned = np.mean([values.domain("tuning_copy", d, 0) for d in DOMAINS], axis=0)
    sam = np.mean([values.domain("sam", d, 0, 0.01) for d in DOMAINS], axis=0)
    expected = stats.paired_bootstrap(tuned, sam)
    assert c3["measured"]["mean_gap_interval"]["ci95"] == pytest.approx([expected.lo, expected.hi], abs=1e-4)


def test_one_seed_without_per_image_values_is_a_point_estimate(df):
    c3 = claims.c3_close_to_tuning(df, {})
    assert c3["measured"]["mean_gap_interval"]["n"] == 1 and claims.POINT_ONLY in c3["summary"]
    assert c3["status"] == "PASS"  # 0.27 dB < 0.5 dB decides without an interval


def test_headline_is_the_largest_relative_gain_over_both_baselines(df):
    h = claims.headline_improvement(df, {})
    # sam at 1 %: VA 24; tuning_retune VA 19: 100 * 5 / 19 = 26.3 %, the largest of the six ratios.
    assert h["measured"]["max_improvement_pct"] == pytest.approx(100 * 5 / 19)
    assert (h["measured"]["argmax_domain"], h["measured"]["argmax_baseline"]) == ("VA", "tuning_retune")
    assert h["measured"]["improvement_pct"]["pretrained"]["VC"] == pytest.approx(100 * 4 / 22)
    assert h["measured"]["paper_pct"] == 29.7 and h["status"] == "FAIL" and h["kind"] == "finding"


def test_headline_interval_is_at_the_argmax_over_seeds(tmp_path):
    df = through_csv(tidy(seeds=SEEDS, shift=sam_shift(0.5)), tmp_path)
    h = claims.headline_improvement(df, {})
    assert (h["measured"]["argmax_domain"], h["measured"]["argmax_baseline"]) == ("VA", "tuning_retune")
    gains = [100 * (24.0 + (s - 1) * 0.5 - 19.0) / 19.0 for s in SEEDS]
    interval = h["measured"]["max_improvement_interval"]
    assert interval["mean"] == pytest.approx(np.mean(gains), abs=1e-4)
    assert interval["ci95"][1] == pytest.approx(np.mean(gains) + half_width(gains), abs=1e-4)
    assert h["status"] == "INCONCLUSIVE"  # 26.3 % +- 6.5 % straddles 29.7 %


def test_one_percent_claims_say_which_gamma_they_used_when_one_percent_is_missing(tmp_path):
    raw = tidy()
    c3 = claims.c3_close_to_tuning(through_csv(raw[~np.isclose(raw["sparsity"], 0.01)], tmp_path), {})
    assert c3["measured"]["sparsity"] == "0.001" and "0.1 %" in c3["measured"]["sparsity_note"]
    assert c3["definition"].endswith("; the largest γ below it is used: 0.1 %.")


# ------------------------------------------------------------------------------------ per domain
def t_p(values, threshold, claimed):
    """Twice the one-sided Student-t p-value, from scipy (a check of pipeline.stats.t_p_value)."""
    from scipy import stats as sps
    x = np.asarray(values, dtype=float)
    t = (x.mean() - threshold) / (x.std(ddof=1) / np.sqrt(len(x))) * (1 if claimed == "above" else -1)
    return min(1.0, 2 * float(sps.t.sf(t, len(x) - 1)))


def test_c3_per_domain_a_straddling_domain_makes_every_domain_inconclusive(tmp_path):
    # gaps VA 0.5, VP 0.2, VC 0.1, each +-0.03 per seed: VA straddles 0.5, the mean gap (0.27) passes
    df = through_csv(tidy(seeds=SEEDS, shift=sam_shift(0.03)), tmp_path)
    c3 = claims.c3_close_to_tuning(df, {})
    block = c3["measured"]["per_domain"]
    assert c3["status"] == "PASS" and block["reading"] == "every domain"
    assert {d: x["status"] for d, x in block["domains"].items()} == {"VA": "INCONCLUSIVE", "VP": "PASS", "VC": "PASS"}
    assert block["every_domain"] == "INCONCLUSIVE" == block["status"]
    assert block["some_domain"] == "PASS" and block["holm_shown"] == ["VP", "VC"]
    vp = [0.2 - (s - 1) * 0.03 for s in SEEDS]
    assert block["domains"]["VP"]["p"] == pytest.approx(t_p(vp, 0.5, "below"), abs=1e-4)
    assert block["domains"]["VP"]["ci95"][1] == pytest.approx(0.2 + half_width(vp), abs=1e-4)


def test_c3_per_domain_a_failing_domain_makes_every_domain_fail_beside_a_passing_mean(tmp_path):
    raw = shift_domain(tidy(seeds=SEEDS, shift=sam_shift(0.03)), "tuning_copy", "VA", 0.3)  # VA's gap 0.8 dB
    c3 = claims.c3_close_to_tuning(through_csv(raw, tmp_path), {})
    block = c3["measured"]["per_domain"]
    assert c3["status"] == "PASS" and c3["measured"]["mean_gap_interval"]["ci95"][1] < 0.5  # the mean: 0.37 dB
    assert block["domains"]["VA"]["status"] == "FAIL" and block["domains"]["VA"]["p"] == 1.0
    assert block["every_domain"] == "FAIL" == block["status"] and block["some_domain"] == "PASS"
    assert claims.C3.measure(through_csv(raw, tmp_path), {}, None).domains["VA"].verdict == "FAIL"


def test_c5_per_domain_keeps_its_headline_and_adds_the_mean_and_holm(tmp_path):
    df = through_csv(tidy(seeds=SEEDS, shift=sam_shift(1.0)), tmp_path)  # +4 dB +-1 per seed, every domain
    # +-0.5 dB per seed: VA and VP at p = 0.005, which Holm rejects (0.0167, 0.025); VC: +0.05 +-0.5 dB
    raw = shift_domain(tidy(seeds=SEEDS, shift=sam_shift(0.5)), "sam", "VC", -3.95)
    c5 = claims.c5_improves_on_pretrained(through_csv(raw, tmp_path), {})
    block = c5["measured"]["per_domain"]
    assert c5["status"] == block["every_domain"] == "INCONCLUSIVE" and block["some_domain"] == "PASS"
    assert block["domains"]["VC"]["p"] > 0.05 and block["holm_shown"] == ["VA", "VP"]
    assert c5["measured"]["mean_delta_interval"]["status"] == "PASS"
    delta = [4.0 + (s - 1) * 1.0 for s in SEEDS]
    assert claims.c5_improves_on_pretrained(df, {})["measured"]["per_domain"]["domains"]["VA"]["p"] == pytest.approx(
        t_p(delta, 0.0, "above"), abs=1e-4)


def test_c5_per_domain_p_value_with_one_seed_is_the_bootstraps(df):
    values = per_image_values(vc_gain=0.1, noise=3.0)
    vc = claims.c5_improves_on_pretrained(df, {}, values)["measured"]["per_domain"]["domains"]["VC"]
    sam, pre = values.domain("sam", "VC", 0, 0.01), values.domain("pretrained", "VC", 0)
    assert vc["p"] == pytest.approx(stats.bootstrap_p_value(sam, pre, 0.0, "above"), abs=1e-4)
    assert vc["p"] > 0.05 and vc["status"] == "INCONCLUSIVE" and "paired bootstrap" in vc["over"]


def test_h_per_domain_is_holm_over_domains_and_baselines(tmp_path):
    def table(noise):  # sam +2 dB, +-noise per seed: against tuning_retune VA 36.8 %, VP 35 %, VC 33.3 %
        return through_csv(tidy(seeds=SEEDS, shift=lambda m, s: 2.0 + (s - 1) * noise if m == "sam" else 0.0),
                           tmp_path)

    block = claims.headline_improvement(table(0.5), {})["measured"]["per_domain"]
    assert block["reading"] == "some domain" and list(block["domains"]["VA"]) == ["pretrained", "tuning_retune"]
    va = block["domains"]["VA"]["tuning_retune"]
    gains = [100 * (26.0 + (s - 1) * 0.5 - 19.0) / 19.0 for s in SEEDS]
    assert va["p"] == pytest.approx(t_p(gains, 29.7, "above"), abs=1e-4)
    # its own interval clears 29.7 % (p = 0.03), but Holm over the 6 pairs asks p <= 0.05 / 6 first
    assert va["status"] == "PASS" and 0.05 / 6 < va["p"] <= 0.05
    assert block["holm_shown"] == [] and block["some_domain"] == "INCONCLUSIVE" == block["status"]
    block = claims.headline_improvement(table(0.1), {})["measured"]["per_domain"]
    assert block["holm_shown"] == ["VA vs tuning_retune", "VP vs tuning_retune", "VC vs tuning_retune"]
    assert block["domains"]["VA"]["pretrained"]["status"] == "INCONCLUSIVE"  # 30 % +- 1.2 %
    assert block["some_domain"] == "PASS" == block["status"] and block["every_domain"] == "FAIL"  # VC: 27.3 %


def test_one_seed_without_per_image_values_decides_per_domain_on_points(df):
    block = claims.c3_close_to_tuning(df, {})["measured"]["per_domain"]
    assert all(x["p"] is None for x in block["domains"].values())
    # VA's point gap is 0.5 dB, on the threshold: INCONCLUSIVE; VP, VC pass
    assert block["domains"]["VA"]["status"] == "INCONCLUSIVE" and block["every_domain"] == "INCONCLUSIVE"
    assert block["some_domain"] == "PASS" and block["holm_shown"] == ["VP", "VC"]
