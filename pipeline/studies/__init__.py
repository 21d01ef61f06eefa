"""Ablation studies, one file each, one shared shape (stage ``ablate --study NAME``, a DVC matrix over
``ablate.studies``; each writes a CSV + Markdown table, a figure and a finding stated with numbers).

A study module defines:

- ``NAME`` (str) and ``ORDER`` (int: its place in ``names()``, the order ``--ablations`` lists them);
- optionally ``Config``: a ``pipeline.config.Block`` (pydantic) of its own params, merged flat into the
  ``ablate`` block (``ablate.snr_db``, ``ablate.bases``): field names must not clash with another study's
  or the shared ones (``ablate.studies``, ``ablate.domains``, ``ablate.sparsity``);
- optionally ``check(params)``: a rule across blocks, raising ValueError (checked when the study is among
  ``ablate.studies``);
- ``run(ctx) -> (table, finding, figure)``: a ``pandas.DataFrame``, one paragraph of text and a
  matplotlib figure, computed on the domains of ``ablate.domains``; the stage writes them.

Adding a study = one new file here + its name in a profile's ``ablate.studies``. Modules whose name starts
with ``_`` are helpers, not studies.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from ..methods import Context


def registry() -> dict[str, object]:
    """Every study module in this package, by NAME, in ``ORDER`` (discovered: a new file is enough)."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if not (hasattr(module, "NAME") and hasattr(module, "ORDER") and hasattr(module, "run")):
            raise RuntimeError(f"pipeline/studies/{info.name}.py is no study: it needs NAME, ORDER and run()")
        found[module.NAME] = module
    return dict(sorted(found.items(), key=lambda kv: (kv[1].ORDER, kv[0])))


def names() -> tuple[str, ...]:
    """Every study's NAME, in ``ORDER``."""
    return tuple(registry())


# ------------------------------------------------------------------------------- shared by the studies
def pretrained_psnrs(ctx: Context, split: str = "test") -> dict[str, float]:
    """The pretrained model's own-link PSNR on ``{domain}_{split}`` for every domain of ``ablate.domains``."""
    pre = ctx.pretrained()
    return {d: ctx.psnr(ctx.self_link(pre), ctx.split(f"{d}_{split}")) for d in ctx.params.ablate.domains}


def best(means: pd.Series) -> str:
    """'best: X (+d dB over the runner-up)', or the tie among the leaders at the table's precision."""
    top = means.max()
    leaders = [str(k) for k, v in means.items() if round(v, 2) == round(top, 2)]
    if len(leaders) > 1:
        return f"tie at {top:.2f} dB between {', '.join(leaders)}"
    winner = means.idxmax()
    return f"best: {winner} (+{top - means.drop(winner).max():.2f} dB over the runner-up)"


def line_plot(df: pd.DataFrame, x: str, y: str, hue: str, title: str, logx: bool = False, style: str | None = None):
    import matplotlib
    matplotlib.use("Agg")
    import seaborn as sns
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.lineplot(df, x=x, y=y, hue=hue, style=style, marker="o", ax=ax, seed=0)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def gain_bars(df: pd.DataFrame, key: str, sparsity: float):
    """Domain PSNR gain over the pretrained model per value of ``key`` (bars by domain)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sns.barplot(df, x=key, y="gain_over_pretrained", hue="domain", ax=ax, seed=0)
    ax.set_ylabel("domain PSNR gain over pretrained (dB)")
    ax.set_title(f"Ablation: {key} (γ={sparsity:g})", fontsize=10)
    return fig


def means_finding(df: pd.DataFrame, key: str, sparsity: float, domains) -> str:
    """Mean domain PSNR by ``key`` at ``sparsity`` and the best value (or the tie)."""
    means = df.groupby(key).domain_psnr.mean()
    return (f"At γ={sparsity:g} on {', '.join(domains)}, mean domain PSNR by {key}: "
            + "; ".join(f"{k}: {v:.2f} dB" for k, v in means.items()) + "; " + best(means) + ".")
