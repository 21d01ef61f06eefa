"""Combining per-domain decisions into one verdict.

- "on every domain": the intersection-union test (Berger 1982). The claim is the intersection of the
  per-domain claims; it is shown (PASS) iff every domain's own level-α test shows it, with no
  multiplicity correction, and refuted (FAIL) as soon as one domain's interval lies on the wrong side.
- "on some domain": Holm's step-down procedure (Holm 1979) over the per-domain p-values, which keeps
  the family-wise error rate at ``alpha``: the claim is shown iff Holm rejects for some domain, and
  refuted (FAIL) iff every domain's interval lies on the wrong side (the intersection-union test of
  its negation); with point estimates only (no p-values) a domain's point estimate stands in.

``per_domain_block`` gives both, and which one the paper's sentence asks for (``reading``), as the
``per_domain`` block of a finding's claims.json values.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from ..stats import FAIL, INCONCLUSIVE, PASS
from .base import ALPHA, STATUSES, Decision

EVERY, SOME = "every domain", "some domain"
READINGS = (EVERY, SOME)


def intersection_union(verdicts: Iterable[str]) -> str:
    """One verdict for "holds on every domain" from each domain's verdict: PASS iff all PASS, FAIL iff
    one FAILs, else INCONCLUSIVE."""
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("intersection_union: no verdicts")
    if unknown := [v for v in verdicts if v not in STATUSES]:
        raise ValueError(f"intersection_union: verdicts must be {'|'.join(STATUSES)}, got {unknown}")
    return FAIL if FAIL in verdicts else PASS if set(verdicts) == {PASS} else INCONCLUSIVE


def holm(p_values: Sequence[float] | Mapping[str, float], alpha: float = 0.05) -> list[bool] | dict[str, bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``: sorted
    ascending, the i-th smallest p-value (i = 0, 1, ...) of m is rejected while p <= alpha / (m - i),
    and none after the first that is not. Returns a list in input order, or a dict for a mapping."""
    if not 0 < alpha < 1:
        raise ValueError(f"holm: alpha must lie in (0, 1), got {alpha}")
    keys = list(p_values) if isinstance(p_values, Mapping) else None
    ps = [float(p_values[k]) for k in keys] if keys is not None else [float(p) for p in p_values]
    if bad := [p for p in ps if math.isnan(p) or not 0 <= p <= 1]:
        raise ValueError(f"holm: p-values must lie in [0, 1], got {bad}")
    rejected = [False] * len(ps)
    for rank, i in enumerate(sorted(range(len(ps)), key=lambda j: ps[j])):
        if ps[i] > alpha / (len(ps) - rank):
            break
        rejected[i] = True
    return dict(zip(keys, rejected)) if keys is not None else rejected


def some_domain(decisions: Mapping[str, Decision], alpha: float = ALPHA) -> tuple[str, list[str]]:
    """One verdict for "holds on some domain" and the domains Holm shows it on: PASS iff Holm rejects
    for one or more, FAIL iff every domain FAILs, else INCONCLUSIVE. Without p-values (point
    estimates) the domains whose point estimate is on the claimed side (their verdict PASS)."""
    if not decisions:
        raise ValueError("some_domain: no domains")
    verdicts = [d.verdict for d in decisions.values()]
    if any(d.p is None for d in decisions.values()):
        shown = [k for k, d in decisions.items() if d.verdict == PASS]
    else:
        shown = [k for k, rejected in holm({k: d.p for k, d in decisions.items()}, alpha).items() if rejected]
    return (PASS if shown else FAIL if set(verdicts) == {FAIL} else INCONCLUSIVE), shown


def per_domain_block(decisions: Mapping[str, Decision], reading: str,
                     nested: Mapping[str, Mapping] | None = None) -> dict:
    """claims.json's ``per_domain`` block: which reading the claim has, the verdict on every domain
    (intersection-union) and on some domain (Holm, and where it rejects), and each domain's interval,
    p-value and verdict (``nested``: that table, keyed otherwise, e.g. domain then baseline)."""
    if reading not in READINGS:
        raise ValueError(f"per_domain_block: reading must be one of {READINGS}, not {reading!r}")
    some, shown = some_domain(decisions)
    every = intersection_union(d.verdict for d in decisions.values())
    return {"reading": reading, "status": every if reading == EVERY else some, "every_domain": every,
            "some_domain": some, "holm_shown": shown,
            "domains": dict(nested) if nested is not None else {k: d.as_dict() for k, d in decisions.items()}}
