"""The report's figures, drawn from the same frames as the tables.

One colour per method in every figure (``method_colour``); each domain's panel has its own y-axis;
legends sit outside the data area. The same numbers draw the same PNG bytes (``seeded_numpy`` for the
one plot that jitters).
"""
from __future__ import annotations

import contextlib
import zlib
from typing import TYPE_CHECKING, Callable

import matplotlib

matplotlib.use("Agg")  # the report draws to files only

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import claims  # noqa: E402
from ..data import grid  # noqa: E402
from .frames import REFERENCE_METHOD, Frames, sam_rows, variant_rows  # noqa: E402
from .inputs import KEY, METHODS, Inputs, variant_label  # noqa: E402

if TYPE_CHECKING:
    from ..config import Params

GAIN_LABEL = f"gain over {REFERENCE_METHOD} (dB)"
CI_NOTE = "error bars: 95 % CI over seeds, none with one seed"
MARKERS = ("o", "s", "^", "D", "v", "P")  # a method's sparsities, smallest first


def method_colour(method: str) -> tuple[float, float, float]:
    """The colour of a method in every figure: tab10 in the fixed order of ``METHODS``; a method outside
    it gets a Dark2 colour chosen by a checksum of its name (the same in every figure and run)."""
    import seaborn as sns
    if method in METHODS:
        return tuple(sns.color_palette("tab10", len(METHODS))[METHODS.index(method)])
    extra = sns.color_palette("Dark2", 8)
    return tuple(extra[zlib.crc32(method.encode()) % len(extra)])


@contextlib.contextmanager
def seeded_numpy(seed: int = 0):
    """seaborn's stripplot jitters its points with numpy's global generator: seed it, so the same numbers
    draw the same PNG bytes, and give the global state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _gamma_axis(ax, gammas, log_y: bool = False) -> None:
    """Log γ axis (in %) with a tick at every evaluated γ."""
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xticks([100 * g for g in gammas], [f"{100 * g:g}%" for g in gammas])
    ax.minorticks_off()
    ax.set_xlabel("sparsity γ")


def _half(ci: pd.Series) -> np.ndarray | None:
    """Error bar lengths: the half-widths, 0 where there is none; None when there is none at all (one seed)."""
    half = ci.to_numpy(dtype=float)
    return None if np.isnan(half).all() else np.nan_to_num(half, nan=0.0)


def _methods(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame.index.get_level_values("method")))


def _domain_panels(plt, domains: list[str], width: float = 4.2, height: float = 3.2):
    """One panel per domain (two columns), each with its own y-axis; panels beyond the domains removed."""
    cols = min(2, len(domains))
    rows = -(-len(domains) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[len(domains):]:
        fig.delaxes(ax)
    return fig, list(axes.flat)[:len(domains)]


def _legend_outside(fig, ax) -> None:
    """The figure's legend (from one panel: every panel draws the same methods) right of the panels."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)


def _zero_line(ax) -> None:
    ax.axhline(0.0, ls=":", lw=1.2, color=method_colour(REFERENCE_METHOD), label=f"{REFERENCE_METHOD} (0 dB)")


def fig_psnr_vs_sparsity(frames: Frames, domains: list[str]):
    """Per domain: each method with sparsities, its gain over the pretrained model against γ (95 % CI
    over seeds), beside full tuning (tuning_copy) and the pretrained model (0 dB)."""
    import matplotlib.pyplot as plt
    gain, ci = frames.domain_gain.mean, frames.domain_gain.ci
    sparse = [m for m in _methods(gain) if variant_rows(gain, m).index.notna().all()]
    gammas = sam_rows(gain).index
    fig, axes = _domain_panels(plt, domains)
    for ax, d in zip(axes, domains):
        for method in sparse:
            y, err = variant_rows(gain, method)[d], variant_rows(ci, method)[d]
            ax.errorbar(100 * y.index.to_numpy(), y.to_numpy(), yerr=_half(err), marker="o", capsize=3,
                        color=method_colour(method), label=method)
        if "tuning_copy" in _methods(gain):
            ax.axhline(variant_rows(gain, "tuning_copy")[d].iloc[0], ls="--", color=method_colour("tuning_copy"),
                       label="tuning_copy (full tuning)")
        _zero_line(ax)
        _gamma_axis(ax, gammas)
        ax.set_title(f"domain {d}", fontsize=9)
        ax.set_ylabel(GAIN_LABEL)
    _legend_outside(fig, axes[0])
    fig.suptitle(f"Domain PSNR gain over the pretrained model vs sparsity ({CI_NOTE})", fontsize=10)
    fig.tight_layout()
    return fig


