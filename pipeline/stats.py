"""Intervals: every difference in the reports is given with its 95 % confidence interval.

- ``mean_ci``: mean over independent replicates (seeds) with a Student-t interval;
- ``paired_bootstrap``: mean of per-image differences (the same test images, two methods) with a
  percentile bootstrap interval over images (Efron & Tibshirani 1993), seeded, so reports are
  reproducible;
- ``verdict``: PASS when the interval lies on the claimed side of a threshold, FAIL when it lies on
  the other side, INCONCLUSIVE when it straddles it.
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
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(samples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(d.mean()), float(lo), float(hi), int(d.size))


PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def verdict(interval: Interval, threshold: float, claimed: str) -> str:
    """``claimed`` is "above" or "below": the side of ``threshold`` the claim says the value is on.
    Without an interval (one replicate) the point estimate decides, as PASS or FAIL."""
    if claimed not in ("above", "below"):
        raise ValueError(f"verdict: claimed must be 'above' or 'below', not {claimed!r}")
    lo, hi = (interval.lo, interval.hi) if math.isfinite(interval.lo) else (interval.mean, interval.mean)
    above, below = lo > threshold, hi < threshold
    if claimed == "above":
        return PASS if above else FAIL if below else INCONCLUSIVE
    return PASS if below else FAIL if above else INCONCLUSIVE
