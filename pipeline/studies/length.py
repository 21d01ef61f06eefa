"""Study ``length``: the adaptation length. sam at ``ablate.sparsity`` and full tuning (its local quality,
tuning_copy's domain PSNR) adapted for each of ``ablate.length_epochs`` epochs at the main grid's chosen
points, every seed of ``adapt.seeds``, on ``ablate.domains``; at ``adapt.epochs`` (one of them) the main
run's cells are read, not retrained. Domain PSNR per method and length with 95 % Student-t intervals over
seeds, whether the ranking (sam vs tuning per domain) changes, and C3 (sam within 0.5 dB of tuning, mean
over domains) and C5 (sam improves on pretrained on every domain) at each length, measured as the claims
measure them over seeds (at ``ablate.sparsity`` for both).

Time in the full profile (2 cores of the AMD EPYC of reports/cifar100-full; a quick-profile sam cell of 5
epochs on 1000 images takes about 12 s, a tuning cell of 5 + 5 epochs about 18 s, reports/benchmarks.md;
full: 1000 test images for sam's per-epoch PSNR): length_epochs [10, 30], 10 read from the main cells;
30 epochs of sam (≈ 80 s) and of tuning (≈ 54 s) for 4 domains × 3 seeds ≈ 27 min, within the 60 min of one
``dvc repro ablate@length``. The paper profile (adapt.epochs 30) trains the 10-epoch runs instead (≈ 9 min
on the same CPU; it is meant for a GPU).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import pandas as pd
from pydantic import AfterValidator, Field

from ..claims.combine import intersection_union
from ..claims.findings import C3_TOLERANCE_DB
from ..config import Block, unique
from ..stats import mean_ci, verdict
from . import pretrained_psnrs
from ._adapted import METHODS, adapted_psnr, cell_psnr, chosen_points, trial_context

if TYPE_CHECKING:
    from ..config import Params
    from ..methods import Context

NAME, ORDER = "length", 10


class Config(Block):
    length_epochs: Annotated[tuple[Annotated[int, Field(ge=1)], ...], AfterValidator(unique)] = Field(
        min_length=2, description="length study: sam and tuning adapted for each of these epochs (adapt.epochs "
                                  "among them: the main cells)")


def check(params: Params) -> None:
    a, p = params.ablate, params.adapt
    if p.epochs not in a.length_epochs:
        raise ValueError(f"ablate.length_epochs {list(a.length_epochs)} must include adapt.epochs = {p.epochs} "
                         "(the length study reads the main run's cells there)")
    if short := [e for e in a.length_epochs if e <= p.freeze_epochs]:
        raise ValueError(f"ablate.length_epochs {short} must be above adapt.freeze_epochs = {p.freeze_epochs}")
    if a.sparsity not in p.sparsities:
        raise ValueError(f"ablate.sparsity {a.sparsity:g} must be one of adapt.sparsities {list(p.sparsities)} "
                         "for the length study (it reads the main cells)")
    if missing := [m for m in METHODS if m not in p.methods]:
        raise ValueError(f"the length study adapts sam and tuning: {missing} must be among adapt.methods")


def run(ctx: Context) -> tuple[pd.DataFrame, str, object]:
    params, a = ctx.params, ctx.params.ablate
    points, pretrained = chosen_points(ctx), pretrained_psnrs(ctx)
    found = []
    for epochs in sorted(a.length_epochs):
        for d in a.domains:
            for m in METHODS:
                h = points[(m, d)]
                for seed in range(params.adapt.seeds):
                    if epochs == params.adapt.epochs:
                        psnr, source = cell_psnr(ctx, m, d, seed, h), "main cell"
                    else:
                        c = trial_context(ctx, m, h, seed, epochs)
                        psnr, source = adapted_psnr(c, m, d, f"length-{epochs}-{m}-{d}-s{seed}"), "trained here"
                    found.append({"adapt_epochs": epochs, "domain": d, "method": m, "adapt_seed": seed,
                                  "point": h, "domain_psnr": psnr, "source": source})
    runs = pd.DataFrame(found)
    runs["gain_over_pretrained"] = runs.domain_psnr - runs.domain.map(pretrained)
    return summary(runs, pretrained), length_finding(runs, params.adapt.epochs, a.sparsity), figure(runs)


def summary(runs: pd.DataFrame, pretrained: dict[str, float]) -> pd.DataFrame:
    """One row per (length, method, domain): mean domain PSNR over seeds with its 95 % interval."""
    rows = []
    for (epochs, m, d), part in runs.groupby(["adapt_epochs", "method", "domain"], sort=False):
        ci = mean_ci(part.domain_psnr)
        rows.append({"adapt_epochs": epochs, "method": m, "domain": d, "seeds": ci.n, "domain_psnr": ci.mean,
                     "ci95_lo": ci.lo, "ci95_hi": ci.hi, "pretrained_psnr": pretrained[d],
                     "gain_over_pretrained": ci.mean - pretrained[d], "source": part.source.iloc[0]})
    return pd.DataFrame(rows)


def verdicts(runs: pd.DataFrame) -> dict[str, tuple[str, object]]:
    """C3 and C5 of one length's runs: (verdict, the interval it rests on) from the per-seed values."""
    wide = runs.pivot_table(index=["adapt_seed", "domain"], columns="method", values="domain_psnr")
    gap = (wide["tuning"] - wide["sam"]).groupby("adapt_seed").mean()       # per seed, mean over domains
    c3 = mean_ci(gap)
    sam = runs[runs.method == "sam"]
    c5 = {d: mean_ci(part.gain_over_pretrained) for d, part in sam.groupby("domain", sort=False)}
    return {"C3": (verdict(c3, C3_TOLERANCE_DB, "below"), c3),
            "C5": (intersection_union(verdict(i, 0.0, "above") for i in c5.values()), c5)}