def fig_psnr_vs_bytes(frames: Frames, domains: list[str]):
    """Per domain: the gain in domain PSNR over the pretrained model (95 % CI over seeds) against the bytes
    an agent stores, every method: a line over γ for a method with sparsities, a point otherwise; a method
    that stores nothing (0 B: no point on a log axis) is a horizontal line."""
    import matplotlib.pyplot as plt
    gain, ci, nbytes = frames.domain_gain.mean, frames.domain_gain.ci, frames.memory_per_domain.mean
    fig, axes = _domain_panels(plt, domains)
    for ax, d in zip(axes, domains):
        for method in _methods(gain):
            colour = method_colour(method)
            y, err, x = variant_rows(gain, method)[d], variant_rows(ci, method)[d], variant_rows(nbytes, method)[d]
            if method == REFERENCE_METHOD:
                _zero_line(ax)
            elif (x <= 0).all():
                ax.axhline(y.mean(), ls="-.", lw=1, color=colour, label=f"{method} (0 B)")
            else:
                order = np.argsort(x.to_numpy())
                half = _half(err)
                ax.errorbar(x.to_numpy()[order], y.to_numpy()[order], yerr=None if half is None else half[order],
                            capsize=2, marker="o", ms=4, ls="-" if len(x) > 1 else "none", color=colour, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("bytes stored per agent (log)")
        ax.set_ylabel(GAIN_LABEL)
        ax.set_title(f"domain {d}", fontsize=9)
    _legend_outside(fig, axes[0])
    fig.suptitle(f"Domain PSNR gain vs stored bytes (a line over γ; {CI_NOTE})", fontsize=10)
    fig.tight_layout()
    return fig


def fig_misalignment(frames: Frames, tidy: pd.DataFrame, reference: float):
    import matplotlib.pyplot as plt
    import seaborn as sns
    keys = list(frames.misalignment.mean.index)
    labels = [variant_label(*k) for k in keys]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(labels) + 1.2))
    sns.barplot(x=frames.misalignment.mean["misalignment_mean_db"].to_numpy(), y=labels, order=labels, hue=labels,
                hue_order=labels, palette=[method_colour(k[0]) for k in keys], saturation=1, alpha=0.55, legend=False,
                ax=ax)
    with seeded_numpy():
        sns.stripplot(tidy[tidy["metric"] == "misalignment"], x="value", y="variant", order=labels, color="k", size=3,
                      ax=ax, label="one pair A→B, one seed")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=7, padding=3)
    ax.axvline(0, color="k", lw=0.8)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              frameon=False)
    ax.set_xlabel(f"misalignment loss (dB) vs pretrained Tx→Rx ({reference:.2f} dB); bars: mean over pairs, seeds")
    ax.set_ylabel("")
    ax.set_title("Misalignment after each method's alignment step (base test images)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_memory_vs_sparsity(frames: Frames):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    sam = sam_rows(frames.memory.mean).reset_index()
    pct = 100 * sam["sparsity"].to_numpy()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(pct, sam["memory_cost_pct_max"].to_numpy(), marker="o", color=method_colour("sam"),
            label="sam (max over domains)")
    ax.plot(pct, pct, ls="--", color="grey", label="y = γ")
    ax.axhline(claims.C2_LIMIT_PCT, ls=":", color="k", label="1 % (claim C2)")
    _gamma_axis(ax, sam["sparsity"], log_y=True)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
    ax.set_ylabel("memory cost (% of the pretrained model)")
    ax.set_title("Stored SAM size vs sparsity (indices included)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def fig_pair_matrix(frames: Frames):
    import matplotlib.pyplot as plt
    import seaborn as sns
    pair_psnr = frames.pair_psnr.mean
    groups = list(pair_psnr.groupby(level=KEY, observed=True, dropna=False, sort=False))
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    lo, hi = np.nanmin(pair_psnr.to_numpy()), np.nanmax(pair_psnr.to_numpy())
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols + 1, 2.7 * rows), squeeze=False, layout="constrained")
    for i, (ax, (key, matrix)) in enumerate(zip(axes.flat, groups)):
        sns.heatmap(matrix.droplevel(KEY), vmin=lo, vmax=hi, annot=True, fmt=".1f", cmap="viridis", cbar=False,
                    square=True, annot_kws={"fontsize": 7}, ax=ax)
        ax.set_title(variant_label(*key), fontsize=9)
        ax.set_xlabel("Rx (B)" if i + cols >= len(groups) else "")
        ax.set_ylabel("Tx (A)" if i % cols == 0 else "")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.colorbar(axes.flat[0].collections[0], ax=axes, shrink=0.6, label="pair PSNR (dB), base test images, "
                 "mean over seeds")
    fig.suptitle("A's Tx → B's Rx after each method's alignment step", fontsize=10)
    return fig


