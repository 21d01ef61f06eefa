"""The network view (stage ``network``): one agent per domain plus the base agent; the K x K Tx -> Rx PSNR
matrix on base test images for every method (SAMs hot-swapped in one process, the base model loaded
once), each method at its grid point chosen on validation data (seed 0)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pandas as pd

from .evaluation import all_variants, choices
from .methods import BASE_AGENT

if TYPE_CHECKING:
    from .methods import Context


def pair_table(ctx: Context) -> pd.DataFrame:
    """One row per method, sparsity and ordered pair of agents (the base agent and the diagonal included)."""
    ctx = dataclasses.replace(ctx, chosen=choices(ctx.params, ctx.paths))  # seed 0 at the chosen grid points
    agents = [BASE_AGENT, *ctx.params.domains.names]
    base_test = ctx.split("base_test")
    rows = []
    for v in all_variants(ctx):
        found = ctx.pair_psnrs(v, [(a, b) for a in agents for b in agents], base_test)
        rows += [{"method": v.method, "sparsity": v.sparsity, "tx": a, "rx": b, "pair_psnr": psnr}
                 for (a, b), psnr in found.items()]
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame, domains) -> tuple[pd.DataFrame, str]:
    """Adds each link's loss against the pretrained link to ``df``; the mean and max |loss| per method and
    sparsity, and the finding."""
    ref = df[(df.method == "pretrained")].pair_psnr.iloc[0]
    df["loss_vs_pretrained"] = ref - df.pair_psnr
    sam = df[df.method == "sam"]
    summary = df.groupby(["method", "sparsity"], dropna=False).loss_vs_pretrained.agg(
        mean_loss="mean", max_abs_loss=lambda s: s.abs().max()).reset_index()
    finding = (f"Under ZFDA (sam, every sparsity) all {len(sam)} Tx->Rx links among the base agent and "
               f"{len(domains)} adapted agents keep the pretrained PSNR {ref:.2f} dB exactly "
               f"(max |difference| {sam.loss_vs_pretrained.abs().max():.3g} dB); without alignment the "
               f"adapted agents lose {summary.set_index('method').loc['no_alignment', 'mean_loss']:.2f} dB "
               "on average.")
    return summary, finding


def figure(df: pd.DataFrame):
    """One Tx -> Rx heat map per method and sparsity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    ref = df[(df.method == "pretrained")].pair_psnr.iloc[0]
    labels = [f"{m}" + ("" if pd.isna(s) else f" γ={s:g}") for m, s in
              df[["method", "sparsity"]].drop_duplicates().itertuples(index=False)]
    fig, axes = plt.subplots(1, len(labels), figsize=(2.6 * len(labels), 2.8), squeeze=False)
    for ax, (key, grp), label in zip(axes[0], df.groupby(["method", "sparsity"], dropna=False, sort=False), labels):
        mat = grp.pivot(index="tx", columns="rx", values="pair_psnr").loc[grp.tx.unique(), grp.tx.unique()]
        sns.heatmap(mat, annot=True, fmt=".1f", cbar=False, ax=ax, vmin=df.pair_psnr.min(), vmax=ref + 0.5,
                    annot_kws={"fontsize": 6}, cmap="viridis")
        ax.set_title(label, fontsize=8)
    fig.suptitle("Network view: Tx -> Rx PSNR (dB) on base test images", fontsize=10)
    return fig
