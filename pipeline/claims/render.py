"""The one place that turns outcomes into text: each claim's one-line summary and the measured part of
its definition, the ``claims.json`` entry, ``claims.md`` (with the findings' per-domain verdicts and
the rule that combines them, and the main gains' intervals over seeds and over bases), and the files.
``per_domain_lines`` and ``gains_lines`` work on claims.json's contents, so the results page reuses them."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..storage import write_text
from .base import PASS, Estimate, Outcome, Result, gamma_pct
from .base import ALPHA
from .findings import PAPER_HEADLINE_PCT
from .gains import OVER_BASES
from .guarantees import FULL_COPY_PCT
from .network import NETWORK_AGENTS


def interval_text(est: Estimate, unit: str, over: bool = True) -> str:
    """'+0.27 dB [95 % CI +0.10, +0.44; 3 seeds, Student-t]' (``over``: say what the interval is over)."""
    iv, why = est.interval, f"; {est.over}" if over else ""
    if iv.n < 2 or not math.isfinite(iv.lo):
        return f"{iv.mean:+.2f} {unit}" + (f" ({est.over})" if over else "")
    return f"{iv.mean:+.2f} {unit} [95 % CI {iv.lo:+.2f}, {iv.hi:+.2f}{why}]"


def _signed(by_domain: dict, unit: str = "dB") -> str:
    return ", ".join(f"{d} {v:+.2f}" for d, v in by_domain.items()) + f" {unit}"


# -------------------------------------------------------------------------------- per-claim text
def _c1(o: Outcome) -> str:
    gammas, csv_max = o.facts["sparsities"], o.measured["max_abs_misalignment_db"]
    if o.verdict == PASS:
        return "max |misalignment| = 0 dB exactly at every γ (" + ", ".join(map(gamma_pct, gammas)) + ")"
    exact = o.measured.get("max_abs_misalignment_db_unrounded", {})
    return "max |misalignment| per γ: " + ", ".join(
        f"{gamma_pct(float(k))}: {max(v, exact.get(k, 0.0)):.3g} dB" for k, v in csv_max.items())


def _zf(o: Outcome) -> str:
    m = o.measured
    if m["broken"]:
        return "not bit for bit: " + ", ".join(m["broken"])
    return f"{m['cells_checked']} cells of {', '.join(m['methods'])}: every link switched off = W0 bit for bit"


def _c2(o: Outcome) -> str:
    cost = o.measured["max_memory_cost_pct"]
    line = "max memory cost per γ: " + ", ".join(f"{gamma_pct(g)}: {cost[k]:.3f} %"
                                                  for g, k in zip(o.facts["sparsities"], cost))
    return line + ("" if o.measured["checked_sparsities"] else " (no γ ≤ 1 % evaluated: nothing to check)")


def _c3(o: Outcome) -> str:
    return (f"mean gap (tuned − sam at {gamma_pct(o.facts['sparsity'])}) {interval_text(o.estimate, 'dB')}; "
            f"per domain: {_signed(o.measured['gap_db'])}")


def _c4_honest(o: Outcome) -> str:
    eq, k = o.measured["equalizer"], o.measured["equalizer"]["agents"]
    if eq["memory_cost_pct"] < FULL_COPY_PCT:
        honest = (f"On honest memory the equalizer costs less than a full copy at K = {k} "
                  f"({eq['memory_cost_pct']:.2f} %): the view that every baseline pays at least a full model holds "
                  f"for tuning_copy only, the equalizer reaches a full copy from K = "
                  f"{eq['agents_to_reach_a_full_copy']} agents")
    else:
        honest = f"The equalizer costs at least a full copy already at K = {k} ({eq['memory_cost_pct']:.2f} %)"
    if eq["agents_to_exceed_sam_pct"] is not None:
        honest += (f" and more than sam at {gamma_pct(o.facts['sam_sparsity'])} ({o.facts['sam_cost_pct']:.3f} %) "
                   f"from K = {eq['agents_to_exceed_sam_pct']}")
    return honest


def _c4(o: Outcome) -> str:
    retune, copy, eq = (o.measured[r] for r in ("tuning_retune", "tuning_copy", "equalizer"))
    parts = [(f"tuning_retune: {retune['mean_misalignment_db']:.2f} dB misalignment, forgets "
              f"{retune['mean_forgetting_db']:.2f} dB of domain PSNR"),
             f"tuning_copy: {copy['memory_cost_pct']:.1f} % (a second full copy)",
             (f"equalizer: {eq['memory_cost_pct']:.2f} % per agent at K = {eq['agents']} "
              f"({eq['per_partner_cost_pct']:.2f} % per partner, growing as K − 1: "
              f"{eq['cost_pct_at_1024_agents']:.1f} % at K = {NETWORK_AGENTS[-1]}), "
              f"{eq['mean_misalignment_db']:.2f} dB misalignment")]
    return "; ".join(parts) + ". " + _c4_honest(o)


def _c5(o: Outcome) -> str:
    estimates = {d: sub.estimate for d, sub in o.domains.items()}
    return (f"sam at {gamma_pct(o.facts['sparsity'])} − pretrained: "
            + ", ".join(f"{d} {interval_text(e, 'dB', over=False)}" for d, e in estimates.items())
            + " (" + "; ".join(dict.fromkeys(e.over for e in estimates.values())) + ")")


def _h(o: Outcome) -> str:
    m = o.measured
    return (f"up to {interval_text(o.estimate, '%')} ({m['argmax_domain']}, vs {m['argmax_baseline']}) at "
            f"{gamma_pct(o.facts['sparsity'])}; paper: {PAPER_HEADLINE_PCT} %")


SUMMARIES = {"C1": _c1, "ZF": _zf, "C2": _c2, "C3": _c3, "C4": _c4, "C5": _c5, "H": _h}
# What a definition states about this table (which γ stood in for 1 %, the equalizer's honest cost).
DEFINITION_TAILS = {"C3": lambda o: o.measured["sparsity_note"], "C4": _c4_honest,
                    "H": lambda o: o.measured["sparsity_note"]}


def summary(result: Result) -> str:
    return SUMMARIES[result.claim.id](result.outcome)


def definition(result: Result) -> str:
    tail = DEFINITION_TAILS.get(result.claim.id)
    return result.claim.definition + (f" {tail(result.outcome)}." if tail else "")


def entry(result: Result) -> dict:
    """The claim's ``claims.json`` entry (what ``read_claims`` gives back)."""
    c, o = result.claim, result.outcome
    return {"id": c.id, "kind": c.kind, "statement": c.statement, "definition": definition(result),
            "measured": o.measured, "status": o.verdict, "summary": summary(result)}


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


