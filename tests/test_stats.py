"""pipeline/stats.py: the p-values of the interval tests and the interval over bases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pipeline import stats


def test_the_t_p_value_is_the_interval_test():
    x = [0.40, 0.45, 0.52]
    iv = stats.mean_ci(x)
    se = np.std(x, ddof=1) / math.sqrt(3)
    assert stats.t_p_value(x, 0.3, "above") == pytest.approx(2 * sps.t.sf((np.mean(x) - 0.3) / se, 2))
    assert stats.t_p_value(x, 0.6, "below") == pytest.approx(2 * sps.t.sf((0.6 - np.mean(x)) / se, 2))
    assert stats.t_p_value(x, 0.6, "above") == 1.0  # on the wrong side: capped at 1
    for threshold in np.linspace(0.2, 0.7, 51):  # p <= 0.05 exactly when the interval lies on the claimed side
        for claimed in ("above", "below"):
            passes = stats.verdict(iv, threshold, claimed) == stats.PASS
            assert (stats.t_p_value(x, threshold, claimed) <= 0.05) == passes, (threshold, claimed)
    assert stats.t_p_value([1.0, 1.0], 0.5, "above") == 0.0 and stats.t_p_value([1.0, 1.0], 1.5, "above") == 1.0


def test_the_bootstrap_p_value_uses_the_intervals_resamples():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 60)
    iv = stats.paired_bootstrap(a, b)
    assert stats.bootstrap_p_value(a, b, iv.lo - 0.01, "above") <= 0.05
    assert stats.bootstrap_p_value(a, b, iv.lo + 0.01, "above") > 0.05
    assert stats.bootstrap_p_value(a, b, iv.hi + 0.01, "below") <= 0.05
    assert stats.bootstrap_p_value(a, b, iv.mean, "above") == pytest.approx(1.0, abs=0.1)


def test_p_values_refuse_what_they_cannot_test():
    with pytest.raises(ValueError, match="two replicates"):
        stats.t_p_value([1.0], 0.0, "above")
    with pytest.raises(ValueError, match="'beside'"):
        stats.t_p_value([1.0, 2.0], 0.0, "beside")
    with pytest.raises(ValueError, match="equal-length"):
        stats.bootstrap_p_value([1.0, 2.0], [1.0], 0.0, "above")


def test_the_random_effects_interval_adds_the_spread_across_bases():
    seeds, bases = [0.40, 0.43, 0.44], [0.9, 0.95, 1.0]
    iv = stats.random_effects_ci(seeds, bases)
    var = np.var(bases, ddof=1) + np.var(seeds, ddof=1) / 3
    half = sps.t.ppf(0.975, 2) * math.sqrt(var)
    assert (iv.mean, iv.lo, iv.hi, iv.n) == pytest.approx((np.mean(seeds), np.mean(seeds) - half,
                                                           np.mean(seeds) + half, 6))
    # never narrower than the seed-only interval, even where the bases agree better than the seeds
    for other in ([0.9, 0.95, 1.0], [0.5, 0.5001, 0.5002], [0.1, 0.9, 0.5, 0.7, 0.3]):
        assert stats.random_effects_ci(seeds, other).half_width >= stats.mean_ci(seeds).half_width
    one = stats.random_effects_ci([0.4], [0.9, 1.1])  # one seed: the other bases' variance alone
    assert one.half_width == pytest.approx(sps.t.ppf(0.975, 1) * np.std([0.9, 1.1], ddof=1))
    with pytest.raises(ValueError, match="two other bases"):
        stats.random_effects_ci(seeds, [0.9])
