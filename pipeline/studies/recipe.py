"""Study ``recipe``: sam's training recipe at ``ablate.sparsity``: the values' gradient (dense
straight-through vs the exact masked one) x the scores' optimizer (Adam, SGD) over
``ablate.recipe_score_lrs`` x freezing the mask for the last epoch (0 or 1), beside the random and Fisher
fixed masks; per row the validation and test PSNR, the mask's churn and whether the stored mask was the
one its values were last trained on. The recipe is chosen on validation PSNR only (seed 0: ``adapt.seed``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Annotated

import pandas as pd
from pydantic import AfterValidator, Field

from ..config import Block, LearningRate, ScoreLearningRate, parse, unique
from ..methods.sam import train_sam
from ..sam import install_sam, sam_state
from . import pretrained_psnrs

if TYPE_CHECKING:
    from ..config import Params
    from ..methods import Context

NAME, ORDER = "recipe", 5


class ScoreLrs(Block):
    """The score learning rates the ``recipe`` study tries, per score optimizer."""
    adam: Annotated[tuple[LearningRate, ...], AfterValidator(unique)] = Field(min_length=1)
    sgd: Annotated[tuple[ScoreLearningRate, ...], AfterValidator(unique)] = Field(min_length=1)


class Config(Block):
    recipe_score_lrs: ScoreLrs = Field(description="score learning rates of the recipe study, per optimizer")


RECIPE_KEYS = ("value_grad", "score_optimizer", "score_lr", "freeze_epochs")
FREEZE = (0, 1)  # epochs at the end trained on the frozen mask


def recipe_label(r: dict) -> str:
    """'dense adam 1 f0' for a score-mask recipe, the mask's name for a fixed mask."""
    if r["mask"] != "score":
        return r["mask"]
    return f"{r['value_grad']} {r['score_optimizer']} {r['score_lr']:g} f{r['freeze_epochs']}"


def recipes(params: Params) -> list[dict]:
    """Every recipe the study trains: value_grad x score optimizer x its lrs x freeze (epochs allowing),
    the params' own recipe included (first) even when its lr is not in the grid."""
    a = params.adapt
    lrs = params.ablate.recipe_score_lrs
    own = {"value_grad": a.value_grad, "score_optimizer": a.score_optimizer, "score_lr": a.score_lr,
           "freeze_epochs": a.freeze_epochs}
    grid = [own] + [{"value_grad": vg, "score_optimizer": opt, "score_lr": float(lr), "freeze_epochs": f}
                    for vg in ("dense", "masked") for opt in ("adam", "sgd") for lr in getattr(lrs, opt)
                    for f in FREEZE if f < a.epochs]
    out = []
    for r in grid:
        if r not in out:
            out.append(r)
    return out


def _with_recipe(ctx: Context, recipe: dict) -> Context:
    tree = ctx.params.model_dump(mode="json")
    tree["adapt"].update(recipe)
    return dataclasses.replace(ctx, params=parse(tree))


def recipe_row(ctx: Context, domain: str, sparsity: float, mask: str, recipe: dict) -> dict:
    """Validation and test PSNR of the stored (fp16) SAM of one recipe, its churn and stored-mask check;
    read from the ``adapt_sam`` cell when the main grid trained exactly this one (no sam search grid)."""
    p = ctx.params
    own = {k: getattr(p.adapt, k) for k in RECIPE_KEYS}
    row = {"domain": domain, "sparsity": sparsity, "mask": mask,
           **({k: recipe[k] for k in RECIPE_KEYS} if mask == "score" else
              {"value_grad": "", "score_optimizer": "", "score_lr": math.nan, "freeze_epochs": math.nan})}
    cell = ctx.paths.cell("sam", domain, sparsity).metrics
    if (mask == "score" and recipe == own and sparsity in p.adapt.sparsities and not p.search.get("sam")
            and cell.is_file()):
        done = json.loads(cell.read_text())
        d = done["details"]
        if "stored_mask_unseen_fraction" in d:
            return {**row, "val_psnr": d["val_psnr"], "domain_psnr": done["domain_psnr"],
                    "mask_moved": d["mask_moved_fraction"], "stored_mask_unseen": d["stored_mask_unseen_fraction"]}
    c = _with_recipe(ctx, recipe)
    label = recipe_label({**recipe, "mask": mask}).replace(" ", "-")
    trained = train_sam(c, domain, sparsity, allocation=p.adapt.allocation, mask=mask,
                        tag=f"recipe-{domain}-{sparsity:g}-{label}")
    model = install_sam(trained["model"], sam_state(trained["model"]))  # the fp16 values a file would hold
    return {**row, "val_psnr": c.psnr(c.self_link(model), c.split(f"{domain}_val")),
            "domain_psnr": c.psnr(c.self_link(model), c.split(f"{domain}_test")),
            "mask_moved": trained["mask_moved"], "stored_mask_unseen": trained["stored_mask_unseen"]}


