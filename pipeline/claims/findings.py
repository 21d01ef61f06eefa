"""The findings: C3 (sam close to full tuning), C5 (sam improves on the pretrained model on every
domain), H (the paper's headline improvement). Measured and reported PASS / FAIL / INCONCLUSIVE from
the 95 % interval of the claimed quantity (``estimate``), whatever they say; they never fail CI.

Intervals: over seeds, the Student-t interval of the per-seed value; with one seed and per-image
values, a paired bootstrap over test images of the per-image difference; with one seed and none, the
point estimate decides (no interval).

Each also decides per domain (``measured["per_domain"]``, ``combine.per_domain_block``): every domain's
interval, p-value and verdict, the verdict on every domain (intersection-union) and on some domain
(Holm), and which of the two the paper's sentence has (``READING``). The headline verdict
(``status``) stays what it was: C3 on the mean gap, C5 on every domain, H at the largest gain."""
from __future__ import annotations

import pandas as pd

from ..stats import verdict
from .base import (FINDING, INTERVAL_RULE, Claim, Outcome, PerImage, by_domain, decide, estimate, gamma_key,
                   one_percent_gamma, only_seed, paired_seeds, per_seed, sam_sparsities, stacked_images)
from .combine import EVERY, SOME, intersection_union, per_domain_block

C3_TOLERANCE_DB = 0.5         # C3: sam within 0.5 dB of full tuning
HEADLINE_BASELINES = ("pretrained", "tuning_retune")
PAPER_HEADLINE_PCT = 29.7
# Which reading of "on the domains" each finding's sentence has: C3 "almost no loss" (each agent's
# adaptation loses almost nothing) and C5 "on every domain" hold for every agent; H "up to 29.7 %" is
# the largest gain, a claim about some domain (against some baseline).
READING = {"C3": EVERY, "C5": EVERY, "H": SOME}


def _sub(decision) -> Outcome:
    return Outcome(decision.verdict, decision.estimate.as_dict(), decision.estimate)


def close_to_tuning(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
    gamma, note = one_percent_gamma(df)
    tuned, sam = paired_seeds(per_seed(df, "tuning_copy"), per_seed(df, "sam", sparsity=gamma))
    gap, seed = tuned - sam, only_seed(tuned)  # seed x domain

    def images(domains):
        return stacked_images(per_image, seed, ("tuning_copy", None), ("sam", gamma), domains)

    est = estimate(gap.mean(axis=1), images(list(gap.columns)))
    decisions = {d: decide(gap[d], images([d]), C3_TOLERANCE_DB, "below") for d in gap.columns}
    measured = {"sparsity": gamma_key(gamma), "sparsity_note": note,
                "sam_domain_psnr_db": by_domain(sam.mean(axis=0)),
                "tuning_domain_psnr_db": by_domain(tuned.mean(axis=0)), "gap_db": by_domain(gap.mean(axis=0)),
                "mean_gap_db": est.interval.mean, "mean_gap_interval": est.as_dict(),
                "per_domain": per_domain_block(decisions, READING["C3"])}
    return Outcome(verdict(est.interval, C3_TOLERANCE_DB, "below"), measured, est,
                   domains={d: _sub(x) for d, x in decisions.items()}, facts={"sparsity": gamma})


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
    delta, seed = sam - pre, only_seed(sam)    # seed x domain

    def images(domains):
        return stacked_images(per_image, seed, ("sam", gamma), ("pretrained", None), domains)

    decisions = {d: decide(delta[d], images([d]), 0.0, "above") for d in delta.columns}
    domains = {d: _sub(x) for d, x in decisions.items()}
    mean = decide(delta.mean(axis=1), images(list(delta.columns)), 0.0, "above")
    mean_delta = delta.mean(axis=0)
    measured = {"sparsity": gamma_key(gamma), "delta_db": by_domain(mean_delta),
                "min_delta_db": float(mean_delta.min()),
                "delta_interval": {d: {**o.measured, "status": o.verdict} for d, o in domains.items()},
                "mean_delta_interval": mean.as_dict(), "per_domain": per_domain_block(decisions, READING["C5"])}
    return Outcome(intersection_union(o.verdict for o in domains.values()), measured, domains=domains,
                   facts={"sparsity": gamma, "mean": mean})


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

    def images(d, b):
        pair = stacked_images(per_image, only_seed(gains[b]), ("sam", gamma), (b, None), [d])
        if pair is None:  # a relative gain: the per-image difference over the baseline's mean PSNR
            return None
        return 100 * pair[0] / pair[1].mean(), 100 * pair[1] / pair[1].mean()

    decisions = {(d, b): decide(gains[b][d], images(d, b), PAPER_HEADLINE_PCT, "above")
                 for d in table.index for b in HEADLINE_BASELINES}
    est = decisions[(domain, baseline)].estimate
    nested = {d: {b: decisions[(d, b)].as_dict() for b in HEADLINE_BASELINES} for d in table.index}
    measured = {"sparsity": gamma_key(gamma), "sparsity_note": note,
                "max_improvement_pct": float(table.loc[domain, baseline]),
                "max_improvement_interval": est.as_dict(), "argmax_domain": domain, "argmax_baseline": baseline,
                "paper_pct": PAPER_HEADLINE_PCT,
                "improvement_pct": {b: by_domain(table[b]) for b in HEADLINE_BASELINES},
                "per_domain": per_domain_block({f"{d} vs {b}": x for (d, b), x in decisions.items()}, READING["H"],
                                         nested)}
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
