"""What a claim is and what checking it gives, plus the table access every claim shares.

A ``Claim`` is its id, kind (a *guarantee* holds by construction and fails CI when broken, PASS or
FAIL; a *finding* is measured and reported PASS / FAIL / INCONCLUSIVE, never failing CI), statement,
definition and ``measure``: a function of the evaluate stage's tidy table, its summary
(``evaluate.json``) and the per-image values (``PerImage``, or None) returning an ``Outcome``: the
verdict, the measured values as ``claims.json`` records them, the claimed quantity's interval
(``Estimate``) and, where a claim is decided per domain, one sub-outcome per domain (the rules that
combine them: ``combine``). The only strings a measure makes are values claims.json records (which γ
stood in for 1 %, what an interval is over); ``render`` turns outcomes into text.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..stats import (FAIL, INCONCLUSIVE, LEVEL, PASS, Interval, bootstrap_p_value, mean_ci, paired_bootstrap,
                     t_p_value, verdict)

GUARANTEE, FINDING = "guarantee", "finding"
KINDS = (GUARANTEE, FINDING)
STATUSES = (PASS, FAIL, INCONCLUSIVE)
ONE_PERCENT = 0.01  # the paper's "γ = 1 %"

INTERVAL_RULE = ("PASS when the 95 % interval lies on the claimed side of the threshold, FAIL when it lies on "
                 "the other side, INCONCLUSIVE when it straddles it")


# ------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Estimate:
    """The claimed quantity's 95 % interval and what it is over."""
    interval: Interval
    over: str

    def as_dict(self) -> dict:
        return {**self.interval.as_dict(), "over": self.over}


@dataclass(frozen=True)
class Outcome:
    """What checking a claim gave. ``measured``: the values claims.json records, in its order (JSON
    types); ``estimate``: the claimed quantity's interval (findings); ``domains``: one sub-outcome per
    domain where the claim is decided per domain; ``facts``: what the claim's text states beyond
    ``measured`` (not written to claims.json)."""
    verdict: str
    measured: Mapping[str, Any]
    estimate: Estimate | None = None
    domains: Mapping[str, Outcome] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in STATUSES:
            raise ValueError(f"Outcome: verdict must be one of {STATUSES}, not {self.verdict!r}")

    @classmethod
    def holds(cls, ok: bool, measured: Mapping[str, Any], **facts) -> Outcome:
        """A guarantee's outcome: PASS if it holds, else FAIL."""
        return cls(PASS if ok else FAIL, measured, facts=facts)


Measure = Callable[[pd.DataFrame, dict, "PerImage | None"], Outcome]