# ------------------------------------------------------------------------------------ per domain
PER_DOMAIN_RULE = (
    "Each finding over domains is also decided on each domain, from that domain's 95 % interval (the same "
    "estimates as the headline: Student-t over seeds; with one seed, the paired bootstrap over the domain's "
    "test images; with one seed and no per-image values, the point estimate). Its p-value comes from the same"
    " estimate: twice the one-sided p-value of \"not on the claimed side\" (the Student-t over seeds; with one "
    "seed, the fraction of the bootstrap's resamples not on the claimed side), so p ≤ {a:g} if and only if "
    "the interval lies on the claimed side (for the bootstrap, up to its quantile interpolation). *On every "
    "domain*: the intersection-union test, PASS iff every domain's test passes at level {a:g} (the claim is "
    "the intersection of the per-domain claims: no multiplicity correction is needed), FAIL as soon as one "
    "domain's interval lies on the wrong side, INCONCLUSIVE otherwise. *On some domain*: Holm's step-down "
    "procedure over the per-domain p-values at family-wise level {a:g}, PASS iff it rejects for one domain or"
    " more, FAIL iff every domain's interval lies on the wrong side, INCONCLUSIVE otherwise (with point "
    "estimates only, a domain's point estimate stands in for its test). *Reading*: which of the two the "
    "paper's sentence has; the headline verdict above is unchanged.")
READING_WHY = {
    "C3": "the paper's \"almost no loss, even improved\" is said of each agent's adaptation, and an agent is a "
          "domain; the headline verdict is on the mean gap",
    "C5": "the statement says \"on every domain\"; its headline verdict is this one",
    "H": "\"up to 29.7 %\" is the largest gain over domains and baselines, a claim about some domain: Holm over "
         "the (domain, baseline) pairs",
}


def _iv(d: dict, unit: str) -> str:
    lo, hi = d["ci95"]
    if d["n"] < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{d['mean']:+.2f} {unit} (point estimate)"
    return f"{d['mean']:+.2f} {unit} [{lo:+.2f}, {hi:+.2f}]"


def _decision(d: dict, unit: str) -> str:
    p = "" if d.get("p") is None else f", p {d['p']:.2g}"
    return f"{_iv(d, unit)}{p}: {d['status']}"


def _flat(domains: dict) -> dict:
    """{label: decision}, for a table keyed by domain, or by domain then baseline ('VA vs pretrained')."""
    if all("status" in v for v in domains.values()):
        return domains
    return {f"{d} vs {b}": x for d, by in domains.items() for b, x in by.items()}


UNITS = {"C3": "dB", "C5": "dB", "H": "%"}


