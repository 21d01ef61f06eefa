"""Study ``mask``: sam's score-based (straight-through) mask vs a random fixed mask vs a one-shot Fisher
mask, at ``ablate.sparsity``; per domain the score mask's difference to each fixed mask on test images
(paired bootstrap over images)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..stats import paired_bootstrap
from . import gain_bars, means_finding, pretrained_psnrs
from ._grid import rows

if TYPE_CHECKING:
    from ..methods import Context

NAME, ORDER = "mask", 2
MASKS = ("score", "random", "fisher")


def run(ctx: Context):
    a, p = ctx.params.ablate, ctx.params.adapt
    pretrained = pretrained_psnrs(ctx)
    df, per_image = rows(ctx, [(d, a.sparsity, p.allocation, m) for d in a.domains for m in MASKS])
    df["gain_over_pretrained"] = df.domain_psnr - df.domain.map(pretrained)
    finding = means_finding(df, NAME, a.sparsity, a.domains) + " " + differences(df, per_image)[1]
    return df, finding, figure(df, a.sparsity)


def differences(df: pd.DataFrame, per_image: dict) -> tuple[pd.DataFrame, str]:
    """Per domain: score minus random / Fisher test PSNR, a paired bootstrap over test images."""
    found, verdicts = [], []
    for r in df[df["mask"] == "score"].itertuples():
        for fixed in ("random", "fisher"):
            ci = paired_bootstrap(per_image[(r.domain, r.sparsity, r.allocation, "score")],
                                  per_image[(r.domain, r.sparsity, r.allocation, fixed)])
            says = "beats" if ci.lo > 0 else ("loses to" if ci.hi < 0 else "cannot be told from")
            found.append({"domain": r.domain, "versus": fixed, "difference_db": ci.mean, "ci95_lo": ci.lo,
                          "ci95_hi": ci.hi, "score_mask": says})
            verdicts.append(f"{r.domain} vs {fixed}: {ci.mean:+.2f} dB [{ci.lo:+.2f}, {ci.hi:+.2f}] ({says})")
    diffs = pd.DataFrame(found)
    every = bool(len(diffs)) and (diffs.score_mask == "beats").all()
    return diffs, ("Score mask minus fixed mask on test images (95 % paired bootstrap over images): "
                   + "; ".join(verdicts) + f". The score mask {'beats' if every else 'does not beat'} both "
                   "fixed masks on every domain.")


def figure(df, sparsity: float):
    return gain_bars(df, NAME, sparsity)
