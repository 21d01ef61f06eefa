"""The paper's claims (SPEC.md, "Paper claims"), each checked from the evaluate stage's tidy table.

One function per claim: it takes the tidy DataFrame (columns of ``evaluation.csv``; ``sparsity`` a
float, NaN for methods without one; ``seed`` an int; ``domain``/``tx``/``rx`` strings), the evaluate
stage's summary (``evaluate.json``) and, where evaluate wrote them, the per-image values
(``PerImage``); it returns an entry ``{id, kind, statement, definition, measured, status,
summary}`` (``summary``: the measured result in one line). *Guarantees* hold by construction and
fail CI when broken (PASS/FAIL); *findings* are measured and reported PASS / FAIL / INCONCLUSIVE
from the 95 % interval of the claimed quantity (``pipeline.stats``), whatever they say, and never
fail CI.

Intervals of a finding: over seeds, the Student-t interval of the per-seed value (``mean_ci``); with
one seed and per-image values, a paired bootstrap over test images of the per-image difference;
with one seed and none, the point estimate decides (no interval).

Also here: the memory of a network of K agents (``network_bytes``), from the measured per-agent
bytes: the report's ``memory_network`` table and claim C4 use the same model.

``python -m pipeline.claims check reports/<run>/claims.json`` prints one line per claim and exits
1 when a guarantee failed, 2 when the file cannot be read, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .stats import FAIL, INCONCLUSIVE, PASS, Interval, mean_ci, paired_bootstrap, verdict
from .storage import write_text

GUARANTEE, FINDING = "guarantee", "finding"
STATUSES = (PASS, FAIL, INCONCLUSIVE)

ONE_PERCENT = 0.01            # the paper's "γ = 1 %"
C2_LIMIT_PCT = 1.0            # C2: memory cost below 1 % ...
C3_TOLERANCE_DB = 0.5         # C3: sam within 0.5 dB of full tuning
ALIGNMENT_ROUTES = ("tuning_retune", "tuning_copy", "equalizer")  # C4
FULL_COPY_PCT = 100.0         # C4: a second full copy of the model
HEADLINE_BASELINES = ("pretrained", "tuning_retune")
PAPER_HEADLINE_PCT = 29.7

# Memory in a network of K agents, from each method's measured bytes per agent (one agent per domain):
# "agent": the same per agent whatever K (a SAM, adapter or bias file; tuning_copy's second full copy);
# "partner": one equalizer per partner, (K - 1) of them, the measured bytes being D - 1 of them (D domains).
PER_AGENT, PER_PARTNER = "agent", "partner"
NETWORK_SCALING = {"sam": PER_AGENT, "lora": PER_AGENT, "delta_topk": PER_AGENT, "bitfit": PER_AGENT,
                   "tuning_copy": PER_AGENT, "equalizer": PER_PARTNER}
NETWORK_AGENTS = tuple(2 ** i for i in range(1, 11))  # K = 2, 4, ..., 1024


def network_bytes(method: str, measured_per_agent: float, agents: int, domains: int) -> float:
    """Bytes one agent stores beyond the shared model in a network of ``agents`` agents, from what it was
    measured to store with ``domains`` agents (the evaluation's network: one agent per domain)."""
    if NETWORK_SCALING[method] == PER_AGENT:
        return float(measured_per_agent)
    if domains < 2:
        raise ValueError(f"network_bytes: {method} needs at least 2 domains to have partners, got {domains}")
    return (agents - 1) * measured_per_agent / (domains - 1)


# --------------------------------------------------------------------------------- table access
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


# ------------------------------------------------------------------------------- per-image values
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


# ------------------------------------------------------------------------------------ estimates
@dataclass(frozen=True)
class Estimate:
    """The claimed quantity's 95 % interval and what it is over."""
    interval: Interval
    over: str

    def as_dict(self) -> dict:
        return {**self.interval.as_dict(), "over": self.over}

    def text(self, unit: str, over: bool = True) -> str:
        """'+0.27 dB [95 % CI +0.10, +0.44; 3 seeds, Student-t]' (``over``: say what the interval is over)."""
        iv, why = self.interval, f"; {self.over}" if over else ""
        if iv.n < 2 or not math.isfinite(iv.lo):
            return f"{iv.mean:+.2f} {unit}" + (f" ({self.over})" if over else "")
        return f"{iv.mean:+.2f} {unit} [95 % CI {iv.lo:+.2f}, {iv.hi:+.2f}{why}]"


POINT_ONLY = "one seed, no per-image values: point estimate, no interval"


def estimate(per_seed_values: pd.Series, images: tuple[np.ndarray, np.ndarray] | None) -> Estimate:
    """Over seeds when there are several; else a paired bootstrap over test images of ``images`` (a, b:
    the claimed quantity is mean(a - b)) when given; else the one seed's value."""
    if len(per_seed_values) >= 2:
        return Estimate(mean_ci(per_seed_values), f"{len(per_seed_values)} seeds, Student-t")
    if images is not None:
        return Estimate(paired_bootstrap(*images), f"one seed, paired bootstrap over {len(images[0])} test images")
    return Estimate(mean_ci(per_seed_values), POINT_ONLY)


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


def _only_seed(frame: pd.DataFrame | pd.Series) -> int:
    return int(frame.index[0])


def _by_domain(series: pd.Series) -> dict:
    return {str(d): float(v) for d, v in series.items()}


def _signed(series: pd.Series, unit: str = "dB") -> str:
    return ", ".join(f"{d} {v:+.2f}" for d, v in series.items()) + f" {unit}"


def _entry(cid: str, kind: str, statement: str, definition: str, measured: dict, status: str | bool,
           summary: str) -> dict:
    if isinstance(status, bool):  # a guarantee: holds or not
        status = PASS if status else FAIL
    return {"id": cid, "kind": kind, "statement": statement, "definition": definition, "measured": measured,
            "status": status, "summary": summary}


INTERVAL_RULE = ("PASS when the 95 % interval lies on the claimed side of the threshold, FAIL when it lies on "
                 "the other side, INCONCLUSIVE when it straddles it")


# ---------------------------------------------------------------------------------------- claims
def c1_zero_misalignment(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
    gammas = sam_sparsities(df)
    csv_max = {gamma_key(g): float(values(df, "sam", "misalignment", g)["value"].abs().max()) for g in gammas}
    # evaluate.json keeps the unrounded maximum; the CSV has 6 decimals, which could hide 1e-9.
    exact = {gamma_key(g): float(evaluate_json[f"sam_gamma_{g:g}"]["max_abs_misalignment"]) for g in gammas
             if "max_abs_misalignment" in evaluate_json.get(f"sam_gamma_{g:g}", {})}
    measured = {"max_abs_misalignment_db": csv_max}
    if exact:
        measured["max_abs_misalignment_db_unrounded"] = exact
    worst = max([*csv_max.values(), *exact.values()])
    passed = worst == 0.0
    line = ("max |misalignment| = 0 dB exactly at every γ (" + ", ".join(map(gamma_pct, gammas)) + ")"
            if passed else "max |misalignment| per γ: " + ", ".join(
                f"{gamma_pct(float(k))}: {max(v, exact.get(k, 0.0)):.3g} dB" for k, v in csv_max.items()))
    return _entry(
        "C1", GUARANTEE, "sam misalignment loss is exactly 0 at every sparsity ratio",
        "For every evaluated γ: max over ordered agent pairs (A ≠ B) and seeds of |misalignment|, misalignment "
        "= PSNR(pretrained Tx → pretrained Rx) − PSNR(A's Tx → B's Rx) on base test images, both SAMs "
        "switched off. PASS iff it is 0.0 exactly at every γ (CSV values and, where evaluate.json has it, "
        "the unrounded maximum).",
        measured, passed, line)


def c2_memory_below_one_percent(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
    gammas = sam_sparsities(df)
    cost = {g: values(df, "sam", "memory_cost", g)["value"].max() for g in gammas}
    nbytes = {g: values(df, "sam", "memory_bytes", g)["value"].max() for g in gammas}
    checked = [g for g in gammas if g <= ONE_PERCENT * (1 + 1e-9)]
    passed = bool(checked) and all(cost[g] < C2_LIMIT_PCT for g in checked)
    measured = {"max_memory_cost_pct": {gamma_key(g): float(cost[g]) for g in gammas},
                "max_memory_bytes": {gamma_key(g): int(nbytes[g]) for g in gammas},
                "checked_sparsities": [gamma_key(g) for g in checked]}
    line = "max memory cost per γ: " + ", ".join(f"{gamma_pct(g)}: {cost[g]:.3f} %" for g in gammas)
    if not checked:
        line += " (no γ ≤ 1 % evaluated: nothing to check)"
    return _entry(
        "C2", GUARANTEE, "sam memory cost < 1 % for every γ ≤ 1 %",
        "For every evaluated γ ≤ 1 %: max over domains and seeds of memory cost = 100 × (bytes of the stored "
        "SAM file, indices, values and header included) / (fp32 bytes of the pretrained model). PASS iff "
        "every such maximum is < 1 %.",
        measured, passed, line)


def c3_close_to_tuning(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
    gamma, note = one_percent_gamma(df)
    tuned, sam = paired_seeds(per_seed(df, "tuning_copy"), per_seed(df, "sam", sparsity=gamma))
    gap = tuned - sam                          # seed x domain
    est = estimate(gap.mean(axis=1), stacked_images(per_image, _only_seed(gap), ("tuning_copy", None),
                                                    ("sam", gamma), list(gap.columns)))
    status = verdict(est.interval, C3_TOLERANCE_DB, "below")
    mean_gap = gap.mean(axis=0)
    return _entry(
        "C3", FINDING, "sam domain PSNR within 0.5 dB of full tuning at γ = 1 %",
        "gap = domain PSNR of the fully tuned agent (tuning_copy: its local quality) − domain PSNR of "
        f"sam at γ = 1 %, averaged over domains (a negative gap: sam is better); claimed: gap ≤ "
        f"{C3_TOLERANCE_DB} dB. Interval: over seeds of the per-seed gap; with one seed, a paired bootstrap "
        f"over test images of the per-image gap (mean over domains); {INTERVAL_RULE}. " + note + ".",
        {"sparsity": gamma_key(gamma), "sparsity_note": note, "sam_domain_psnr_db": _by_domain(sam.mean(axis=0)),
         "tuning_domain_psnr_db": _by_domain(tuned.mean(axis=0)), "gap_db": _by_domain(mean_gap),
         "mean_gap_db": est.interval.mean, "mean_gap_interval": est.as_dict()},
        status, f"mean gap (tuned − sam at {gamma_pct(gamma)}) {est.text('dB')}; per domain: {_signed(mean_gap)}")


def c4_alignment_is_paid(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
    domains = list(dict.fromkeys(values(df, "equalizer", "memory_bytes")["domain"]))
    k = len(domains)
    routes = {}
    for route in ALIGNMENT_ROUTES:
        mis = float(values(df, route, "misalignment")["value"].mean())
        mem = float(values(df, route, "memory_cost")["value"].min())
        nbytes = float(values(df, route, "memory_bytes")["value"].min())
        routes[route] = {"mean_misalignment_db": mis, "memory_cost_pct": mem, "memory_bytes": nbytes}
    routes["tuning_retune"]["pays"] = routes["tuning_retune"]["mean_misalignment_db"] > 0
    copy = routes["tuning_copy"]
    copy["pays"] = copy["mean_misalignment_db"] > 0 or copy["memory_cost_pct"] >= FULL_COPY_PCT
    eq = routes["equalizer"]
    eq["pays"] = eq["mean_misalignment_db"] > 0 or eq["memory_bytes"] > 0
    # The equalizer's honest cost: K - 1 equalizers per receiver, measured at K = D (one agent per domain).
    per_partner_pct = eq["memory_cost_pct"] / (k - 1) if k > 1 else math.nan
    eq.update({"agents": k, "per_partner_cost_pct": per_partner_pct,
               "cost_pct_at_1024_agents": network_bytes("equalizer", eq["memory_cost_pct"], NETWORK_AGENTS[-1], k)})
    eq["agents_to_reach_a_full_copy"] = (math.ceil(1 + FULL_COPY_PCT / per_partner_pct)
                                         if per_partner_pct > 0 else None)
    sam_gamma, _ = one_percent_gamma(df)
    sam_pct = float(values(df, "sam", "memory_cost", sam_gamma)["value"].max())
    eq["agents_to_exceed_sam_pct"] = math.floor(1 + sam_pct / per_partner_pct) + 1 if per_partner_pct > 0 else None
    forgetting = per_domain(df, "tuning_copy") - per_domain(df, "tuning_retune")
    routes["tuning_retune"]["forgetting_db"] = _by_domain(forgetting)
    routes["tuning_retune"]["mean_forgetting_db"] = float(forgetting.mean())
    passed = all(r["pays"] for r in routes.values())
    below_copy = eq["memory_cost_pct"] < FULL_COPY_PCT
    parts = [(f"tuning_retune: {routes['tuning_retune']['mean_misalignment_db']:.2f} dB misalignment, forgets "
              f"{forgetting.mean():.2f} dB of domain PSNR"),
             f"tuning_copy: {copy['memory_cost_pct']:.1f} % (a second full copy)",
             (f"equalizer: {eq['memory_cost_pct']:.2f} % per agent at K = {k} ({per_partner_pct:.2f} % per partner, "
              f"growing as K − 1: {eq['cost_pct_at_1024_agents']:.1f} % at K = {NETWORK_AGENTS[-1]}), "
              f"{eq['mean_misalignment_db']:.2f} dB misalignment")]
    honest = (f"On honest memory the equalizer costs less than a full copy at K = {k} ({eq['memory_cost_pct']:.2f} %): "
              "the view that every baseline pays at least a full model holds for tuning_copy only, the equalizer "
              f"reaches a full copy from K = {eq['agents_to_reach_a_full_copy']} agents"
              if below_copy else
              f"The equalizer costs at least a full copy already at K = {k} ({eq['memory_cost_pct']:.2f} %)")
    if eq["agents_to_exceed_sam_pct"] is not None:
        honest += (f" and more than sam at {gamma_pct(sam_gamma)} ({sam_pct:.3f} %) from K = "
                   f"{eq['agents_to_exceed_sam_pct']}")
    return _entry(
        "C4", GUARANTEE, "tuning and equalizer pay for alignment: misalignment > 0, a full copy (≥ 100 %), or "
        "the equalizer's K − 1 equalizers per agent",
        "For each alignment route, from the honest memory (bytes an agent stores beyond the shared model and "
        "actually needs): tuning_retune (re-tuned on base data, stores nothing) pays iff its mean misalignment "
        "over ordered pairs > 0 dB; tuning_copy (a second full copy) iff memory ≥ 100 % or misalignment > 0; "
        "equalizer (K − 1 equalizers per receiver, measured at K = D = number of domains) iff misalignment > 0 "
        "or its stored bytes > 0. PASS iff every route pays. Also reported: the equalizer's cost per partner "
        "(measured / (D − 1)), its cost at K = 1024 ((K − 1) × per partner), the K from which it reaches a "
        "full copy and exceeds sam's per-agent cost at γ = 1 %; tuning_retune's forgetting = domain PSNR of "
        "tuning_copy − domain PSNR of tuning_retune, per domain. " + honest + ".",
        routes, passed, "; ".join(parts) + ". " + honest)


def c5_improves_on_pretrained(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
    gamma = sam_sparsities(df)[-1]
    sam, pre = paired_seeds(per_seed(df, "sam", sparsity=gamma), per_seed(df, "pretrained"))
    delta = sam - pre                          # seed x domain
    seed = _only_seed(delta)
    estimates, statuses = {}, {}
    for d in delta.columns:
        images = stacked_images(per_image, seed, ("sam", gamma), ("pretrained", None), [d])
        estimates[d] = estimate(delta[d], images)
        statuses[d] = verdict(estimates[d].interval, 0.0, "above")
    status = (FAIL if FAIL in statuses.values() else PASS if set(statuses.values()) == {PASS} else INCONCLUSIVE)
    mean_delta = delta.mean(axis=0)
    return _entry(
        "C5", FINDING, "sam improves domain PSNR over the pretrained model on every domain",
        "delta = domain PSNR of sam at the largest evaluated γ − domain PSNR of the pretrained model, per "
        "domain; claimed: delta > 0 on every domain. Interval per domain: over seeds of the per-seed delta; "
        "with one seed, a paired bootstrap over the domain's test images. PASS iff every domain's interval "
        "lies above 0, FAIL iff one lies below 0, INCONCLUSIVE otherwise.",
        {"sparsity": gamma_key(gamma), "delta_db": _by_domain(mean_delta), "min_delta_db": float(mean_delta.min()),
         "delta_interval": {d: {**e.as_dict(), "status": statuses[d]} for d, e in estimates.items()}},
        status, f"sam at {gamma_pct(gamma)} − pretrained: " + ", ".join(
            f"{d} {e.text('dB', over=False)}" for d, e in estimates.items())
        + " (" + "; ".join(dict.fromkeys(e.over for e in estimates.values())) + ")")


def headline_improvement(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
    gamma, note = one_percent_gamma(df)
    gains = {}                                 # baseline -> seed x domain, %
    for b in HEADLINE_BASELINES:
        sam, base = paired_seeds(per_seed(df, "sam", sparsity=gamma), per_seed(df, b))
        gains[b] = 100 * (sam - base) / base
    table = pd.DataFrame({b: g.mean(axis=0) for b, g in gains.items()})  # domain x baseline, seed means
    domain, baseline = table.stack().idxmax()
    per_seed_gain = gains[baseline][domain]
    images = stacked_images(per_image, _only_seed(per_seed_gain), ("sam", gamma), (baseline, None),
                            [domain])
    if images is not None:  # a relative gain: the per-image difference over the baseline's mean PSNR
        images = (100 * images[0] / images[1].mean(), 100 * images[1] / images[1].mean())
    est = estimate(per_seed_gain, images)
    return _entry(
        "H", FINDING, f"up to {PAPER_HEADLINE_PCT} % domain PSNR improvement over baselines (the paper's headline)",
        "max over domains d and baselines b ∈ {" + ", ".join(HEADLINE_BASELINES) + "} of "
        "100 × (PSNR_sam(γ = 1 %, d) − PSNR_b(d)) / PSNR_b(d), domain PSNR in dB, on the means over seeds; "
        f"claimed: ≥ the paper's {PAPER_HEADLINE_PCT} %. Interval: of the gain at that (d, b), over seeds of the "
        "per-seed gain; with one seed, a paired bootstrap over test images of the per-image PSNR difference "
        f"divided by b's mean PSNR (held fixed); {INTERVAL_RULE}. The paper's own definition is unknown "
        f"(SPEC.md); this is ours. {note}.",
        {"sparsity": gamma_key(gamma), "sparsity_note": note, "max_improvement_pct": float(table.loc[domain, baseline]),
         "max_improvement_interval": est.as_dict(), "argmax_domain": domain, "argmax_baseline": baseline,
         "paper_pct": PAPER_HEADLINE_PCT, "improvement_pct": {b: _by_domain(table[b]) for b in HEADLINE_BASELINES}},
        verdict(est.interval, PAPER_HEADLINE_PCT, "above"),
        f"up to {est.text('%')} ({domain}, vs {baseline}) at {gamma_pct(gamma)}; paper: {PAPER_HEADLINE_PCT} %")


def zf_switch_off_exact(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> dict:
    rows = df[df["metric"] == "switch_off_exact"]
    by = rows.groupby(["variant", "seed"], observed=True)["value"].min()
    broken = [f"{v} (seed {s})" for (v, s), ok in by.items() if ok != 1.0]
    methods = sorted({str(m) for m in rows["method"]})
    line = (f"{len(by)} cells of {', '.join(methods)}: every link switched off = W0 bit for bit" if not broken
            else "not bit for bit: " + ", ".join(broken))
    return _entry(
        "ZF", GUARANTEE, "every zero-forget method, switched off, computes with W0 bit for bit",
        "For every method that claims exact switch-off (SWITCH_OFF_EXACT: sam, lora, delta_topk, bitfit), every "
        "evaluated cell (γ, seed) and every ordered pair of agents (the base agent included): the outputs of "
        "A's Tx → B's Rx after the alignment step equal the pretrained link's outputs exactly (torch.equal) on "
        f"the first {EXACT_IMAGES_NOTE} base test images with the evaluation noise. PASS iff every cell holds.",
        {"cells_checked": int(len(by)), "methods": methods, "broken": broken}, not broken, line)


EXACT_IMAGES_NOTE = 256  # pipeline/stages/evaluate.py EXACT_IMAGES (the check's images)

CLAIMS = (c1_zero_misalignment, c2_memory_below_one_percent, c3_close_to_tuning, c4_alignment_is_paid,
          c5_improves_on_pretrained, headline_improvement)


def check_all(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> list[dict]:
    """Every claim's entry, in the paper's order; ZF (the switch-off check of every zero-forget method)
    when evaluate measured it (an evaluate before the check has no such rows)."""
    entries = [claim(df, evaluate_json, per_image) for claim in CLAIMS]
    if (df["metric"] == "switch_off_exact").any():
        entries.insert(1, zf_switch_off_exact(df, evaluate_json, per_image))
    return entries


def failed_guarantees(entries: list[dict]) -> list[str]:
    return [e["id"] for e in entries if e["kind"] == GUARANTEE and e["status"] != PASS]


# ----------------------------------------------------------------------------------------- files
def provenance_line(prov: dict) -> str:
    return (f"Profile `{prov['profile']}` · data source `{prov['data_source']}` · git commit "
            f"`{prov['git_commit']}` · MLflow run `{prov['mlflow_run_id']}`")


def _number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def _measured_lines(measured: dict, indent: str = "") -> list[str]:
    lines = []
    for key, v in measured.items():
        if isinstance(v, dict) and any(isinstance(x, dict) for x in v.values()):
            lines += [f"{indent}- {key}:", *_measured_lines(v, indent + "  ")]
        elif isinstance(v, dict):
            lines.append(f"{indent}- {key}: " + ", ".join(f"{k}: {_number(x)}" for k, x in v.items()))
        elif isinstance(v, list):
            lines.append(f"{indent}- {key}: " + ", ".join(map(_number, v)))
        else:
            lines.append(f"{indent}- {key}: {_number(v)}")
    return lines


def claims_markdown(entries: list[dict], prov: dict) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["# Paper claims", "", provenance_line(prov), "",
             "Guarantees hold by construction; a failed guarantee fails CI. Findings are measured and "
             "reported as they are; they never fail CI.", "",
             "| id | kind | statement | measured | status |", "|---|---|---|---|---|"]
    lines += [f"| {e['id']} | {e['kind']} | {cell(e['statement'])} | {cell(e['summary'])} | **{e['status']}** |"
              for e in entries]
    for e in entries:
        lines += ["", f"## {e['id']}: {e['statement']}", "", f"{e['kind']}, **{e['status']}**", "",
                  f"Definition: {e['definition']}", "", "Measured:", "", *_measured_lines(e["measured"])]
    return "\n".join(lines) + "\n"


def write_claims(entries: list[dict], folder: Path, provenance: dict) -> list[Path]:
    """``claims.json`` (provenance + entries) and ``claims.md`` in ``folder``; returns both paths."""
    json_path, md_path = folder / "claims.json", folder / "claims.md"
    write_text(json_path, json.dumps({"provenance": provenance, "claims": entries}, indent=2,
                                     ensure_ascii=False) + "\n")
    write_text(md_path, claims_markdown(entries, provenance))
    return [json_path, md_path]


# ------------------------------------------------------------------------------------------- CLI
class ClaimsFileError(ValueError):
    """claims.json missing, not JSON, or not the shape write_claims writes."""


def read_claims(path: Path) -> list[dict]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ClaimsFileError(f"{path}: cannot read ({err.__class__.__name__}: {err})") from None
    except json.JSONDecodeError as err:
        raise ClaimsFileError(f"{path}: not valid JSON ({err})") from None
    entries = doc.get("claims") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ClaimsFileError(f"{path}: expected an object with a non-empty 'claims' list")
    for e in entries:
        if not (isinstance(e, dict) and e.get("kind") in (GUARANTEE, FINDING) and e.get("status") in STATUSES
                and isinstance(e.get("id"), str)):
            raise ClaimsFileError(f"{path}: a claim lacks id, kind (guarantee|finding) or status "
                                  f"({'|'.join(STATUSES)}): {e!r:.120}")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.claims", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="print each claim; exit 1 if a guarantee failed, 2 if unreadable")
    check.add_argument("path", type=Path, help="reports/<run>/claims.json")
    args = parser.parse_args(argv)
    try:
        entries = read_claims(args.path)
    except ClaimsFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for e in entries:
        print(f"{e['id']:<3} {e['kind']:<9} {e['status']}  {e.get('statement', '')}: {e.get('summary', '')}")
    failed = failed_guarantees(entries)
    findings = [e for e in entries if e["kind"] == FINDING]
    print(f"guarantees: {'all PASS' if not failed else 'FAILED ' + ', '.join(failed)}; findings: "
          f"{sum(e['status'] == PASS for e in findings)}/{len(findings)} PASS (reported, not enforced)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
