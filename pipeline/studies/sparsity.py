"""Study ``sparsity``: sam over a widened range of sparsities (``ablate.sparsities``), score mask and
``adapt.allocation``."""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field

from ..config import Block, unique
from . import line_plot, pretrained_psnrs
from ._grid import rows

if TYPE_CHECKING:
    from ..methods import Context

NAME, ORDER = "sparsity", 3


class Config(Block):
    sparsities: Annotated[tuple[Annotated[float, Field(gt=0, le=1)], ...], AfterValidator(unique)] = Field(
        min_length=3)


def run(ctx: Context):
    a, p = ctx.params.ablate, ctx.params.adapt
    pretrained = pretrained_psnrs(ctx)
    df, _ = rows(ctx, [(d, s, p.allocation, "score") for d in a.domains for s in a.sparsities])
    df["gain_over_pretrained"] = df.domain_psnr - df.domain.map(pretrained)
    means = df.groupby(NAME).domain_psnr.mean()
    finding = ("Mean domain PSNR over " + ", ".join(a.domains) + " by sparsity: "
               + "; ".join(f"γ={s:g}: {v:.2f} dB" for s, v in means.items())
               + f" (pretrained {statistics.fmean(pretrained.values()):.2f} dB).")
    return df, finding, figure(df)


def figure(df):
    return line_plot(df, "sparsity", "domain_psnr", "domain", "Domain PSNR vs sparsity (widened range)", logx=True)