def leaders(runs: pd.DataFrame) -> dict[str, str]:
    """Per domain, the method with the higher mean domain PSNR over seeds (or 'tie' at 0.01 dB)."""
    means = runs.groupby(["domain", "method"], sort=False).domain_psnr.mean().unstack()
    return {d: "tie" if round(r["sam"], 2) == round(r["tuning"], 2) else ("sam" if r["sam"] > r["tuning"]
                                                                          else "tuning") for d, r in means.iterrows()}


def length_finding(runs: pd.DataFrame, main_epochs: int, sparsity: float) -> str:
    lengths = sorted(runs.adapt_epochs.unique())
    seeds = runs.adapt_seed.nunique()
    parts, lead, found = [], {}, {}
    for e in lengths:
        part = runs[runs.adapt_epochs == e]
        found[e], lead[e] = verdicts(part), leaders(part)
        per_method = part.groupby(["method", "adapt_seed"]).domain_psnr.mean()  # mean over domains per seed
        (c3, gap), (c5, deltas) = found[e]["C3"], found[e]["C5"]
        parts.append(f"{e} epochs{' (the main cells)' if e == main_epochs else ''}: "
                     + ", ".join(f"{m} {mean_ci(per_method[m])} dB" for m in METHODS)
                     + f" (mean over domains); C3 gap {gap} dB: {c3}; C5 sam − pretrained "
                     + ", ".join(f"{d} {i.mean:+.2f}" for d, i in deltas.items()) + f": {c5}")
    out = (f"sam at γ={sparsity:g} and tuning at the main grid's chosen points, "
           + (f"{seeds} seeds (95 % Student-t intervals over seeds)" if seeds > 1 else "one seed (no interval)")
           + ", by adaptation epochs: "
           + "; ".join(parts) + ".")
    first, last = lengths[0], lengths[-1]
    changed = [d for d in lead[first] if any(lead[e][d] != lead[first][d] for e in lengths)]
    out += (" Ranking per domain (ahead: " + "; ".join(
        f"{d}: " + " → ".join(lead[e][d] for e in lengths) for d in lead[first]) + "): "
        + (f"changes on {', '.join(changed)}" if changed else "unchanged") + f" from {first} to {last} epochs.")
    for claim in ("C3", "C5"):
        seq = [found[e][claim][0] for e in lengths]
        out += (f" {claim}: " + " → ".join(seq) + (" (unchanged)." if len(set(seq)) == 1 else " (changes)."))
    return out


def figure(runs: pd.DataFrame):
    """Domain PSNR vs adaptation epochs per method, one panel per domain (own y-axis), 95 % Student-t
    intervals over seeds (none with one seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.figures import method_colour
    domains = list(dict.fromkeys(runs.domain))
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.4), squeeze=False)
    for ax, d in zip(axes[0], domains):
        for k, m in enumerate(METHODS):
            cis = [(e, mean_ci(part.domain_psnr)) for e, part in runs[(runs.domain == d) & (runs.method == m)]
                   .groupby("adapt_epochs")]
            xs = [e * (1 + 0.02 * (k - 0.5)) for e, _ in cis]
            half = [0.0 if ci.n < 2 else ci.half_width for _, ci in cis]
            ax.errorbar(xs, [ci.mean for _, ci in cis], yerr=half, marker="o", capsize=3,
                        color=method_colour("tuning_copy" if m == "tuning" else m),
                        label=m if m == "sam" else "tuning (tuning_copy)")
        ax.set_xscale("log")
        ax.set_xticks(sorted(runs.adapt_epochs.unique()), [str(e) for e in sorted(runs.adapt_epochs.unique())])
        ax.set_title(d, fontsize=10)
        ax.set_xlabel("adaptation epochs")
        ax.set_ylabel("domain PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Adaptation length: sam vs tuning (95 % CI over seeds)", fontsize=10)
    fig.tight_layout()
    return fig
