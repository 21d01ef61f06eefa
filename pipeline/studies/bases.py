"""Study ``bases``: the base-to-base spread. ``ablate.bases`` extra bases (pretrain.seed + 1 ..), each
pretrained ``ablate.base_epochs`` epochs with the pretrain recipe (a smaller budget than the main base's),
sam adapted on each at ``ablate.sparsity`` with the main grid's chosen point (seed 0); sam's gain over each
base against the adaptation seeds' spread on the main base (its cells)."""
from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import pandas as pd
from pydantic import Field

from ..config import Block
from ..evaluation import choices
from ..methods import Context
from ..methods.sam import train_sam
from ..pretraining import base_key, train_base
from ..sam import install_sam, sam_state
from ..selection import Trial, grid_points, trial_params
from ..stats import mean_ci
from ..train import load_model, save_model
from . import pretrained_psnrs

if TYPE_CHECKING:
    from ..config import Params

NAME, ORDER = "bases", 6


class Config(Block):
    bases: int = Field(ge=2, description="bases study: extra bases pretrained with pretrain.seed + 1 .. + bases")
    base_epochs: int = Field(ge=1, description="bases study: their pretraining epochs (the pretrain recipe otherwise)")


def check(params: Params) -> None:
    a = params.ablate
    if a.sparsity not in params.adapt.sparsities:
        raise ValueError(f"ablate.sparsity {a.sparsity:g} must be one of adapt.sparsities "
                         f"{list(params.adapt.sparsities)} for the bases study (it reads the main base's cells)")


@dataclasses.dataclass
class _OnBase(Context):
    """A context whose pretrained model is another base's file."""
    base: object = None

    def pretrained(self):
        return load_model(self.params, self.base).to(self.device).eval()


def run(ctx: Context) -> tuple[pd.DataFrame, str, object]:
    pretrained_main = pretrained_psnrs(ctx)
    params, a = ctx.params, ctx.params.ablate
    s = a.sparsity
    points = grid_points(params, "sam", ctx.paths)
    chosen = choices(params, ctx.paths)["sam"]
    point_of = {d: chosen.get((d, s), 0) for d in a.domains}  # the main grid's choice (point 0 off the grid)
    train_x = ctx.split("base_train")
    found = []
    for d in a.domains:  # the main base: every adaptation seed's cell at the chosen point
        for seed in range(params.adapt.seeds):
            cell = ctx.paths.cell("sam", d, s, Trial(seed, point_of[d]).tag).metrics
            psnr = json.loads(cell.read_text())["domain_psnr"]
            found.append({"base": "main", "pretrain_seed": params.pretrain.seed,
                          "pretrain_epochs": params.pretrain.epochs, "adapt_seed": seed, "domain": d,
                          "pretrained_psnr": pretrained_main[d], "sam_psnr": psnr})
    base_psnr = {"main": ctx.psnr(ctx.self_link(ctx.pretrained()), ctx.split("base_test"))}
    for b in range(1, a.bases + 1):
        seed = params.pretrain.seed + b
        key = base_key(params, ("base", seed, a.base_epochs), train_x)
        model, _ = train_base(params, train_x, seed=seed, epochs=a.base_epochs, device=ctx.device,
                              checkpoint=ctx.checkpoint(f"base-{b}"), key=key, desc=f"base {b}")
        path = ctx.checkpoints / f"base-{b}.safetensors"
        save_model(model.cpu(), path, {"profile": params.profile, "source": params.data.source})
        on = _OnBase(params, ctx.paths, ctx.device, checkpoints=ctx.checkpoints, base=path)
        base_psnr[f"base {b}"] = on.psnr(on.self_link(on.pretrained()), on.split("base_test"))
        for d in a.domains:
            c = dataclasses.replace(on, params=trial_params(params, points[point_of[d]], 0))
            trained = train_sam(c, d, s, allocation=params.adapt.allocation, tag=f"bases-{b}-{d}-{s:g}")
            served = install_sam(trained["model"], sam_state(trained["model"]))  # the fp16 values a file holds
            test = c.split(f"{d}_test")
            found.append({"base": f"base {b}", "pretrain_seed": seed, "pretrain_epochs": a.base_epochs,
                          "adapt_seed": 0, "domain": d, "pretrained_psnr": c.psnr(c.self_link(c.pretrained()), test),
                          "sam_psnr": c.psnr(c.self_link(served), test)})
    df = pd.DataFrame(found)
    df.insert(3, "base_test_psnr", df.base.map(base_psnr))
    df["gain"] = df.sam_psnr - df.pretrained_psnr
    return df, bases_finding(df, s), figure(df, s)


def bases_finding(df: pd.DataFrame, sparsity: float) -> str:
    """Per domain: sam's gain over its base, mean ± 95 % CI and SD across the extra bases (one
    adaptation seed each) beside the same across the adaptation seeds on the main base."""
    extra = df[df.base != "main"]
    main = df[df.base == "main"]
    parts = []
    for d in dict.fromkeys(df.domain):
        across_bases = extra[extra.domain == d].gain
        across_seeds = main[main.domain == d].gain
        parts.append(f"{d}: across bases {mean_ci(across_bases)} dB (SD {across_bases.std(ddof=1):.2f}), across "
                     f"seeds on the main base {mean_ci(across_seeds)} dB (SD "
                     + (f"{across_seeds.std(ddof=1):.2f})" if len(across_seeds) > 1 else "n/a, one seed)"))
    bases = extra.drop_duplicates("base")
    return (f"sam's domain PSNR gain over its own base at γ={sparsity:g}, {len(bases)} extra bases pretrained "
            f"{int(bases.pretrain_epochs.iloc[0])} epochs (base test PSNR "
            + ", ".join(f"{v:.2f}" for v in bases.base_test_psnr)
            + f" dB; the main base: {int(main.pretrain_epochs.iloc[0])} epochs, "
            f"{float(main.base_test_psnr.iloc[0]):.2f} dB): " + "; ".join(parts) + ".")


def figure(df: pd.DataFrame, sparsity: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    plot = df.assign(replicate=df.base.map(lambda b: "adaptation seeds, main base" if b == "main"
                                                     else "extra bases (smaller budget)"))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sns.pointplot(plot, x="domain", y="gain", hue="replicate", errorbar=("ci", 95), dodge=0.3,
                  linestyle="none", capsize=0.1, ax=ax, seed=0)  # a seeded bootstrap: the same PNG bytes
    from ..report.figures import seeded_numpy
    with seeded_numpy():  # stripplot jitters with numpy's global generator
        sns.stripplot(plot, x="domain", y="gain", hue="replicate", dodge=True, alpha=0.5, legend=False, ax=ax)
    ax.set_ylabel("sam gain over its base (dB)")
    ax.set_title(f"Base-to-base vs seed-to-seed spread (γ={sparsity:g})", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig
