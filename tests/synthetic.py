"""A small tidy evaluation table with known numbers (what the evaluate stage writes), for the report and
claims tests."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from pipeline import claims
from pipeline.metrics import FIELDS, ordered_pairs
from pipeline.report.inputs import read_tidy

DOMAINS = ["VA", "VP", "VC"]
GAMMAS = [0.001, 0.01]
REFERENCE = 30.0
BASE_BYTES = 1_000_000
EQUALIZER_BYTES = 2_500  # one equalizer (one partner): 0.25 % of the model
TUNED_GAP = (0.5, 0.2, 0.1)  # tuning_copy's domain PSNR above sam's at 1 %, per domain (cycled)
BASELINES = ("pretrained", "tuning_copy", "tuning_retune", "no_alignment", "equalizer")
ZERO_FORGET = ("lora", "delta_topk")  # new methods with sparsities; bitfit and base_control have none
COLUMNS = FIELDS if "seed" in FIELDS else [*FIELDS, "seed"]  # evaluate's columns, seed included


def domain_psnr(method: str, sparsity: float | None, i: int) -> float:
    """Domain PSNR (dB) of the i-th domain; sam at 1 %: pretrained + 4 dB."""
    return {"pretrained": 20.0 + i, "sam": 20.0 + i + 400 * (sparsity or 0), "tuning_retune": 19.0 + i,
            "tuning_copy": 24.0 + i + TUNED_GAP[i % 3], "no_alignment": 24.0 + i + TUNED_GAP[i % 3],
            "equalizer": 24.0, "lora": 20.5 + i + 300 * (sparsity or 0), "delta_topk": 20.2 + i + 200 * (sparsity or 0),
            "bitfit": 21.0 + i, "base_control": 20.1 + i}[method]


PAIR = {"pretrained": 30.0, "sam": 30.0, "tuning_copy": 30.0, "tuning_retune": 29.0, "no_alignment": 20.0,
        "equalizer": 28.0, "lora": 30.0, "delta_topk": 30.0, "bitfit": 30.0, "base_control": 29.5}


def cross_psnr(method: str, i: int) -> float:
    """A's domain images (A the i-th domain) to B's Rx: below the pair PSNR on base images."""
    return PAIR[method] - 3.0 - i


def memory_bytes(method: str, sparsity: float | None, domains: int) -> int:
    """Honest memory: the equalizer stores its D - 1 equalizers, tuning_copy a full copy."""
    return {"sam": round(600_000 * (sparsity or 0)), "lora": round(800_000 * (sparsity or 0)),
            "delta_topk": round(600_000 * (sparsity or 0)), "bitfit": 4_000, "tuning_copy": BASE_BYTES,
            "equalizer": (domains - 1) * EQUALIZER_BYTES}.get(method, 0)


def tidy(domains=DOMAINS, gammas=GAMMAS, seeds=(0,), shift=None, new=False) -> pd.DataFrame:
    """The evaluate stage's table for the numbers above (misalignment = REFERENCE - pair PSNR), at every
    seed; ``shift(method, seed)`` is added to the domain PSNR; ``new``: also the new methods and the SSIM
    and cross-traffic metrics."""
    rows = []
    methods = [("pretrained", None), *[("sam", g) for g in gammas],
               *[(m, None) for m in ("tuning_copy", "tuning_retune", "no_alignment", "equalizer")]]
    if new:
        methods += [*[(m, g) for m in ZERO_FORGET for g in gammas], ("bitfit", None), ("base_control", None)]
    for (method, sparsity), seed in itertools.product(methods, seeds):
        def row(metric, value, unit, domain="", tx="", rx=""):
            rows.append({"method": method, "sparsity": sparsity, "seed": seed, "metric": metric, "domain": domain,
                         "tx": tx, "rx": rx, "value": value, "unit": unit})

        for i, d in enumerate(domains):
            psnr = domain_psnr(method, sparsity, i) + (shift(method, seed) if shift else 0.0)
            row("domain_psnr", psnr, "dB", d, d, d)
            if new:
                row("domain_ssim", psnr / 40, "", d, d, d)
                if method == "pretrained":  # the paired-shift control: 3 dB better before the transform
                    row("source_psnr", psnr + 3.0, "dB", d, d, d)
                    row("source_ssim", (psnr + 3.0) / 40, "", d, d, d)
        for a, b in ordered_pairs(list(domains)):
            row("pair_psnr", PAIR[method], "dB", "base", a, b)
            row("misalignment", REFERENCE - PAIR[method], "dB", "base", a, b)
            if new:
                row("pair_ssim", PAIR[method] / 40, "", "base", a, b)
                row("cross_psnr", cross_psnr(method, list(domains).index(a)), "dB", a, a, b)
                row("cross_ssim", cross_psnr(method, list(domains).index(a)) / 40, "", a, a, b)
        for d in domains:
            nbytes = memory_bytes(method, sparsity, len(domains))
            row("memory_bytes", nbytes, "B", d)
            row("memory_cost", 100 * nbytes / BASE_BYTES, "%", d)
    return pd.DataFrame(rows, columns=COLUMNS)


def shift_domain(df: pd.DataFrame, method: str, domain: str, by: float) -> pd.DataFrame:
    """A copy of a tidy table with ``method``'s domain PSNR on ``domain`` moved by ``by`` dB (every seed)."""
    out = df.copy()
    rows = (out["method"] == method) & (out["metric"] == "domain_psnr") & (out["domain"] == domain)
    out.loc[rows, "value"] += by
    return out