def fig_memory_network(frames: Frames):
    """Log-log: bytes per agent and for the whole network against the number of agents K (a method's colour;
    a marker per γ; dashed: stored per partner)."""
    import matplotlib.pyplot as plt
    mean = frames.memory_network.mean
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for key, rows in mean.groupby(level=KEY, observed=True, dropna=False, sort=False):
        method, sparsity = key
        agents = rows.index.get_level_values("agents").to_numpy()
        style = "--" if claims.scaling(method) == claims.PER_PARTNER else "-"
        gammas = sorted(set(mean.xs(method, level="method").index.get_level_values("sparsity").dropna()))
        marker = "." if pd.isna(sparsity) else MARKERS[gammas.index(sparsity) % len(MARKERS)]
        for ax, column in zip(axes, ("per_agent_bytes", "total_bytes")):
            ax.plot(agents, rows[column].to_numpy(), style, marker=marker, ms=4, color=method_colour(method),
                    label=variant_label(*key))
    for ax, what in zip(axes, ("per agent", "whole network")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("agents K")
        ax.set_ylabel(f"bytes stored, {what}")
        ax.set_title(f"Memory beyond the shared model, {what}", fontsize=9)
    _legend_outside(fig, axes[0])
    fig.suptitle("A network of K agents, from the measured bytes (equalizer: K − 1 equalizers per agent)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def fig_reconstructions(recon: np.ndarray, domains: list[str], sam_sparsity: float):
    import matplotlib.pyplot as plt
    names = ["original", "pretrained", variant_label("sam", sam_sparsity), "tuned"]
    n = recon.shape[2]
    fig, axes = plt.subplots(1, len(domains), figsize=(0.75 * n * len(domains) + 1.2, 3.6), squeeze=False)
    for ax, d, rows in zip(axes[0], domains, recon):
        ax.imshow(grid(list(rows)))
        ax.set_yticks([16 + 34 * i for i in range(len(names))], names if ax is axes[0, 0] else [], fontsize=8)
        ax.set_xticks([])
        ax.set_title(f"domain {d}", fontsize=9)
    fig.suptitle("Test images of each domain and their reconstructions (evaluation SNR)", fontsize=10)
    fig.tight_layout()
    return fig


def figures(inputs: Inputs, frames: Frames, params: Params) -> dict[str, Callable[[], object]]:
    """name (``figures/<name>.png``) -> a function drawing it, in the order they are written."""
    domains = list(params.domains.names)
    return {
        "psnr_vs_sparsity": lambda: fig_psnr_vs_sparsity(frames, domains),
        "psnr_vs_bytes": lambda: fig_psnr_vs_bytes(frames, domains),
        "misalignment": lambda: fig_misalignment(frames, inputs.tidy, inputs.summary["reference_psnr"]),
        "memory_vs_sparsity": lambda: fig_memory_vs_sparsity(frames),
        "memory_network": lambda: fig_memory_network(frames),
        "pair_matrix": lambda: fig_pair_matrix(frames),
        "reconstructions": lambda: fig_reconstructions(inputs.reconstructions, domains, max(params.adapt.sparsities)),
    }
