"""Study ``allocation``: sam's budget spread over the layers linear (d_in + d_out) vs uniform vs product
(d_in * d_out), at ``ablate.sparsity`` with the score mask."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..sam import layer_budgets
from . import gain_bars, means_finding, pretrained_psnrs
from ._grid import rows

if TYPE_CHECKING:
    from ..methods import Context

NAME, ORDER = "allocation", 1
ALLOCATIONS = ("linear", "uniform", "product")


def run(ctx: Context):
    a = ctx.params.ablate
    pretrained = pretrained_psnrs(ctx)
    df, _ = rows(ctx, [(d, a.sparsity, alloc, "score") for d in a.domains for alloc in ALLOCATIONS])
    df["gain_over_pretrained"] = df.domain_psnr - df.domain.map(pretrained)
    finding = means_finding(df, NAME, a.sparsity, a.domains)
    pre = ctx.pretrained()
    if layer_budgets(pre, a.sparsity, "uniform") == layer_budgets(pre, a.sparsity, "product"):
        finding += (" uniform and product give identical per-layer budgets for this model (every layer has "
                    "the same kernel size, so d_in·d_out is proportional to the layer size).")
    return df, finding, figure(df, a.sparsity)


def figure(df, sparsity: float):
    return gain_bars(df, NAME, sparsity)
