"""pipeline/claims/base.py: the types (Claim, Outcome, Estimate), the per-image keys, the estimates."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import claims, stats


def test_per_image_keys_are_checked():
    with pytest.raises(ValueError, match="expected method|sparsity"):
        claims.PerImage({"sam|0.01|0|domain_psnr|VA": np.zeros(3)})
    with pytest.raises(ValueError, match="not a number"):
        claims.PerImage({"sam|0.01|zero|domain_psnr|VA|VA|VA": np.zeros(3)})
    values = claims.PerImage({"sam|0.010|1|domain_psnr|VA|VA|VA": np.ones(3)})
    assert values.domain("sam", "VA", 1, 0.01).tolist() == [1, 1, 1] and values.domain("sam", "VA", 0, 0.01) is None


def test_an_outcome_has_a_known_verdict_and_a_claim_a_known_kind():
    assert claims.Outcome.holds(True, {}).verdict == "PASS" and claims.Outcome.holds(False, {}).verdict == "FAIL"
    with pytest.raises(ValueError, match="verdict must be one of"):
        claims.Outcome("OK", {})
    with pytest.raises(ValueError, match="kind must be one of"):
        claims.Claim("X", "hope", "s", "d", lambda df, summary, per_image: claims.Outcome("PASS", {}))


def test_an_outcome_holds_per_domain_sub_outcomes():
    """C5 is decided per domain: its outcome carries one sub-outcome (verdict, interval) per domain."""
    sub = claims.Outcome("PASS", {}, claims.estimate(pd.Series([1.0, 2.0, 3.0]), None))
    outcome = claims.Outcome("PASS", {}, domains={"VA": sub})
    assert outcome.domains["VA"].estimate.interval.n == 3 and outcome.estimate is None


def test_estimate_is_over_seeds_then_over_images_then_a_point():
    over_seeds = claims.estimate(pd.Series([1.0, 2.0, 3.0]), (np.ones(5), np.zeros(5)))
    assert over_seeds.interval == stats.mean_ci([1.0, 2.0, 3.0]) and over_seeds.over == "3 seeds, Student-t"
    a, b = np.arange(10.0), np.zeros(10)
    over_images = claims.estimate(pd.Series([4.5]), (a, b))
    assert over_images.interval == stats.paired_bootstrap(a, b)
    assert over_images.over == "one seed, paired bootstrap over 10 test images"
    point = claims.estimate(pd.Series([4.5]), None)
    assert point.interval.mean == 4.5 and math.isnan(point.interval.lo) and point.over == claims.POINT_ONLY
    assert point.as_dict()["over"] == claims.POINT_ONLY


def test_one_percent_gamma_says_which_gamma_stands_in(df):
    assert claims.one_percent_gamma(df) == (0.01, "γ = 1 %")
    below = df[~np.isclose(df["sparsity"], 0.01)]
    assert claims.one_percent_gamma(below) == (0.001, "γ = 1 % not evaluated; the largest γ below it is used: 0.1 %")
    above = df[~((df["method"] == "sam") & np.isclose(df["sparsity"], 0.001))].copy()
    above.loc[above["method"] == "sam", "sparsity"] = 0.03
    assert claims.one_percent_gamma(above) == (0.03, "no γ ≤ 1 % evaluated; the smallest γ is used: 3 %")
