"""Stages ``network`` and ``ablate``: beyond the paper.

``network``: one agent per domain plus the base agent; the K x K Tx -> Rx PSNR matrix on base test
images for every method (SAMs hot-swapped in one process, the base model loaded once).

``ablate --study S`` (a DVC matrix over ``ablate.studies``), on the domains in ``ablate.domains``:
- ``allocation``: budget spread linear (d_in + d_out) vs uniform vs product (d_in * d_out);
- ``mask``: score-based (straight-through) vs a random fixed mask vs a one-shot Fisher mask;
- ``sparsity``: the sparsity range widened (``ablate.sparsities``);
- ``snr``: every method evaluated at each SNR of ``ablate.snr_db`` on each channel (AWGN, Rayleigh block
  fading), no retraining: the agents keep what they trained on (``model.channel``, ``model.snr_db``);
- ``bases``: the base-to-base spread: ``ablate.bases`` extra bases (pretrain.seed + 1 ..), each pretrained
  ``ablate.base_epochs`` epochs with the pretrain recipe (a smaller budget than the main base's), sam adapted
  on each at ``ablate.sparsity`` with the main grid's chosen point (seed 0); sam's gain over each base
  against the adaptation seeds' spread on the main base;
- ``budget``: the doubling test: the main seed pretrained for each of ``ablate.budget_epochs`` epochs (the
  recipe, one-cycle included, over each budget), base and domain test PSNR beside the main base's;
- ``recipe``: sam's training recipe at ``ablate.sparsity``: the values' gradient (dense straight-through
  vs the exact masked one) x the scores' optimizer (Adam, SGD) over ``ablate.recipe_score_lrs`` x
  freezing the mask for the last epoch (0 or 1), beside the random and Fisher fixed masks; per row the
  validation and test PSNR, the mask's churn and whether the stored mask was the one its values were
  last trained on. The recipe is chosen on validation PSNR only (seed 0: ``adapt.seed``).
Each writes a CSV + Markdown table, a figure and a finding stated with numbers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import argparse
import dataclasses
import json
import math
import shutil
import statistics

import pandas as pd
import torch

from ..config import ConfigError, parse
from ..methods import BASE_AGENT, Context, registry
from ..methods.sam import sam_path, train_sam
from ..metrics import misalignment, ordered_pairs
from ..model import CHANNELS
from ..paths import Paths
from ..sam import install_sam, layer_budgets, load_sam, sam_state
from ..selection import Trial, available, grid_points, trial_params
from ..stats import mean_ci, paired_bootstrap
from ..tracking import Tracker
from ..train import data_fingerprint, fingerprint, load_model, save_model, setup_runtime
from . import provenance, run, save_figure, write_text
from .evaluate import all_variants, choices
from .pretrain import train_base

if TYPE_CHECKING:
    from ..config import Params


def write_table(df: pd.DataFrame, name: str, params: Params, paths: Paths, run_id: str | None, finding: str) -> None:
    folder = paths.ablations
    write_text(folder / f"{name}.csv", df.to_csv(index=False))
    prov = provenance(params, paths, run_id)
    head = ", ".join(f"{k}: {v}" for k, v in prov.items())
    write_text(folder / f"{name}.md", f"<!-- {head} -->\n# {name}\n\n**Finding.** {finding}\n\n"
                                      f"{df.to_markdown(index=False, floatfmt='.3f')}\n")


def _plot(df: pd.DataFrame, x: str, y: str, hue: str, title: str, logx: bool = False, style: str | None = None):
    import matplotlib
    matplotlib.use("Agg")
    import seaborn as sns
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.lineplot(df, x=x, y=y, hue=hue, style=style, marker="o", ax=ax)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def _log_to_parent(tracker: Tracker, paths: Paths, table: str, figure) -> None:
    """A study's table and figure on the execution's parent run, beside the report's."""
    tracker.log_parent_artifact(figure, "figures")
    for ext in ("csv", "md"):
        tracker.log_parent_artifact(paths.ablations / f"{table}.{ext}", "ablations")


