"""The paper's claims (SPEC.md, "Paper claims"), each checked from the evaluate stage's tidy table.

A claim (``base.Claim``) is an id, a kind, a statement, a definition and a measure: from the tidy
DataFrame (columns of ``evaluation.csv``; ``sparsity`` a float, NaN for methods without one; ``seed``
an int; ``domain``/``tx``/``rx`` strings), the evaluate stage's summary (``evaluate.json``) and, where
evaluate wrote them, the per-image values (``PerImage``), it gives an ``Outcome`` (verdict, measured
values, interval, per-domain sub-outcomes). *Guarantees* (``guarantees``: C1, ZF, C2, C4) hold by
construction and fail CI when broken (PASS/FAIL); *findings* (``findings``: C3, C5, H) are measured and
reported PASS / FAIL / INCONCLUSIVE from the 95 % interval of the claimed quantity (``pipeline.stats``),
whatever they say, and never fail CI. ``render`` writes every text: ``claims.json`` entries ``{id, kind,
statement, definition, measured, status, summary}`` and ``claims.md``. ``combine`` holds the rules
that combine per-domain verdicts (each finding's ``per_domain`` values); ``gains`` the main gains
with intervals over seeds and, where the bases study ran, over bases (claims.json's ``gains``).
``network``: the memory of a network of K agents, shared with the report's ``memory_network`` table.

``python -m pipeline.claims check reports/<run>/claims.json`` (``cli``) prints one line per claim and
exits 1 when a guarantee failed, 2 when the file cannot be read, 0 otherwise.
"""
from __future__ import annotations

import pandas as pd

from ..stats import FAIL, INCONCLUSIVE, PASS
from .base import (ALPHA, FINDING, GUARANTEE, INTERVAL_RULE, ONE_PERCENT, POINT_ONLY, STATUSES, Claim, Decision,
                   Estimate, Outcome, PerImage, Result, decide, estimate, gamma_key, gamma_pct, one_percent_gamma,
                   paired_seeds, per_domain, per_seed, sam_sparsities, stacked_images, values)
from .cli import ClaimsFileError, failed_guarantees, main, read_claims
from .combine import EVERY, SOME, holm, intersection_union, per_domain_block, some_domain
from .findings import C3, C3_TOLERANCE_DB, C5, HEADLINE_BASELINES, PAPER_HEADLINE_PCT, READING, H
from .gains import BASES_COLUMNS, GAIN_BASELINES, main_gains
from .guarantees import ALIGNMENT_ROUTES, C1, C2, C2_LIMIT_PCT, C4, FULL_COPY_PCT, ZF
from .network import NETWORK_AGENTS, NETWORK_SCALING, PER_AGENT, PER_PARTNER, network_bytes, scaling
from .render import claims_markdown, entry, gains_lines, per_domain_lines, provenance_line, write_claims

CLAIMS = (C1, ZF, C2, C3, C4, C5, H)  # the paper's order; ZF beside C1, the other zero-forget guarantee


def measure_all(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> list[Result]:
    """Every claim that applies to the table, checked, in ``CLAIMS`` order."""
    return [Result(c, c.measure(df, evaluate_json, per_image)) for c in CLAIMS if c.applies(df)]


def check_all(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> list[dict]:
    """Every claim's claims.json entry, in the paper's order; ZF (the switch-off check of every
    zero-forget method) when evaluate measured it (an evaluate before the check has no such rows)."""
    return [entry(r) for r in measure_all(df, evaluate_json, per_image)]


def _entry_of(claim: Claim):
    def check(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
        return entry(Result(claim, claim.measure(df, evaluate_json, per_image)))
    check.__doc__ = f"Claim {claim.id}'s claims.json entry: {claim.statement}."
    return check


# One claim's entry, by the names the tests and callers know.
c1_zero_misalignment = _entry_of(C1)
zf_switch_off_exact = _entry_of(ZF)
c2_memory_below_one_percent = _entry_of(C2)
c3_close_to_tuning = _entry_of(C3)
c4_alignment_is_paid = _entry_of(C4)
c5_improves_on_pretrained = _entry_of(C5)
headline_improvement = _entry_of(H)

__all__ = [
    "ALPHA", "BASES_COLUMNS", "Decision", "EVERY", "GAIN_BASELINES", "READING", "SOME", "decide", "gains_lines",
    "main_gains", "per_domain_block", "per_domain_lines", "some_domain",
    "ALIGNMENT_ROUTES", "C1", "C2", "C2_LIMIT_PCT", "C3", "C3_TOLERANCE_DB", "C4", "C5", "CLAIMS", "FAIL", "FINDING",
    "FULL_COPY_PCT", "GUARANTEE", "HEADLINE_BASELINES", "INCONCLUSIVE", "INTERVAL_RULE", "NETWORK_AGENTS",
    "NETWORK_SCALING", "ONE_PERCENT", "PAPER_HEADLINE_PCT", "PASS", "PER_AGENT", "PER_PARTNER", "POINT_ONLY",
    "STATUSES", "ZF", "H", "Claim", "ClaimsFileError", "Estimate", "Outcome", "PerImage", "Result",
    "c1_zero_misalignment", "c2_memory_below_one_percent", "c3_close_to_tuning", "c4_alignment_is_paid",
    "c5_improves_on_pretrained", "check_all", "claims_markdown", "entry", "estimate", "failed_guarantees",
    "gamma_key", "gamma_pct", "headline_improvement", "holm", "intersection_union", "main", "measure_all",
    "network_bytes", "scaling", "one_percent_gamma", "paired_seeds", "per_domain", "per_seed", "provenance_line",
    "read_claims", "sam_sparsities", "stacked_images", "values", "write_claims", "zf_switch_off_exact",
]