@dataclass(frozen=True)
class Claim:
    """One paper claim. ``applies``: whether the table measured what it needs (else it is left out)."""
    id: str
    kind: str
    statement: str
    definition: str
    measure: Measure
    applies: Callable[[pd.DataFrame], bool] = lambda df: True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id}: kind must be one of {KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class Result:
    """A claim and what checking it gave."""
    claim: Claim
    outcome: Outcome


# ------------------------------------------------------------------------------------ table access
def values(df: pd.DataFrame, method: str, metric: str, sparsity: float | None = None) -> pd.DataFrame:
    """Rows of one method (at one sparsity, for sam) and one metric."""
    rows = df[(df["method"] == method) & (df["metric"] == metric)]
    return rows if sparsity is None else rows[np.isclose(rows["sparsity"], sparsity)]


def per_domain(df: pd.DataFrame, method: str, metric: str = "domain_psnr", sparsity: float | None = None) -> pd.Series:
    """One value per domain (in the table's domain order), the mean over seeds."""
    rows = values(df, method, metric, sparsity)
    return rows.groupby("domain", sort=False)["value"].mean()


def per_seed(df: pd.DataFrame, method: str, metric: str = "domain_psnr", sparsity: float | None = None) -> pd.DataFrame:
    """seed x domain: one value per seed and domain."""
    rows = values(df, method, metric, sparsity)
    frame = rows.groupby(["seed", "domain"], sort=False)["value"].mean().unstack("domain")
    return frame.sort_index()[list(dict.fromkeys(rows["domain"]))]


def paired_seeds(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two seed x domain frames on the seeds and domains they share; a method measured at one seed only
    (the pretrained model, whatever the adaptation seed) is paired with every seed of the other."""
    if len(a) == 1 < len(b):
        a = pd.DataFrame(np.repeat(a.to_numpy(), len(b), axis=0), index=b.index, columns=a.columns)
    elif len(b) == 1 < len(a):
        b = pd.DataFrame(np.repeat(b.to_numpy(), len(a), axis=0), index=a.index, columns=b.columns)
    seeds, domains = a.index.intersection(b.index), [d for d in a.columns if d in b.columns]
    if seeds.empty or not domains:
        raise ValueError(f"claims: no seed and domain measured for both (seeds {list(a.index)} vs {list(b.index)})")
    return a.loc[seeds, domains], b.loc[seeds, domains]


def only_seed(frame: pd.DataFrame | pd.Series) -> int:
    return int(frame.index[0])


def by_domain(series: pd.Series) -> dict:
    return {str(d): float(v) for d, v in series.items()}


def sam_sparsities(df: pd.DataFrame) -> list[float]:
    return sorted(float(s) for s in df.loc[df["method"] == "sam", "sparsity"].unique())


def gamma_key(sparsity: float) -> str:
    """A sparsity as a JSON key, written as in params.yaml (0.0003, 0.01)."""
    return f"{sparsity:g}"


def gamma_pct(sparsity: float) -> str:
    return f"{100 * sparsity:g} %"


def one_percent_gamma(df: pd.DataFrame) -> tuple[float, str]:
    """γ = 1 % when evaluated, else the largest γ below it (else the smallest γ), and which was used."""
    gammas = sam_sparsities(df)
    below = [g for g in gammas if g <= ONE_PERCENT * (1 + 1e-9)]
    if below and math.isclose(below[-1], ONE_PERCENT):
        return below[-1], "γ = 1 %"
    if below:
        return below[-1], f"γ = 1 % not evaluated; the largest γ below it is used: {gamma_pct(below[-1])}"
    return gammas[0], f"no γ ≤ 1 % evaluated; the smallest γ is used: {gamma_pct(gammas[0])}"


# -------------------------------------------------------------------------------- per-image values
class PerImage:
    """The evaluate stage's per-image values (``build/<run>/eval/per_image.safetensors``, read with
    ``pipeline.metrics.read_per_image``), keyed ``method|sparsity|seed|metric|domain|tx|rx``."""

    def __init__(self, arrays: Mapping[str, object]):
        self._arrays = {}
        for key, array in arrays.items():
            parts = key.split("|")
            if len(parts) != 7:
                raise ValueError(f"per-image key {key!r}: expected method|sparsity|seed|metric|domain|tx|rx")
            method, sparsity, seed, metric, domain, tx, rx = parts
            try:
                ident = (method, _sparsity_key(sparsity), int(seed), metric, domain, tx, rx)
            except ValueError:
                raise ValueError(f"per-image key {key!r}: sparsity or seed is not a number") from None
            self._arrays[ident] = np.asarray(array, dtype=np.float64).ravel()

    def __len__(self) -> int:
        return len(self._arrays)

    def domain(self, method: str, domain: str, seed: int, sparsity: float | None = None,
               metric: str = "domain_psnr") -> np.ndarray | None:
        """One agent's per-image values on its own domain's test images (None when not stored)."""
        return self._arrays.get((method, _sparsity_key(sparsity), int(seed), metric, domain, domain, domain))


def _sparsity_key(sparsity) -> str:
    if sparsity is None or sparsity == "" or (isinstance(sparsity, float) and math.isnan(sparsity)):
        return ""
    return gamma_key(float(sparsity))


def stacked_images(per_image: PerImage | None, seed: int, a: tuple, b: tuple, domains: list[str]):
    """Per image, the mean over ``domains`` of two variants' per-image values (``a``, ``b``: (method,
    sparsity)), for a bootstrap of a mean over domains: None unless every domain has both, at equal
    image counts. Test images of different domains are different images, so resampling index i picks
    one image per domain: the bootstrap of the mean over domains, stratified by domain."""
    if per_image is None:
        return None
    arrays = [(per_image.domain(a[0], d, seed, a[1]), per_image.domain(b[0], d, seed, b[1])) for d in domains]
    if any(x is None or y is None or len(x) != len(y) for x, y in arrays) or len({len(x) for x, _ in arrays}) != 1:
        return None
    return np.mean([x for x, _ in arrays], axis=0), np.mean([y for _, y in arrays], axis=0)


# --------------------------------------------------------------------------------------- estimates
POINT_ONLY = "one seed, no per-image values: point estimate, no interval"


def estimate(per_seed_values: pd.Series, images: tuple[np.ndarray, np.ndarray] | None) -> Estimate:
    """Over seeds when there are several, the Student-t interval of the per-seed value; else a paired
    bootstrap over test images of ``images`` (a, b: the claimed quantity is mean(a - b)) when given;
    else the one seed's value (the point estimate decides, no interval)."""
    if len(per_seed_values) >= 2:
        return Estimate(mean_ci(per_seed_values), f"{len(per_seed_values)} seeds, Student-t")
    if images is not None:
        return Estimate(paired_bootstrap(*images), f"one seed, paired bootstrap over {len(images[0])} test images")
    return Estimate(mean_ci(per_seed_values), POINT_ONLY)


@dataclass(frozen=True)
class Decision:
    """One domain's (or one variant's) test of a claimed side of a threshold: the interval, the verdict
    it gives (``pipeline.stats.verdict``) and the p-value of the same test from the same estimate (None
    for a point estimate): twice the one-sided p-value, so p ≤ 1 − LEVEL exactly when the interval lies
    on the claimed side (Student-t over seeds; the paired bootstrap's resamples over images)."""
    estimate: Estimate
    verdict: str
    p: float | None

    def as_dict(self) -> dict:
        p = None if self.p is None else round(self.p, 4)
        return {**self.estimate.as_dict(), "p": p, "status": self.verdict}


def decide(per_seed_values: pd.Series, images: tuple[np.ndarray, np.ndarray] | None, threshold: float,
           claimed: str) -> Decision:
    """``estimate`` and its verdict against ``threshold`` on the ``claimed`` side, with its p-value."""
    est = estimate(per_seed_values, images)
    if len(per_seed_values) >= 2:
        p = t_p_value(per_seed_values, threshold, claimed)
    elif images is not None:
        p = bootstrap_p_value(*images, threshold, claimed)
    else:
        p = None
    return Decision(est, verdict(est.interval, threshold, claimed), p)


ALPHA = round(1 - LEVEL, 10)  # the level of every test: its 95 % interval on the claimed side