# -------------------------------------------------------------------------------------- network view
def network(ctx: Context) -> pd.DataFrame:
    ctx = dataclasses.replace(ctx, chosen=choices(ctx.params, ctx.paths))  # seed 0 at the chosen grid points
    agents = [BASE_AGENT, *ctx.params.domains.names]
    base_test = ctx.split("base_test")
    rows = []
    for v in all_variants(ctx):
        found = ctx.pair_psnrs(v, [(a, b) for a in agents for b in agents], base_test)
        rows += [{"method": v.method, "sparsity": v.sparsity, "tx": a, "rx": b, "pair_psnr": psnr}
                 for (a, b), psnr in found.items()]
    return pd.DataFrame(rows)


def network_main(params: Params, paths: Paths) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"))
    with Tracker(params, paths, "network") as tracker:
        df = network(ctx)
        ref = df[(df.method == "pretrained")].pair_psnr.iloc[0]
        df["loss_vs_pretrained"] = ref - df.pair_psnr
        sam = df[df.method == "sam"]
        summary = df.groupby(["method", "sparsity"], dropna=False).loss_vs_pretrained.agg(
            mean_loss="mean", max_abs_loss=lambda s: s.abs().max()).reset_index()
        finding = (f"Under ZFDA (sam, every sparsity) all {len(sam)} Tx->Rx links among the base agent and "
                   f"{len(params.domains.names)} adapted agents keep the pretrained PSNR {ref:.2f} dB exactly "
                   f"(max |difference| {sam.loss_vs_pretrained.abs().max():.3g} dB); without alignment the "
                   f"adapted agents lose {summary.set_index('method').loc['no_alignment', 'mean_loss']:.2f} dB "
                   "on average.")
        write_table(summary, "network", params, paths, tracker.run_id, finding)
        write_text(paths.ablations / "network_pairs.csv", df.to_csv(index=False))
        labels = [f"{m}" + ("" if pd.isna(s) else f" γ={s:g}") for m, s in
                  df[["method", "sparsity"]].drop_duplicates().itertuples(index=False)]
        fig, axes = plt.subplots(1, len(labels), figsize=(2.6 * len(labels), 2.8), squeeze=False)
        for ax, (key, grp), label in zip(axes[0], df.groupby(["method", "sparsity"], dropna=False, sort=False), labels):
            mat = grp.pivot(index="tx", columns="rx", values="pair_psnr").loc[grp.tx.unique(), grp.tx.unique()]
            sns.heatmap(mat, annot=True, fmt=".1f", cbar=False, ax=ax, vmin=df.pair_psnr.min(), vmax=ref + 0.5,
                        annot_kws={"fontsize": 6}, cmap="viridis")
            ax.set_title(label, fontsize=8)
        fig.suptitle("Network view: Tx -> Rx PSNR (dB) on base test images", fontsize=10)
        save_figure(fig, paths.figures / "network.png")
        tracker.log_artifact(paths.figures / "network.png", "figures")
        _log_to_parent(tracker, paths, "network", paths.figures / "network.png")
        print(f"network: {finding}")


# ------------------------------------------------------------------------------------------ studies
def _sam_at(ctx: Context, domain: str, sparsity: float, allocation: str, mask: str, h: int, point: dict):
    """The stored (fp16) SAM of seed 0 at sam's grid point ``h`` and its churn: the ``adapt_sam`` cell's
    file when the main grid trained exactly this one (same code, data, params), else trained here."""
    c = dataclasses.replace(ctx, params=trial_params(ctx.params, point, 0), trial=Trial(0, h), chosen={})
    p = c.params.adapt
    cell = c.cell("sam", domain, sparsity)
    if (allocation, mask) == (p.allocation, "score") and sparsity in p.sparsities and cell.metrics.is_file():
        done = json.loads(cell.metrics.read_text())
        served = install_sam(c.pretrained(), load_sam(sam_path(c, domain, sparsity), c.pretrained()))
        return c, served, done["details"]["mask_moved_fraction"]
    trained = train_sam(c, domain, sparsity, allocation=allocation, mask=mask,
                        tag=f"ablate-{domain}-{sparsity:g}-{allocation}-{mask}" + (f"-h{h}" if h else ""))
    return c, install_sam(trained["model"], sam_state(trained["model"])), trained["mask_moved"]


