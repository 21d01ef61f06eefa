import math

import numpy as np
import pytest
from scipy import stats as sps

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
