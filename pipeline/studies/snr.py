"""Study ``snr``: every method evaluated at each SNR of ``ablate.snr_db`` on each channel (AWGN, Rayleigh
block fading), no retraining: the agents keep what they trained on (``model.channel``, ``model.snr_db``);
each method at its grid point chosen on validation data (seed 0)."""
from __future__ import annotations

import statistics
from typing import Annotated

import pandas as pd
from pydantic import AfterValidator, Field

from ..config import Block, unique
from ..evaluation import all_variants, choices
from ..methods import Context
from ..metrics import misalignment, ordered_pairs
from ..model import CHANNELS
from . import line_plot

NAME, ORDER = "snr", 4


class Config(Block):
    snr_db: Annotated[tuple[Annotated[float, Field(ge=-30, le=60)], ...], AfterValidator(unique)] = Field(
        min_length=1)


def run(ctx: Context):
    found = []
    chosen = choices(ctx.params, ctx.paths)  # every method at its grid point chosen on validation data (seed 0)
    for channel, snr in ((ch, s) for ch in CHANNELS for s in ctx.params.ablate.snr_db):
        c = Context(ctx.params, ctx.paths, ctx.device, snr_db=snr, channel_type=channel, chosen=chosen)
        pre = c.pretrained()
        ref = c.psnr(c.link(pre, pre), c.split("base_test"))
        # Methods with a sparsity at the largest only (every sam variant is bitwise the base when switched off).
        top = max(c.params.adapt.sparsities)
        for v in (v for v in all_variants(c) if v.sparsity is None or v.sparsity == top):
            local = statistics.fmean(c.psnr(v.local(d), c.split(f"{d}_test")) for d in c.params.domains.names)
            pairs = c.pair_psnrs(v, ordered_pairs(list(c.params.domains.names)), c.split("base_test"))
            mis = statistics.fmean(misalignment(ref, psnr) for psnr in pairs.values())
            found.append({"channel": channel, "snr_db": snr,
                          "method": v.method if v.sparsity is None else f"{v.method} γ={v.sparsity:g}",
                          "domain_psnr": local, "misalignment": mis})
    df = pd.DataFrame(found)
    sam = df[df.method.str.startswith("sam")]
    lost = df[df.method == "no_alignment"]
    finding = (f"sam's misalignment stays {sam.misalignment.abs().max():.3g} dB at every SNR in "
               f"{list(ctx.params.ablate.snr_db)} on {' and '.join(CHANNELS)} (agents trained on "
               f"{ctx.params.model.channel} at {ctx.params.model.snr_db:g} dB); no_alignment loses "
               + "; ".join(f"{ch}: " + ", ".join(f"{r.misalignment:.2f} dB at {r.snr_db:g} dB"
                                                for r in lost[lost.channel == ch].itertuples()) for ch in CHANNELS)
               + ".")
    return df, finding, figure(df)


def figure(df):
    return line_plot(df, "snr_db", "domain_psnr", "method", "Mean domain PSNR vs evaluation SNR (line style: channel)",
                     style="channel")