def per_domain_lines(entries: list[dict]) -> list[str]:
    """The findings' per-domain table and its rule (claims.json entries); [] when none has one."""
    rows = [(e, e["measured"]["per_domain"]) for e in entries
            if isinstance(e.get("measured"), dict) and isinstance(e["measured"].get("per_domain"), dict)]
    if not rows:
        return []
    lines = [PER_DOMAIN_RULE.format(a=ALPHA), "",
             "| id | reading | per domain (95 % CI, p, verdict) | every domain | some domain (Holm) | verdict of the "
             "reading |", "|---|---|---|---|---|---|"]
    for e, b in rows:
        unit = UNITS.get(e["id"], "")
        cells = "; ".join(f"{k} {_decision(x, unit)}" for k, x in _flat(b["domains"]).items())
        shown = f" ({', '.join(b['holm_shown'])})" if b["holm_shown"] else ""
        lines.append(f"| {e['id']} | {b['reading']} | {cells} | {b['every_domain']} | {b['some_domain']}{shown} "
                     f"| **{b['status']}** |")
    lines += ["", *(f"- {e['id']}, {b['reading']}: {READING_WHY[e['id']]}." for e, b in rows if e["id"] in READING_WHY)]
    return lines


# ----------------------------------------------------------------------------------- main gains
def gains_lines(gains: dict) -> list[str]:
    """The main gains' table (claims.json's ``gains``) and what its intervals are over."""
    rec = gains["bases"]
    note = "" if gains["sparsity_note"] == "γ = 1 %" else f" ({gains['sparsity_note']})"
    head = (f"sam at {gamma_pct(float(gains['sparsity']))}{note} minus each baseline (LoRA at the same γ), per "
            "domain. *Over seeds*: the adaptation seeds on the run's one base (Student-t; with one seed, the "
            "paired bootstrap over test images, or the point estimate). *Over seeds and bases*: ")
    if rec["combined"]:
        psnr = ", ".join(f"{v:.2f}" for v in rec["other_base_test_psnr_db"])
        head += (f"the main base's mean over seeds with an interval widened by the spread of sam's gain across the "
                 f"bases study's {rec['other_bases']} other bases (pretrained "
                 f"{', '.join(map(str, rec['other_pretrain_epochs']))} epochs, base test PSNR {psnr} dB; the main "
                 f"base: {rec['main_pretrain_epochs']} epochs, {rec['main_base_test_psnr_db']:.2f} dB), a "
                 f"{rec['method']} (`docs/protocol.md`). Only sam − {OVER_BASES} has it: the bases study adapts sam "
                 "alone. The other bases' own mean gain is shown beside it, not pooled: their pretraining budget "
                 "differs from the main base's.")
    else:
        head += f"none, {rec['reason']}; every interval here is over adaptation seeds on one base."
    rows = [f"| sam − {b} | {d} | {_iv(r['seeds'], 'dB')} | "
            + (f"{_iv(r['bases'], 'dB')} | {r['bases']['other_bases_mean']:+.2f} dB |" if r["bases"]
               else "not measured | — |")
            for b, by in gains["vs"].items() for d, r in by.items()]
    return [head, "", "| gain | domain | over seeds (95 % CI) | over seeds and bases (95 % CI) | other bases' mean |",
            "|---|---|---|---|---|", *rows]


def claims_markdown(entries: list[dict], prov: dict, gains: dict | None = None) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["# Paper claims", "", provenance_line(prov), "",
             "Guarantees hold by construction; a failed guarantee fails CI. Findings are measured and "
             "reported as they are; they never fail CI.", "",
             "| id | kind | statement | measured | status |", "|---|---|---|---|---|"]
    lines += [f"| {e['id']} | {e['kind']} | {cell(e['statement'])} | {cell(e['summary'])} | **{e['status']}** |"
              for e in entries]
    if per := per_domain_lines(entries):
        lines += ["", "## Findings per domain", "", *per]
    if gains is not None:
        lines += ["", "## Main gains: over seeds and over bases", "", *gains_lines(gains)]
    for e in entries:
        lines += ["", f"## {e['id']}: {e['statement']}", "", f"{e['kind']}, **{e['status']}**", "",
                  f"Definition: {e['definition']}", "", "Measured:", "", *_measured_lines(e["measured"])]
    return "\n".join(lines) + "\n"


def write_claims(entries: list[dict], folder: Path, provenance: dict, gains: dict | None = None) -> list[Path]:
    """``claims.json`` (provenance + entries, and the main gains when given) and ``claims.md`` in
    ``folder``; returns both paths."""
    json_path, md_path = folder / "claims.json", folder / "claims.md"
    doc = {"provenance": provenance, "claims": entries, **({"gains": gains} if gains is not None else {})}
    write_text(json_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    write_text(md_path, claims_markdown(entries, provenance, gains))
    return [json_path, md_path]
