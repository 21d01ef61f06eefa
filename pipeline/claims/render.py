"""The one place that turns outcomes into text: each claim's one-line summary and the measured part of
its definition, the ``claims.json`` entry, ``claims.md``, and the files."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..storage import write_text
from .base import PASS, Estimate, Outcome, Result, gamma_pct
from .findings import PAPER_HEADLINE_PCT
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