def _train_eval(ctx: Context, domain: str, sparsity: float, allocation: str, mask: str
                ) -> tuple[dict, torch.Tensor]:
    """The row of a SAM trained with these settings at sam's grid point chosen on validation PSNR
    (``search.sam``; every variant gets the same grid, as in the main comparison), and the chosen
    SAM's per-image test PSNR. Test numbers are measured for the chosen point only."""
    points = grid_points(ctx.params, "sam", ctx.paths)  # the main grid's, and its extension's for this cell
    mains = available(ctx.params, ctx.paths, "sam", registry()["sam"]).get((domain, sparsity))
    best = None
    tried = []
    for h in mains or range(len(grid_points(ctx.params, "sam"))):
        point = points[h]
        c, model, moved = _sam_at(ctx, domain, sparsity, allocation, mask, h, point)
        val = c.psnr(c.self_link(model), c.split(f"{domain}_val"))
        tried.append(f"{json.dumps(point, sort_keys=True) if point else '(as params)'}: {val:.3f}")
        if best is None or val > best[0]:
            best = (val, h, point, c, model, moved)
    val, h, point, c, model, moved = best
    test = c.quality(c.self_link(model), c.split(f"{domain}_test"), ssim=False)
    return ({"domain": domain, "sparsity": sparsity, "allocation": allocation, "mask": mask,
             "point": h, "val_psnr": val, "domain_psnr": test.mean_psnr, "mask_moved": moved,
             "validation": "; ".join(tried)}, test.psnr)


def _rows(ctx: Context, settings) -> tuple[pd.DataFrame, dict]:
    """The study's rows, one per (domain, sparsity, allocation, mask), and their per-image test PSNR."""
    rows, per_image = [], {}
    for d, s, alloc, m in settings:
        row, psnrs = _train_eval(ctx, d, s, alloc, m)
        rows.append(row)
        per_image[(d, s, alloc, m)] = psnrs
    return pd.DataFrame(rows), per_image


def _mask_differences(df: pd.DataFrame, per_image: dict) -> tuple[pd.DataFrame, str]:
    """Per domain: score minus random / Fisher test PSNR, a paired bootstrap over test images."""
    rows, verdicts = [], []
    for r in df[df["mask"] == "score"].itertuples():
        for fixed in ("random", "fisher"):
            ci = paired_bootstrap(per_image[(r.domain, r.sparsity, r.allocation, "score")],
                                  per_image[(r.domain, r.sparsity, r.allocation, fixed)])
            says = "beats" if ci.lo > 0 else ("loses to" if ci.hi < 0 else "cannot be told from")
            rows.append({"domain": r.domain, "versus": fixed, "difference_db": ci.mean, "ci95_lo": ci.lo,
                         "ci95_hi": ci.hi, "score_mask": says})
            verdicts.append(f"{r.domain} vs {fixed}: {ci.mean:+.2f} dB [{ci.lo:+.2f}, {ci.hi:+.2f}] ({says})")
    diffs = pd.DataFrame(rows)
    every = bool(len(diffs)) and (diffs.score_mask == "beats").all()
    return diffs, ("Score mask minus fixed mask on test images (95 % paired bootstrap over images): "
                   + "; ".join(verdicts) + f". The score mask {'beats' if every else 'does not beat'} both "
                   "fixed masks on every domain.")


def study(ctx: Context, name: str) -> tuple[pd.DataFrame, str, object]:
    a, p = ctx.params.ablate, ctx.params.adapt
    pre = ctx.pretrained()
    pretrained = {d: ctx.psnr(ctx.self_link(pre), ctx.split(f"{d}_test")) for d in a.domains}
    if name == "allocation":
        df, _ = _rows(ctx, [(d, a.sparsity, alloc, "score") for d in a.domains
                            for alloc in ("linear", "uniform", "product")])
        key = "allocation"
    elif name == "mask":
        df, per_image = _rows(ctx, [(d, a.sparsity, p.allocation, m) for d in a.domains
                                    for m in ("score", "random", "fisher")])
        key = "mask"
    elif name == "sparsity":
        df, _ = _rows(ctx, [(d, s, p.allocation, "score") for d in a.domains for s in a.sparsities])
        key = "sparsity"
    elif name == "recipe":
        return _recipe(ctx, pretrained)
    elif name == "bases":
        return _bases(ctx, pretrained)
    elif name == "budget":
        return _budget(ctx, pretrained)
    else:
        return _snr(ctx)
    df["gain_over_pretrained"] = df.domain_psnr - df.domain.map(pretrained)
    means = df.groupby(key).domain_psnr.mean()
    if name == "sparsity":
        finding = ("Mean domain PSNR over " + ", ".join(a.domains) + " by sparsity: "
                   + "; ".join(f"γ={s:g}: {v:.2f} dB" for s, v in means.items())
                   + f" (pretrained {statistics.fmean(pretrained.values()):.2f} dB).")
        fig = _plot(df, "sparsity", "domain_psnr", "domain", "Domain PSNR vs sparsity (widened range)", logx=True)
    else:
        finding = (f"At γ={a.sparsity:g} on {', '.join(a.domains)}, mean domain PSNR by {key}: "
                   + "; ".join(f"{k}: {v:.2f} dB" for k, v in means.items()) + "; " + _best(means) + ".")
        if name == "allocation" and layer_budgets(pre, a.sparsity, "uniform") == layer_budgets(pre, a.sparsity, "product"):
            finding += (" uniform and product give identical per-layer budgets for this model (every layer has "
                        "the same kernel size, so d_in·d_out is proportional to the layer size).")
        if name == "mask":
            finding += " " + _mask_differences(df, per_image)[1]
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns
        fig, ax = plt.subplots(figsize=(5, 3.4))
        sns.barplot(df, x=key, y="gain_over_pretrained", hue="domain", ax=ax)
        ax.set_ylabel("domain PSNR gain over pretrained (dB)")
        ax.set_title(f"Ablation: {key} (γ={a.sparsity:g})", fontsize=10)
    return df, finding, fig


def _best(means: pd.Series) -> str:
    """'best: X (+d dB over the runner-up)', or the tie among the leaders at the table's precision."""
    top = means.max()
    leaders = [str(k) for k, v in means.items() if round(v, 2) == round(top, 2)]
    if len(leaders) > 1:
        return f"tie at {top:.2f} dB between {', '.join(leaders)}"
    best = means.idxmax()
    return f"best: {best} (+{top - means.drop(best).max():.2f} dB over the runner-up)"


# ------------------------------------------------------------------------------------------ bases
def _base_key(params: Params, train_x: torch.Tensor, *what) -> str:
    """The checkpoint key of a base a study pretrains: what it is, its data and the pretrain recipe."""
    return fingerprint(*what, data_fingerprint(train_x),
                       params.model_dump(include={"data", "model", "train", "pretrain", "evaluate"}))


@dataclasses.dataclass
class _OnBase(Context):
    """A context whose pretrained model is another base's file."""
    base: object = None

    def pretrained(self):
        return load_model(self.params, self.base).to(self.device).eval()


def _bases(ctx: Context, pretrained_main: dict[str, float]) -> tuple[pd.DataFrame, str, object]:
    params, a = ctx.params, ctx.params.ablate
    s = a.sparsity
    points = grid_points(params, "sam", ctx.paths)
    chosen = choices(params, ctx.paths)["sam"]
    point_of = {d: chosen.get((d, s), 0) for d in a.domains}  # the main grid's choice (point 0 off the grid)
    train_x = ctx.split("base_train")
    rows = []
    for d in a.domains:  # the main base: every adaptation seed's cell at the chosen point
        for seed in range(params.adapt.seeds):
            cell = ctx.paths.cell("sam", d, s, Trial(seed, point_of[d]).tag).metrics
            psnr = json.loads(cell.read_text())["domain_psnr"]
            rows.append({"base": "main", "pretrain_seed": params.pretrain.seed, "pretrain_epochs": params.pretrain.epochs,
                         "adapt_seed": seed, "domain": d, "pretrained_psnr": pretrained_main[d], "sam_psnr": psnr})
    base_psnr = {"main": ctx.psnr(ctx.self_link(ctx.pretrained()), ctx.split("base_test"))}
    for b in range(1, a.bases + 1):
        seed = params.pretrain.seed + b
        key = _base_key(params, train_x, "base", seed, a.base_epochs)
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
            rows.append({"base": f"base {b}", "pretrain_seed": seed, "pretrain_epochs": a.base_epochs,
                         "adapt_seed": 0, "domain": d, "pretrained_psnr": c.psnr(c.self_link(c.pretrained()), test),
                         "sam_psnr": c.psnr(c.self_link(served), test)})
    df = pd.DataFrame(rows)
    df.insert(3, "base_test_psnr", df.base.map(base_psnr))
    df["gain"] = df.sam_psnr - df.pretrained_psnr
    return df, bases_finding(df, s), _bases_figure(df, s)


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


def _bases_figure(df: pd.DataFrame, sparsity: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    plot = df.assign(replicate=df.base.map(lambda b: "adaptation seeds, main base" if b == "main"
                                                     else "extra bases (smaller budget)"))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sns.pointplot(plot, x="domain", y="gain", hue="replicate", errorbar=("ci", 95), dodge=0.3,
                  linestyle="none", capsize=0.1, ax=ax)
    sns.stripplot(plot, x="domain", y="gain", hue="replicate", dodge=True, alpha=0.5, legend=False, ax=ax)
    ax.set_ylabel("sam gain over its base (dB)")
    ax.set_title(f"Base-to-base vs seed-to-seed spread (γ={sparsity:g})", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig


# ------------------------------------------------------------------------------------------ budget
def _budget(ctx: Context, pretrained_main: dict[str, float]) -> tuple[pd.DataFrame, str, object]:
    params, a = ctx.params, ctx.params.ablate
    train_x, base_test = ctx.split("base_train"), ctx.split("base_test")
    rows = [{"pretrain_epochs": params.pretrain.epochs, "model": "the pipeline's base",
             "base_test_psnr": ctx.psnr(ctx.self_link(ctx.pretrained()), base_test),
             **{f"{d}_test_psnr": pretrained_main[d] for d in a.domains}}]
    for epochs in a.budget_epochs:
        key = _base_key(params, train_x, "budget", params.pretrain.seed, epochs)
        model, _ = train_base(params, train_x, seed=params.pretrain.seed, epochs=epochs, device=ctx.device,
                              checkpoint=ctx.checkpoint(f"budget-{epochs}"), key=key, desc=f"budget {epochs}")
        model.eval()
        rows.append({"pretrain_epochs": epochs, "model": f"seed {params.pretrain.seed}, {epochs} epochs",
                     "base_test_psnr": ctx.psnr(ctx.self_link(model), base_test),
                     **{f"{d}_test_psnr": ctx.psnr(ctx.self_link(model), ctx.split(f"{d}_test")) for d in a.domains}})
    df = pd.DataFrame(rows).sort_values("pretrain_epochs", kind="stable").reset_index(drop=True)
    df["gain_over_previous"] = df.base_test_psnr.diff()
    return df, budget_finding(df, params.pretrain.epochs), _budget_figure(df)


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


def _budget_figure(df: pd.DataFrame):
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


# ------------------------------------------------------------------------------------------ recipe
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


def _recipe_row(ctx: Context, domain: str, sparsity: float, mask: str, recipe: dict) -> dict:
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


def _recipe(ctx: Context, pretrained_test: dict[str, float]) -> tuple[pd.DataFrame, str, object]:
    a, p = ctx.params.ablate, ctx.params.adapt
    pre = ctx.pretrained()
    pretrained_val = {d: ctx.psnr(ctx.self_link(pre), ctx.split(f"{d}_val")) for d in a.domains}
    own = {k: getattr(p, k) for k in RECIPE_KEYS}
    rows = [_recipe_row(ctx, d, a.sparsity, "score", r) for d in a.domains for r in recipes(ctx.params)]
    rows += [_recipe_row(ctx, d, a.sparsity, m, own) for d in a.domains for m in ("random", "fisher")]
    df = pd.DataFrame(rows)
    df.insert(0, "recipe", [recipe_label(r) for r in rows])
    df["stored_mask_used"] = df.stored_mask_unseen.map(lambda u: "unknown" if u is None or pd.isna(u)
                                                       else ("yes" if u == 0 else "no"))
    df["val_gain"] = df.val_psnr - df.domain.map(pretrained_val)
    df["gain_over_pretrained"] = df.domain_psnr - df.domain.map(pretrained_test)
    return df, recipe_finding(df, recipe_label({**own, "mask": "score"}), a.sparsity), _recipe_figure(df, a.sparsity)


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


def _recipe_figure(df: pd.DataFrame, sparsity: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    order = list(dict.fromkeys(df.recipe))
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.2 + 0.28 * len(order)), sharey=True)
    for ax, col, title in ((axes[0], "val_gain", "validation"), (axes[1], "gain_over_pretrained", "test")):
        sns.barplot(df, y="recipe", x=col, hue="domain", order=order, ax=ax, orient="h")
        for fixed, style in (("random", ":"), ("fisher", "--")):
            ax.axvline(df[df.recipe == fixed][col].mean(), color="k", ls=style, lw=0.8, label=f"{fixed} (mean)")
        ax.set_xlabel(f"{title} PSNR gain over pretrained (dB)")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_ylabel("recipe: value grad, score optimizer, score lr, frozen epochs")
    if axes[1].get_legend() is not None:
        axes[1].get_legend().remove()
    fig.suptitle(f"Ablation: sam recipe (γ={sparsity:g}); chosen on validation", fontsize=10)
    return fig


def _snr(ctx: Context) -> tuple[pd.DataFrame, str, object]:
    rows = []
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
            rows.append({"channel": channel, "snr_db": snr,
                         "method": v.method if v.sparsity is None else f"{v.method} γ={v.sparsity:g}",
                         "domain_psnr": local, "misalignment": mis})
    df = pd.DataFrame(rows)
    sam = df[df.method.str.startswith("sam")]
    lost = df[df.method == "no_alignment"]
    finding = (f"sam's misalignment stays {sam.misalignment.abs().max():.3g} dB at every SNR in "
               f"{list(ctx.params.ablate.snr_db)} on {' and '.join(CHANNELS)} (agents trained on "
               f"{ctx.params.model.channel} at {ctx.params.model.snr_db:g} dB); no_alignment loses "
               + "; ".join(f"{ch}: " + ", ".join(f"{r.misalignment:.2f} dB at {r.snr_db:g} dB"
                                                for r in lost[lost.channel == ch].itertuples()) for ch in CHANNELS)
               + ".")
    fig = _plot(df, "snr_db", "domain_psnr", "method", "Mean domain PSNR vs evaluation SNR (line style: channel)",
                style="channel")
    return df, finding, fig


def ablate_main(params: Params, paths: Paths, argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True)
    args = ap.parse_args(argv)
    if args.study not in params.ablate.studies:
        raise ConfigError(f"ablate: --study {args.study!r} not in ablate.studies {list(params.ablate.studies)}")
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"), checkpoints=paths.checkpoints / "ablate" / args.study)
    with Tracker(params, paths, "ablate", args.study) as tracker:
        df, finding, fig = study(ctx, args.study)
        write_table(df, args.study, params, paths, tracker.run_id, finding)
        path = paths.figures / f"ablation_{args.study}.png"
        save_figure(fig, path)
        tracker.log_artifact(path, "figures")
        _log_to_parent(tracker, paths, args.study, path)
        tracker.set_tags({"finding": finding[:5000]})
    shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    print(f"ablate {args.study}: {finding}")


if __name__ == "__main__":
    run(ablate_main)
