"""The guarantees: C1 (zero misalignment), ZF (exact switch-off), C2 (memory below 1 %), C4 (alignment
is paid for by every other route). Each holds by construction; a broken one fails CI."""
from __future__ import annotations

import math

import pandas as pd

from ..metrics import EXACT_IMAGES
from .base import (GUARANTEE, ONE_PERCENT, Claim, Outcome, PerImage, by_domain, gamma_key, one_percent_gamma,
                   per_domain, sam_sparsities, values)
from .network import NETWORK_AGENTS, network_bytes

C2_LIMIT_PCT = 1.0            # C2: memory cost below 1 % ...
ALIGNMENT_ROUTES = ("tuning_retune", "tuning_copy", "equalizer")  # C4
FULL_COPY_PCT = 100.0         # C4: a second full copy of the model


def zero_misalignment(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
    gammas = sam_sparsities(df)
    csv_max = {gamma_key(g): float(values(df, "sam", "misalignment", g)["value"].abs().max()) for g in gammas}
    # evaluate.json keeps the unrounded maximum; the CSV has 6 decimals, which could hide 1e-9.
    exact = {gamma_key(g): float(evaluate_json[f"sam_gamma_{g:g}"]["max_abs_misalignment"]) for g in gammas
             if "max_abs_misalignment" in evaluate_json.get(f"sam_gamma_{g:g}", {})}
    measured = {"max_abs_misalignment_db": csv_max}
    if exact:
        measured["max_abs_misalignment_db_unrounded"] = exact
    worst = max([*csv_max.values(), *exact.values()])
    return Outcome.holds(worst == 0.0, measured, sparsities=gammas)


C1 = Claim(
    "C1", GUARANTEE, "sam misalignment loss is exactly 0 at every sparsity ratio",
    "For every evaluated γ: max over ordered agent pairs (A ≠ B) and seeds of |misalignment|, misalignment "
    "= PSNR(pretrained Tx → pretrained Rx) − PSNR(A's Tx → B's Rx) on base test images, both SAMs "
    "switched off. PASS iff it is 0.0 exactly at every γ (CSV values and, where evaluate.json has it, "
    "the unrounded maximum).",
    zero_misalignment)


def switch_off_exact(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
    rows = df[df["metric"] == "switch_off_exact"]
    by = rows.groupby(["variant", "seed"], observed=True)["value"].min()
    broken = [f"{v} (seed {s})" for (v, s), ok in by.items() if ok != 1.0]
    methods = sorted({str(m) for m in rows["method"]})
    return Outcome.holds(not broken, {"cells_checked": int(len(by)), "methods": methods, "broken": broken})


ZF = Claim(
    "ZF", GUARANTEE, "every zero-forget method, switched off, computes with W0 bit for bit",
    "For every method that claims exact switch-off (SWITCH_OFF_EXACT: sam, lora, delta_topk, bitfit), every "
    "evaluated cell (γ, seed) and every ordered pair of agents (the base agent included): the outputs of "
    "A's Tx → B's Rx after the alignment step equal the pretrained link's outputs exactly (torch.equal) on "
    f"the first {EXACT_IMAGES} base test images with the evaluation noise. PASS iff every cell holds.",
    switch_off_exact,
    applies=lambda df: bool((df["metric"] == "switch_off_exact").any()))  # an evaluate before the check: no rows


def memory_below_one_percent(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
    gammas = sam_sparsities(df)
    cost = {g: values(df, "sam", "memory_cost", g)["value"].max() for g in gammas}
    nbytes = {g: values(df, "sam", "memory_bytes", g)["value"].max() for g in gammas}
    checked = [g for g in gammas if g <= ONE_PERCENT * (1 + 1e-9)]
    measured = {"max_memory_cost_pct": {gamma_key(g): float(cost[g]) for g in gammas},
                "max_memory_bytes": {gamma_key(g): int(nbytes[g]) for g in gammas},
                "checked_sparsities": [gamma_key(g) for g in checked]}
    return Outcome.holds(bool(checked) and all(cost[g] < C2_LIMIT_PCT for g in checked), measured,
                         sparsities=gammas)


C2 = Claim(
    "C2", GUARANTEE, "sam memory cost < 1 % for every γ ≤ 1 %",
    "For every evaluated γ ≤ 1 %: max over domains and seeds of memory cost = 100 × (bytes of the stored "
    "SAM file, indices, values and header included) / (fp32 bytes of the pretrained model). PASS iff "
    "every such maximum is < 1 %.",
    memory_below_one_percent)


def alignment_is_paid(df: pd.DataFrame, evaluate_json: dict, per_image: PerImage | None = None) -> Outcome:
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
    routes["tuning_retune"]["forgetting_db"] = by_domain(forgetting)
    routes["tuning_retune"]["mean_forgetting_db"] = float(forgetting.mean())
    return Outcome.holds(all(r["pays"] for r in routes.values()), routes, sam_sparsity=sam_gamma,
                         sam_cost_pct=sam_pct)


C4 = Claim(
    "C4", GUARANTEE, "tuning and equalizer pay for alignment: misalignment > 0, a full copy (≥ 100 %), or "
    "the equalizer's K − 1 equalizers per agent",
    "For each alignment route, from the honest memory (bytes an agent stores beyond the shared model and "
    "actually needs): tuning_retune (re-tuned on base data, stores nothing) pays iff its mean misalignment "
    "over ordered pairs > 0 dB; tuning_copy (a second full copy) iff memory ≥ 100 % or misalignment > 0; "
    "equalizer (K − 1 equalizers per receiver, measured at K = D = number of domains) iff misalignment > 0 "
    "or its stored bytes > 0. PASS iff every route pays. Also reported: the equalizer's cost per partner "
    "(measured / (D − 1)), its cost at K = 1024 ((K − 1) × per partner), the K from which it reaches a "
    "full copy and exceeds sam's per-agent cost at γ = 1 %; tuning_retune's forgetting = domain PSNR of "
    "tuning_copy − domain PSNR of tuning_retune, per domain.",
    alignment_is_paid)