def run(ctx: Context) -> tuple[pd.DataFrame, str, object]:
    a, p = ctx.params.ablate, ctx.params.adapt
    pretrained_test = pretrained_psnrs(ctx)
    pretrained_val = pretrained_psnrs(ctx, "val")
    own = {k: getattr(p, k) for k in RECIPE_KEYS}
    rows = [recipe_row(ctx, d, a.sparsity, "score", r) for d in a.domains for r in recipes(ctx.params)]
    rows += [recipe_row(ctx, d, a.sparsity, m, own) for d in a.domains for m in ("random", "fisher")]
    df = pd.DataFrame(rows)
    df.insert(0, "recipe", [recipe_label(r) for r in rows])
    df["stored_mask_used"] = df.stored_mask_unseen.map(lambda u: "unknown" if u is None or pd.isna(u)
                                                       else ("yes" if u == 0 else "no"))
    df["val_gain"] = df.val_psnr - df.domain.map(pretrained_val)
    df["gain_over_pretrained"] = df.domain_psnr - df.domain.map(pretrained_test)
    return df, recipe_finding(df, recipe_label({**own, "mask": "score"}), a.sparsity), figure(df, a.sparsity)


def recipe_finding(df: pd.DataFrame, default: str, sparsity: float) -> str:
    """The recipe chosen on validation PSNR (mean over domains; ties: the first row), and whether it
    and the params' own recipe beat the random and Fisher fixed masks, per domain, on val and on test."""
    score = df[df["mask"] == "score"]
    val = score.groupby("recipe", sort=False).val_psnr.mean()
    chosen = val.idxmax()
    domains = list(dict.fromkeys(df.domain))

    def get(recipe, d, col):
        return float(df[(df.recipe == recipe) & (df.domain == d)][col].iloc[0])

    def against(recipe):
        parts = []
        for d in domains:
            bits = []
            for split, col in (("val", "val_psnr"), ("test", "domain_psnr")):
                me = get(recipe, d, col)
                beats = [f for f in ("random", "fisher") if me > get(f, d, col)]
                bits.append(f"{split} {me:.2f} vs random {get('random', d, col):.2f} / fisher "
                            f"{get('fisher', d, col):.2f} (beats {' and '.join(beats) if beats else 'neither'})")
            row = df[(df.recipe == recipe) & (df.domain == d)].iloc[0]
            unseen = row.stored_mask_unseen
            parts.append(f"{d}: " + "; ".join(bits) + f"; churn {row.mask_moved:.0%}, stored mask "
                         + ("unknown" if unseen is None or pd.isna(unseen) else
                            "used with its values" if unseen == 0 else f"{unseen:.0%} never used with its values"))
        every = all(get(recipe, d, col) > max(get("random", d, col), get("fisher", d, col))
                    for d in domains for col in ("val_psnr", "domain_psnr"))
        return " | ".join(parts), every

    text, every = against(chosen)
    out = (f"At γ={sparsity:g} on {', '.join(domains)} ({len(val)} score-mask recipes, seed 0), chosen on "
           f"validation PSNR: {chosen} (value grad, score optimizer, score lr, frozen last epochs), mean val "
           f"{val[chosen]:.2f} dB. {text}. It {'beats' if every else 'does not beat'} both fixed masks on every "
           "domain on val and test.")
    if chosen != default:
        text, every = against(default)
        out += (f" The params' recipe {default} (val {val[default]:.2f} dB): {text}; it "
                f"{'beats' if every else 'does not beat'} both on every domain on val and test.")
    else:
        out += " It is the params' own recipe."
    return out


def figure(df: pd.DataFrame, sparsity: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    order = list(dict.fromkeys(df.recipe))
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.2 + 0.28 * len(order)), sharey=True)
    for ax, col, title in ((axes[0], "val_gain", "validation"), (axes[1], "gain_over_pretrained", "test")):
        sns.barplot(df, y="recipe", x=col, hue="domain", order=order, ax=ax, orient="h", seed=0)
        for fixed, style in (("random", ":"), ("fisher", "--")):
            ax.axvline(df[df.recipe == fixed][col].mean(), color="k", ls=style, lw=0.8, label=f"{fixed} (mean)")
        ax.set_xlabel(f"{title} PSNR gain over pretrained (dB)")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_ylabel("recipe: value grad, score optimizer, score lr, frozen epochs")
    if axes[1].get_legend() is not None:
        axes[1].get_legend().remove()
    fig.suptitle(f"Ablation: sam recipe (γ={sparsity:g}); chosen on validation", fontsize=10)
    return fig
