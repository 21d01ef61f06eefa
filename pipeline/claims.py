"""The paper's claims (SPEC.md, "Paper claims"), each checked from the evaluate stage's tidy table.

One function per claim: it takes the tidy DataFrame (columns of ``evaluation.csv``; ``sparsity`` a
float, NaN for methods without one; ``domain``/``tx``/``rx`` strings) and the evaluate stage's
summary (``evaluate.json``), and returns an entry ``{id, kind, statement, definition, measured,
status, summary}`` (``summary``: the measured result in one line). *Guarantees* hold by
construction and fail CI when broken; *findings* are measured and reported PASS/FAIL, whatever
they say, and never fail CI.

``python -m pipeline.claims check reports/<run>/claims.json`` prints one line per claim and exits
1 when a guarantee failed, 2 when the file cannot be read, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .storage import write_text

GUARANTEE, FINDING = "guarantee", "finding"
PASS, FAIL = "PASS", "FAIL"

ONE_PERCENT = 0.01            # the paper's "γ = 1 %"
C2_LIMIT_PCT = 1.0            # C2: memory cost below 1 % ...
C3_TOLERANCE_DB = 0.5         # C3: sam within 0.5 dB of full tuning
ALIGNMENT_ROUTES = ("tuning_retune", "tuning_copy", "equalizer")  # C4
HEADLINE_BASELINES = ("pretrained", "tuning_retune")
PAPER_HEADLINE_PCT = 29.7


# --------------------------------------------------------------------------------- table access
def values(df: pd.DataFrame, method: str, metric: str, sparsity: float | None = None) -> pd.DataFrame:
    """Rows of one method (at one sparsity, for sam) and one metric."""
    rows = df[(df["method"] == method) & (df["metric"] == metric)]
    return rows if sparsity is None else rows[np.isclose(rows["sparsity"], sparsity)]


def per_domain(df: pd.DataFrame, method: str, metric: str = "domain_psnr", sparsity: float | None = None) -> pd.Series:
    """One value per domain (in the table's domain order)."""
    return values(df, method, metric, sparsity).set_index("domain")["value"]


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


def _by_domain(series: pd.Series) -> dict:
    return {str(d): float(v) for d, v in series.items()}


def _signed(series: pd.Series, unit: str = "dB") -> str:
    return ", ".join(f"{d} {v:+.2f}" for d, v in series.items()) + f" {unit}"


def _entry(cid: str, kind: str, statement: str, definition: str, measured: dict, passed: bool,
           summary: str) -> dict:
    return {"id": cid, "kind": kind, "statement": statement, "definition": definition, "measured": measured,
            "status": PASS if passed else FAIL, "summary": summary}


# ---------------------------------------------------------------------------------------- claims
def c1_zero_misalignment(df: pd.DataFrame, evaluate_json: dict) -> dict:
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
        "For every evaluated γ: max over ordered agent pairs (A ≠ B) of |misalignment|, misalignment = "
        "PSNR(pretrained Tx → pretrained Rx) − PSNR(A's Tx → B's Rx) on base test images, both SAMs "
        "switched off. PASS iff it is 0.0 exactly at every γ (CSV values and, where evaluate.json has it, "
        "the unrounded maximum).",
        measured, passed, line)


def c2_memory_below_one_percent(df: pd.DataFrame, evaluate_json: dict) -> dict:
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
        "For every evaluated γ ≤ 1 %: max over domains of memory cost = 100 × (bytes of the stored SAM "
        "file, indices, values and header included) / (fp32 bytes of the pretrained model). PASS iff "
        "every such maximum is < 1 %.",
        measured, passed, line)


def c3_close_to_tuning(df: pd.DataFrame, evaluate_json: dict) -> dict:
    gamma, note = one_percent_gamma(df)
    sam, tuned = per_domain(df, "sam", sparsity=gamma), per_domain(df, "tuning_copy")
    gap = (tuned - sam).loc[sam.index]
    passed = bool(gap.mean() <= C3_TOLERANCE_DB)
    return _entry(
        "C3", FINDING, "sam domain PSNR within 0.5 dB of full tuning at γ = 1 %",
        "gap = domain PSNR of the fully tuned agent (tuning_copy: its local quality) − domain PSNR of "
        f"sam at γ = 1 %, per domain; PASS iff the mean gap over domains ≤ {C3_TOLERANCE_DB} dB "
        "(a negative gap: sam is better). " + note + ".",
        {"sparsity": gamma_key(gamma), "sparsity_note": note, "sam_domain_psnr_db": _by_domain(sam),
         "tuning_domain_psnr_db": _by_domain(tuned), "gap_db": _by_domain(gap), "mean_gap_db": float(gap.mean())},
        passed, f"mean gap (tuned − sam at {gamma_pct(gamma)}) {gap.mean():+.2f} dB; per domain: {_signed(gap)}")


def c4_alignment_is_paid(df: pd.DataFrame, evaluate_json: dict) -> dict:
    routes, parts = {}, []
    for route in ALIGNMENT_ROUTES:
        mis = float(values(df, route, "misalignment")["value"].mean())
        mem = float(values(df, route, "memory_cost")["value"].min())
        routes[route] = {"mean_misalignment_db": mis, "memory_cost_pct": mem, "pays": mis > 0 or mem >= 100.0}
        parts.append(f"{route}: {mis:.2f} dB, {mem:.1f} %")
    forgetting = (per_domain(df, "tuning_copy") - per_domain(df, "tuning_retune"))
    routes["tuning_retune"]["forgetting_db"] = _by_domain(forgetting)
    routes["tuning_retune"]["mean_forgetting_db"] = float(forgetting.mean())
    passed = all(r["pays"] for r in routes.values())
    return _entry(
        "C4", GUARANTEE, "tuning and equalizer pay for alignment: misalignment > 0 or memory ≥ 100 % (or both)",
        "For each alignment route (tuning_retune: re-tuned on base data; tuning_copy: keeps a second full "
        "copy; equalizer): mean misalignment over ordered pairs (dB) and memory cost (smallest over "
        "domains, % of the pretrained model). PASS iff every route has mean misalignment > 0 or memory "
        "≥ 100 %. Also reported: tuning_retune's forgetting = domain PSNR of tuning_copy (the tuned agent) "
        "− domain PSNR of tuning_retune, per domain.",
        routes, passed, "; ".join(parts) + f"; re-tuning forgets {forgetting.mean():.2f} dB of domain PSNR")


def c5_improves_on_pretrained(df: pd.DataFrame, evaluate_json: dict) -> dict:
    gamma = sam_sparsities(df)[-1]
    delta = per_domain(df, "sam", sparsity=gamma) - per_domain(df, "pretrained")
    return _entry(
        "C5", FINDING, "sam improves domain PSNR over the pretrained model on every domain",
        "delta = domain PSNR of sam at the largest evaluated γ − domain PSNR of the pretrained model, per "
        "domain; PASS iff every delta > 0.",
        {"sparsity": gamma_key(gamma), "delta_db": _by_domain(delta), "min_delta_db": float(delta.min())},
        bool((delta > 0).all()), f"sam at {gamma_pct(gamma)} − pretrained: {_signed(delta)}")


def headline_improvement(df: pd.DataFrame, evaluate_json: dict) -> dict:
    gamma, note = one_percent_gamma(df)
    sam = per_domain(df, "sam", sparsity=gamma)
    gains = pd.DataFrame({b: 100 * (sam - per_domain(df, b)) / per_domain(df, b) for b in HEADLINE_BASELINES})
    domain, baseline = gains.stack().idxmax()
    best = float(gains.loc[domain, baseline])
    return _entry(
        "H", FINDING, f"up to {PAPER_HEADLINE_PCT} % domain PSNR improvement over baselines (the paper's headline)",
        "max over domains d and baselines b ∈ {" + ", ".join(HEADLINE_BASELINES) + "} of "
        "100 × (PSNR_sam(γ = 1 %, d)"
        " − PSNR_b(d)) / PSNR_b(d), domain PSNR in dB; PASS iff ≥ the paper's "
        f"{PAPER_HEADLINE_PCT} %. The paper's own definition is unknown (SPEC.md); this is ours. {note}.",
        {"sparsity": gamma_key(gamma), "sparsity_note": note, "max_improvement_pct": best, "argmax_domain": domain,
         "argmax_baseline": baseline, "paper_pct": PAPER_HEADLINE_PCT,
         "improvement_pct": {b: _by_domain(gains[b]) for b in HEADLINE_BASELINES}},
        best >= PAPER_HEADLINE_PCT,
        f"up to {best:.1f} % ({domain}, vs {baseline}) at {gamma_pct(gamma)}; paper: {PAPER_HEADLINE_PCT} %")


CLAIMS = (c1_zero_misalignment, c2_memory_below_one_percent, c3_close_to_tuning, c4_alignment_is_paid,
          c5_improves_on_pretrained, headline_improvement)


def check_all(df: pd.DataFrame, evaluate_json: dict) -> list[dict]:
    """Every claim's entry, in the paper's order."""
    return [claim(df, evaluate_json) for claim in CLAIMS]


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
        if not (isinstance(e, dict) and e.get("kind") in (GUARANTEE, FINDING) and e.get("status") in (PASS, FAIL)
                and isinstance(e.get("id"), str)):
            raise ClaimsFileError(f"{path}: a claim lacks id, kind (guarantee|finding) or status (PASS|FAIL): "
                                  f"{e!r:.120}")
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
