"""Study ``budget``: the doubling test. The main seed pretrained for each of ``ablate.budget_epochs``
epochs (the recipe, one-cycle included, over each budget), base and domain test PSNR beside the main
base's. The bases are kept in the base store (``_adapted.stored_base``), where the strength study finds them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import pandas as pd
from pydantic import AfterValidator, Field

from ..config import Block, unique
from ..train import load_model
from . import pretrained_psnrs
from ._adapted import stored_base

if TYPE_CHECKING:
    from ..methods import Context

NAME, ORDER = "budget", 7


class Config(Block):
    budget_epochs: Annotated[tuple[Annotated[int, Field(ge=1)], ...], AfterValidator(unique)] = Field(
        min_length=1, description="budget study: the main seed pretrained for each of these epochs (the recipe over each)")


def run(ctx: Context) -> tuple[pd.DataFrame, str, object]:
    pretrained_main = pretrained_psnrs(ctx)
    params, a = ctx.params, ctx.params.ablate
    base_test = ctx.split("base_test")
    found = [{"pretrain_epochs": params.pretrain.epochs, "model": "the pipeline's base",
              "base_test_psnr": ctx.psnr(ctx.self_link(ctx.pretrained()), base_test),
              **{f"{d}_test_psnr": pretrained_main[d] for d in a.domains}}]
    for epochs in a.budget_epochs:  # from the base store: the strength study reuses them (or they its)
        model = load_model(params, stored_base(ctx, params.pretrain.seed, epochs, "budget")).to(ctx.device).eval()
        found.append({"pretrain_epochs": epochs, "model": f"seed {params.pretrain.seed}, {epochs} epochs",
                      "base_test_psnr": ctx.psnr(ctx.self_link(model), base_test),
                      **{f"{d}_test_psnr": ctx.psnr(ctx.self_link(model), ctx.split(f"{d}_test")) for d in a.domains}})
    df = pd.DataFrame(found).sort_values("pretrain_epochs", kind="stable").reset_index(drop=True)
    df["gain_over_previous"] = df.base_test_psnr.diff()
    return df, budget_finding(df, params.pretrain.epochs), figure(df)


def budget_finding(df: pd.DataFrame, main_epochs: int, converged_db: float = 0.3) -> str:
    """Base test PSNR by budget, and what the last doubling (or other step) up to the main budget adds."""
    steps = "; ".join(f"{int(r.pretrain_epochs)} epochs: {r.base_test_psnr:.2f} dB" for r in df.itertuples())
    out = f"Base test PSNR by pretraining budget (seed and recipe of the main base): {steps}."
    below = df[df.pretrain_epochs < main_epochs]
    if len(below):
        prev = below.iloc[-1]
        main = df[df.pretrain_epochs == main_epochs].iloc[0]
        gain = main.base_test_psnr - prev.base_test_psnr
        ratio = main_epochs / prev.pretrain_epochs
        out += (f" Going from {int(prev.pretrain_epochs)} to {main_epochs} epochs ({ratio:g}x) adds {gain:+.2f} dB"
                + (f": {'under' if gain < converged_db else 'not under'} the {converged_db:g} dB convergence bar"
                   if ratio == 2 else "") + ".")
    return out


def figure(df: pd.DataFrame):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(df.pretrain_epochs, df.base_test_psnr, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pretraining epochs (the recipe over each budget)")
    ax.set_ylabel("base test PSNR (dB)")
    ax.set_title("Pretraining budget: the doubling test", fontsize=10)
    ax.grid(alpha=0.3)
    return fig
