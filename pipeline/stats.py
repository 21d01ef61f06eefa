"""Intervals: every difference in the reports is given with its 95 % confidence interval.

- ``mean_ci``: mean over independent replicates (seeds) with a Student-t interval;
- ``paired_bootstrap``: mean of per-image differences (the same test images, two methods) with a
  percentile bootstrap interval over images (Efron & Tibshirani 1993), seeded, so reports are
  reproducible;
- ``verdict``: PASS when the interval lies on the claimed side of a threshold, FAIL when it lies on
  the other side, INCONCLUSIVE when it straddles it;
- ``t_p_value`` / ``bootstrap_p_value``: the p-value of the same test from the same estimate (for
  Holm's procedure over domains): twice the one-sided p-value of "the value is not on the claimed
  side", so p ≤ 1 − LEVEL exactly when the interval lies on the claimed side;
- ``random_effects_ci``: a mean over seeds on one base, its interval widened by the spread of the
  same quantity across other bases (a one-way random-effects model, bases random).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int  # replicates (seeds) or images behind it

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def as_dict(self, digits: int = 4) -> dict:
        return {"mean": round(self.mean, digits), "ci95": [round(self.lo, digits), round(self.hi, digits)],
                "n": self.n}

    def __str__(self) -> str:
        if self.n < 2 or not math.isfinite(self.lo):
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.half_width:.2f}"


def mean_ci(values, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of independent replicates; one replicate: no interval (nan bounds)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(m, m - half, m + half, int(x.size))


def paired_bootstrap(a, b, level: float = LEVEL, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Interval:
    """Mean of ``a - b`` (per-image values of two methods on the same images) with a percentile
    bootstrap interval: images are resampled with replacement, the pairs kept together."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_bootstrap: need two equal-length 1-d arrays, got {a.shape} and {b.shape}")
    d = a - b
    means = _bootstrap_means(d, samples, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(d.mean()), float(lo), float(hi), int(d.size))


def _bootstrap_means(d: np.ndarray, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return d[rng.integers(0, d.size, size=(samples, d.size))].mean(axis=1)


PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
CLAIMED = ("above", "below")


def _check_claimed(claimed: str, where: str) -> None:
    if claimed not in CLAIMED:
        raise ValueError(f"{where}: claimed must be 'above' or 'below', not {claimed!r}")


def t_p_value(values, threshold: float, claimed: str) -> float:
    """Twice the one-sided Student-t p-value of "the mean is not on the ``claimed`` side of
    ``threshold``" over independent replicates (capped at 1): ≤ 1 − LEVEL exactly when ``mean_ci``'s
    interval lies on the claimed side. Needs two replicates or more."""
    _check_claimed(claimed, "t_p_value")
    x = np.asarray(list(values), dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"t_p_value: needs two replicates or more, got {x.size}")
    diff = (x.mean() - threshold) * (1 if claimed == "above" else -1)  # > 0: on the claimed side
    se = x.std(ddof=1) / math.sqrt(x.size)
    if se == 0:
        return 0.0 if diff > 0 else 1.0
    return float(min(1.0, 2 * stats.t.sf(diff / se, x.size - 1)))


def bootstrap_p_value(a, b, threshold: float, claimed: str, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> float:
    """The same for ``paired_bootstrap``'s estimate, from the same resamples: twice the fraction of
    bootstrap means not on the claimed side of ``threshold`` (capped at 1)."""
    _check_claimed(claimed, "bootstrap_p_value")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"bootstrap_p_value: need two equal-length 1-d arrays, got {a.shape} and {b.shape}")
    means = _bootstrap_means(a - b, samples, seed)
    wrong = means <= threshold if claimed == "above" else means >= threshold
    return float(min(1.0, 2 * wrong.mean()))


def random_effects_ci(on_base, other_bases, level: float = LEVEL) -> Interval:
    """The mean of ``on_base`` (one value per seed on the base that was measured in full) with an
    interval that covers the choice of base: one-way random-effects model, value = μ + base effect +
    seed noise. Var(mean) = σ²_base + σ²_seed / n is estimated by s²_other + s²_seed / n, where
    s²_other is the variance across ``other_bases`` (one value per base, the mean over its seeds; it
    estimates σ²_base + σ²_seed, so the estimate is conservative by σ²_seed (1 − 1/n)) and s²_seed the
    variance over ``on_base``'s seeds (0 with one seed, where s²_other alone is exact); degrees of
    freedom: the smaller of (bases − 1) and (seeds − 1), so it is never narrower than the seed-only
    interval of the same values. Needs two other bases or more."""
    x, y = np.asarray(list(on_base), dtype=np.float64), np.asarray(list(other_bases), dtype=np.float64)
    if x.size == 0 or y.size < 2:
        raise ValueError(f"random_effects_ci: needs one value or more on the base and two other bases or "
                         f"more, got {x.size} and {y.size}")
    var = y.var(ddof=1) + (x.var(ddof=1) / x.size if x.size > 1 else 0.0)
    dof = min(y.size - 1, x.size - 1) if x.size > 1 else y.size - 1
    m = float(x.mean())
    half = float(stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(var))
    return Interval(m, m - half, m + half, int(x.size + y.size))


def verdict(interval: Interval, threshold: float, claimed: str) -> str:
    """``claimed`` is "above" or "below": the side of ``threshold`` the claim says the value is on.
    Without an interval (one replicate) the point estimate decides, as PASS or FAIL."""
    _check_claimed(claimed, "verdict")
    lo, hi = (interval.lo, interval.hi) if math.isfinite(interval.lo) else (interval.mean, interval.mean)
    above, below = lo > threshold, hi < threshold
    if claimed == "above":
        return PASS if above else FAIL if below else INCONCLUSIVE
    return PASS if below else FAIL if above else INCONCLUSIVE