def bases_table(df: pd.DataFrame, other_gains: dict[str, list[float]], gamma: float = 0.01) -> pd.DataFrame:
    """The bases study's table for a tidy table: the main base's rows are its sam (at ``gamma``) and
    pretrained values per seed and domain; ``other_gains[d]``: sam's gain on each other base (one seed)."""
    def psnr(method, sparsity=None):
        rows = df[(df["method"] == method) & (df["metric"] == "domain_psnr")]
        rows = rows if sparsity is None else rows[np.isclose(rows["sparsity"], sparsity)]
        return {(int(r.seed), r.domain): float(r.value) for r in rows.itertuples()}

    sam, pre = psnr("sam", gamma), psnr("pretrained")
    rows = [{"base": "main", "pretrain_seed": 0, "pretrain_epochs": 100, "base_test_psnr": REFERENCE,
             "adapt_seed": seed, "domain": d, "pretrained_psnr": pre[(0, d)], "sam_psnr": v}
            for (seed, d), v in sam.items()]
    for d, gains in other_gains.items():
        for b, g in enumerate(gains, start=1):
            rows.append({"base": f"base {b}", "pretrain_seed": b, "pretrain_epochs": 10,
                         "base_test_psnr": 25.0 + b / 10, "adapt_seed": 0, "domain": d, "pretrained_psnr": 20.0,
                         "sam_psnr": 20.0 + g})
    out = pd.DataFrame(rows)
    out["gain"] = out["sam_psnr"] - out["pretrained_psnr"]
    return out


def half_width(x) -> float:
    """The Student-t 95 % half-width, from scipy (a check of the report's use of pipeline.stats)."""
    from scipy import stats as sps
    x = np.asarray(x, dtype=float)
    return float(sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def through_csv(df: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """Write and re-read like the stages do (empty sparsity/domain cells, typed columns)."""
    path = tmp_path / "evaluation.csv"
    df.to_csv(path, index=False)
    return read_tidy(path)


def entry(entries, cid):
    return next(e for e in entries if e["id"] == cid)


def sam_rows(frame, metric, sparsity):
    return (frame["method"] == "sam") & (frame["metric"] == metric) & np.isclose(frame["sparsity"], sparsity)


def write(tmp_path, entries) -> str:
    prov = {"profile": "quick", "data_source": "builtin", "git_commit": "abc", "mlflow_run_id": "r1"}
    claims.write_claims(entries, tmp_path, prov)
    return str(tmp_path / "claims.json")
