import math

import numpy as np
import pytest
from scipy import stats as sps

from pipeline import stats as pipeline_stats
from pipeline.stats import FAIL, INCONCLUSIVE, PASS, Interval, mean_ci, paired_bootstrap, verdict


def test_mean_ci_known_case():
    # x = 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.half_width == pytest.approx(4.302652729 / math.sqrt(3), rel=1e-8)
    assert (ci.lo, ci.hi) == pytest.approx((2 - 2.4841377, 2 + 2.4841377), rel=1e-6)


def test_mean_ci_matches_scipy_interval():
    x = np.random.default_rng(3).normal(5, 2, size=11)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    ci = mean_ci(x)
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi))


def test_one_replicate_has_no_interval():
    ci = mean_ci([4.0])
    assert ci.mean == 4.0 and math.isnan(ci.lo) and str(ci) == "4.00"


def test_paired_bootstrap_covers_the_true_shift_and_is_seeded():
    rng = np.random.default_rng(0)
    base = rng.normal(25, 3, size=2000)  # large between-image spread ...
    shifted = base + 0.2 + rng.normal(0, 0.1, size=2000)  # ... a small, consistent paired shift
    ci = paired_bootstrap(shifted, base)
    assert ci.lo < 0.2 < ci.hi and ci.hi - ci.lo < 0.02  # pairing removes the between-image spread
    assert paired_bootstrap(shifted, base) == ci
    # unpaired, the same shift would be lost in the spread: the t-interval of the difference of means is wide
    assert sps.sem(base) * 2 > 10 * (ci.hi - ci.lo) / 2


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0, 2.0], [1.0])


@pytest.mark.parametrize("lo,hi,claimed,expected", [
    (0.6, 0.9, "above", PASS), (0.1, 0.4, "above", FAIL), (0.3, 0.7, "above", INCONCLUSIVE),
    (0.1, 0.4, "below", PASS), (0.6, 0.9, "below", FAIL), (0.3, 0.7, "below", INCONCLUSIVE),
])
def test_verdict_on_synthetic_intervals(lo, hi, claimed, expected):
    assert verdict(Interval((lo + hi) / 2, lo, hi, 3), 0.5, claimed) == expected


def test_verdict_of_a_single_replicate_uses_the_point():
    assert verdict(mean_ci([0.501]), 0.5, "below") == FAIL
    assert verdict(mean_ci([0.499]), 0.5, "below") == PASS


# ------------------------------------------- p-values of the interval tests, the interval over bases
def test_the_t_p_value_is_the_interval_test():
    x = [0.40, 0.45, 0.52]
    iv = pipeline_stats.mean_ci(x)
    se = np.std(x, ddof=1) / math.sqrt(3)
    assert pipeline_stats.t_p_value(x, 0.3, "above") == pytest.approx(2 * sps.t.sf((np.mean(x) - 0.3) / se, 2))
    assert pipeline_stats.t_p_value(x, 0.6, "below") == pytest.approx(2 * sps.t.sf((0.6 - np.mean(x)) / se, 2))
    assert pipeline_stats.t_p_value(x, 0.6, "above") == 1.0  # on the wrong side: capped at 1
    for threshold in np.linspace(0.2, 0.7, 51):  # p <= 0.05 exactly when the interval lies on the claimed side
        for claimed in ("above", "below"):
            passes = pipeline_stats.verdict(iv, threshold, claimed) == pipeline_stats.PASS
            assert (pipeline_stats.t_p_value(x, threshold, claimed) <= 0.05) == passes, (threshold, claimed)
    assert pipeline_stats.t_p_value([1.0, 1.0], 0.5, "above") == 0.0 and pipeline_stats.t_p_value([1.0, 1.0], 1.5, "above") == 1.0


def test_the_bootstrap_p_value_uses_the_intervals_resamples():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 60)
    iv = pipeline_stats.paired_bootstrap(a, b)
    assert pipeline_stats.bootstrap_p_value(a, b, iv.lo - 0.01, "above") <= 0.05
    assert pipeline_stats.bootstrap_p_value(a, b, iv.lo + 0.01, "above") > 0.05
    assert pipeline_stats.bootstrap_p_value(a, b, iv.hi + 0.01, "below") <= 0.05
    assert pipeline_stats.bootstrap_p_value(a, b, iv.mean, "above") == pytest.approx(1.0, abs=0.1)


def test_p_values_refuse_what_they_cannot_test():
    with pytest.raises(ValueError, match="two replicates"):
        pipeline_stats.t_p_value([1.0], 0.0, "above")
    with pytest.raises(ValueError, match="'beside'"):
        pipeline_stats.t_p_value([1.0, 2.0], 0.0, "beside")
    with pytest.raises(ValueError, match="equal-length"):
        pipeline_stats.bootstrap_p_value([1.0, 2.0], [1.0], 0.0, "above")


def test_the_random_effects_interval_adds_the_spread_across_bases():
    seeds, bases = [0.40, 0.43, 0.44], [0.9, 0.95, 1.0]
    iv = pipeline_stats.random_effects_ci(seeds, bases)
    var = np.var(bases, ddof=1) + np.var(seeds, ddof=1) / 3
    half = sps.t.ppf(0.975, 2) * math.sqrt(var)
    assert (iv.mean, iv.lo, iv.hi, iv.n) == pytest.approx((np.mean(seeds), np.mean(seeds) - half,
                                                           np.mean(seeds) + half, 6))
    # never narrower than the seed-only interval, even where the bases agree better than the seeds
    for other in ([0.9, 0.95, 1.0], [0.5, 0.5001, 0.5002], [0.1, 0.9, 0.5, 0.7, 0.3]):
        assert pipeline_stats.random_effects_ci(seeds, other).half_width >= pipeline_stats.mean_ci(seeds).half_width
    one = pipeline_stats.random_effects_ci([0.4], [0.9, 1.1])  # one seed: the other bases' variance alone
    assert one.half_width == pytest.approx(sps.t.ppf(0.975, 1) * np.std([0.9, 1.1], ddof=1))
    with pytest.raises(ValueError, match="two other bases"):
        pipeline_stats.random_effects_ci(seeds, [0.9])
