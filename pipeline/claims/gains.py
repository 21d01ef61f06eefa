"""The main gains with two intervals: sam at γ = 1 % minus the pretrained model, LoRA (at the same γ)
and full tuning (tuning_copy), per domain.

- Over seeds (``base.estimate``): the adaptation seeds on the one base the run pretrained (with one
  seed, the paired bootstrap over test images, or the point estimate), as everywhere in the claims.
- Over seeds and bases, where the run has the ``bases`` study (``ablations/bases.csv``: sam's gain
  over each of several other bases, pretrained with other seeds): the main base's mean over seeds
  with an interval widened by the base-to-base spread, a one-way random-effects interval
  (``pipeline.stats.random_effects_ci``). The study adapts sam alone, so only the gain over the
  pretrained model gets it; sam − LoRA and sam − full tuning stay over seeds. Its main-base rows
  must be the table's own sam and pretrained values at that γ, or it is not combined (and the reason
  recorded).

``main_gains`` gives claims.json's ``gains`` object; ``render`` writes it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..stats import random_effects_ci
from .base import (PerImage, estimate, gamma_key, one_percent_gamma, only_seed, paired_seeds, per_seed,
                   stacked_images, values)

GAIN_BASELINES = ("pretrained", "lora", "tuning_copy")  # sam − each
OVER_BASES = "pretrained"                             # the one the bases study measures
BASES_COLUMNS = ("base", "pretrain_epochs", "base_test_psnr", "adapt_seed", "domain", "pretrained_psnr",
                 "sam_psnr", "gain")
MAIN_BASE = "main"
RANDOM_EFFECTS = ("one-way random-effects interval, bases random, Student-t on the smaller of bases − 1 and "
                  "seeds − 1 degrees of freedom")
ATOL_DB = 1e-4  # evaluation.csv holds 6 decimals


def _sparsity(df: pd.DataFrame, method: str, gamma: float) -> float | None:
    return gamma if df.loc[df["method"] == method, "sparsity"].notna().any() else None


def _other_bases(bases: pd.DataFrame | None, df: pd.DataFrame, gamma: float) -> tuple[pd.DataFrame | None, dict]:
    """The other bases' rows (None when they cannot be combined) and claims.json's ``bases`` record."""
    if bases is None:
        return None, {"combined": False, "reason": "one base only: the run has no bases study (ablations/bases.csv)"}
    if missing := [c for c in BASES_COLUMNS if c not in bases.columns]:
        raise ValueError(f"bases: lacks columns {missing}; expected {list(BASES_COLUMNS)}")
    main, other = bases[bases["base"] == MAIN_BASE], bases[bases["base"] != MAIN_BASE]
    if other["base"].nunique() < 2:
        return None, {"combined": False, "reason": f"the bases study has {other['base'].nunique()} other base(s); "
                                                   "a spread needs two or more"}
    sam, pre = per_seed(df, "sam", sparsity=gamma), per_seed(df, "pretrained")
    for _, row in main.iterrows():
        seed, d = int(row["adapt_seed"]), str(row["domain"])
        if (seed not in sam.index or d not in sam.columns
                or not np.isclose(sam.loc[seed, d], row["sam_psnr"], atol=ATOL_DB)
                or not np.isclose(pre[d].iloc[0], row["pretrained_psnr"], atol=ATOL_DB)):
            return None, {"combined": False, "reason": f"the bases study's main-base row ({d}, seed {seed}) is not "
                                                       f"evaluation.csv's sam at γ = {gamma_key(gamma)} and "
                                                       "pretrained model: not combined"}
    first = other.drop_duplicates("base")
    return other, {"combined": True, "method": RANDOM_EFFECTS, "other_bases": int(len(first)),
                   "other_pretrain_epochs": sorted({int(e) for e in first["pretrain_epochs"]}),
                   "other_base_test_psnr_db": [round(float(v), 4) for v in first["base_test_psnr"]],
                   "main_pretrain_epochs": int(main["pretrain_epochs"].iloc[0]) if len(main) else None,
                   "main_base_test_psnr_db": round(float(main["base_test_psnr"].iloc[0]), 4) if len(main) else None}


def main_gains(df: pd.DataFrame, per_image: PerImage | None = None, bases: pd.DataFrame | None = None) -> dict:
    """claims.json's ``gains``: per baseline and domain, sam − baseline over seeds and, for the
    pretrained model when the bases study can be combined, over seeds and bases (else None)."""
    gamma, note = one_percent_gamma(df)
    sam_all = per_seed(df, "sam", sparsity=gamma)
    other, record = _other_bases(bases, df, gamma)
    vs = {}
    for b in GAIN_BASELINES:
        sparsity = _sparsity(df, b, gamma)
        if values(df, b, "domain_psnr", sparsity).empty:
            continue
        sam, base = paired_seeds(sam_all, per_seed(df, b, sparsity=sparsity))
        diff, seed = sam - base, only_seed(sam)
        vs[b] = {}
        for d in diff.columns:
            images = stacked_images(per_image, seed, ("sam", gamma), (b, sparsity), [d])
            row = {"seeds": estimate(diff[d], images).as_dict(), "bases": None}
            on = other[other["domain"] == d] if other is not None and b == OVER_BASES else None
            if on is not None and on["base"].nunique() >= 2:
                per_base = on.groupby("base", sort=False)["gain"].mean()
                iv = random_effects_ci(diff[d], per_base)
                over = f"{len(diff)} seed(s) on the main base, {len(per_base)} other bases"
                row["bases"] = {**iv.as_dict(), "over": over, "other_bases_mean": round(float(per_base.mean()), 4)}
            vs[b][str(d)] = row
    return {"sparsity": gamma_key(gamma), "sparsity_note": note, "bases": record, "vs": vs}
