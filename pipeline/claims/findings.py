"""The findings: C3 (sam close to full tuning), C5 (sam improves on the pretrained model on every
domain), H (the paper's headline improvement). Measured and reported PASS / FAIL / INCONCLUSIVE from
the 95 % interval of the claimed quantity (``estimate``), whatever they say; they never fail CI.

Intervals: over seeds, the Student-t interval of the per-seed value; with one seed and per-image
values, a paired bootstrap over test images of the per-image difference; with one seed and none, the
point estimate decides (no interval)."""
from __future__ import annotations

import pandas as pd

from ..stats import verdict
from .base import (FINDING, INTERVAL_RULE, Claim, Outcome, PerImage, by_domain, estimate, gamma_key,
                   one_percent_gamma, only_seed, paired_seeds, per_seed, sam_sparsities, stacked_images)
from .combine import intersection_union

C3_TOLERANCE_DB = 0.5         # C3: sam within 0.5 dB of full tuning
HEADLINE_BASELINES = ("pretrained", "tuning_retune")
PAPER_HEADLINE_PCT = 29.7


def close_to_tuning(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
    gamma, note = one_percent_gamma(df)
    tuned, sam = paired_seeds(per_seed(df, "tuning_copy"), per_seed(df, "sam", sparsity=gamma))
    gap = tuned - sam                          # seed x domain
    est = estimate(gap.mean(axis=1), stacked_images(per_image, only_seed(gap), ("tuning_copy", None),
                                                    ("sam", gamma), list(gap.columns)))
    measured = {"sparsity": gamma_key(gamma), "sparsity_note": note,
                "sam_domain_psnr_db": by_domain(sam.mean(axis=0)),
                "tuning_domain_psnr_db": by_domain(tuned.mean(axis=0)), "gap_db": by_domain(gap.mean(axis=0)),
                "mean_gap_db": est.interval.mean, "mean_gap_interval": est.as_dict()}
    return Outcome(verdict(est.interval, C3_TOLERANCE_DB, "below"), measured, est, facts={"sparsity": gamma})


C3 = Claim(
    "C3", FINDING, "sam domain PSNR within 0.5 dB of full tuning at γ = 1 %",
    "gap = domain PSNR of the fully tuned agent (tuning_copy: its local quality) − domain PSNR of "
    f"sam at γ = 1 %, averaged over domains (a negative gap: sam is better); claimed: gap ≤ "
    f"{C3_TOLERANCE_DB} dB. Interval: over seeds of the per-seed gap; with one seed, a paired bootstrap "
    f"over test images of the per-image gap (mean over domains); {INTERVAL_RULE}.",
    close_to_tuning)


def improves_on_pretrained(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
    gamma = sam_sparsities(df)[-1]
    sam, pre = paired_seeds(per_seed(df, "sam", sparsity=gamma), per_seed(df, "pretrained"))
    delta = sam - pre                          # seed x domain
    seed = only_seed(delta)
    domains = {}
    for d in delta.columns:
        est = estimate(delta[d], stacked_images(per_image, seed, ("sam", gamma), ("pretrained", None), [d]))
        domains[d] = Outcome(verdict(est.interval, 0.0, "above"), est.as_dict(), est)
    mean_delta = delta.mean(axis=0)
    measured = {"sparsity": gamma_key(gamma), "delta_db": by_domain(mean_delta),
                "min_delta_db": float(mean_delta.min()),
                "delta_interval": {d: {**o.measured, "status": o.verdict} for d, o in domains.items()}}
    return Outcome(intersection_union(o.verdict for o in domains.values()), measured, domains=domains,
                   facts={"sparsity": gamma})


C5 = Claim(
    "C5", FINDING, "sam improves domain PSNR over the pretrained model on every domain",
    "delta = domain PSNR of sam at the largest evaluated γ − domain PSNR of the pretrained model, per "
    "domain; claimed: delta > 0 on every domain. Interval per domain: over seeds of the per-seed delta; "
    "with one seed, a paired bootstrap over the domain's test images. PASS iff every domain's interval "
    "lies above 0, FAIL iff one lies below 0, INCONCLUSIVE otherwise.",
    improves_on_pretrained)


def headline_improvement(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
    gamma, note = one_percent_gamma(df)
    gains = {}                                 # baseline -> seed x domain, %
    for b in HEADLINE_BASELINES:
        sam, base = paired_seeds(per_seed(df, "sam", sparsity=gamma), per_seed(df, b))
        gains[b] = 100 * (sam - base) / base
    table = pd.DataFrame({b: g.mean(axis=0) for b, g in gains.items()})  # domain x baseline, seed means
    domain, baseline = table.stack().idxmax()
    per_seed_gain = gains[baseline][domain]
    images = stacked_images(per_image, only_seed(per_seed_gain), ("sam", gamma), (baseline, None), [domain])
    if images is not None:  # a relative gain: the per-image difference over the baseline's mean PSNR
        images = (100 * images[0] / images[1].mean(), 100 * images[1] / images[1].mean())
    est = estimate(per_seed_gain, images)
    measured = {"sparsity": gamma_key(gamma), "sparsity_note": note,
                "max_improvement_pct": float(table.loc[domain, baseline]),
                "max_improvement_interval": est.as_dict(), "argmax_domain": domain, "argmax_baseline": baseline,
                "paper_pct": PAPER_HEADLINE_PCT,
                "improvement_pct": {b: by_domain(table[b]) for b in HEADLINE_BASELINES}}
    return Outcome(verdict(est.interval, PAPER_HEADLINE_PCT, "above"), measured, est, facts={"sparsity": gamma})


H = Claim(
    "H", FINDING, f"up to {PAPER_HEADLINE_PCT} % domain PSNR improvement over baselines (the paper's headline)",
    "max over domains d and baselines b ∈ {" + ", ".join(HEADLINE_BASELINES) + "} of "
    "100 × (PSNR_sam(γ = 1 %, d) − PSNR_b(d)) / PSNR_b(d), domain PSNR in dB, on the means over seeds; "
    f"claimed: ≥ the paper's {PAPER_HEADLINE_PCT} %. Interval: of the gain at that (d, b), over seeds of the "
    "per-seed gain; with one seed, a paired bootstrap over test images of the per-image PSNR difference "
    f"divided by b's mean PSNR (held fixed); {INTERVAL_RULE}. The paper's own definition is unknown "
    "(SPEC.md); this is ours.",
    headline_improvement)
