"""Stage ``report``: the paper's tables and figures, and the claims check, from the evaluate stage.

Reads ``reports/<run>/metrics/evaluation.csv`` (tidy: a row per measurement) and ``evaluate.json``,
``build/<run>/eval/reconstructions.npy`` and the sam cells' JSONs (how far each mask moved). Writes
under ``reports/<run>/``: ``tables/`` (CSV, Markdown, LaTeX), ``figures/`` (PNG), ``plots/`` (CSVs
for ``dvc plots``), ``claims.json`` and ``claims.md``. Tables and figures are drawn from the same
pivoted frames (``summarise``). Every input is read and checked before anything is written.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a stage draws to files only

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import claims  # noqa: E402
from ..config import Params  # noqa: E402
from ..data import DataError, grid  # noqa: E402
from ..metrics import FIELDS, ordered_pairs  # noqa: E402
from ..paths import Paths  # noqa: E402
from ..tracking import Tracker  # noqa: E402
from . import provenance, run, save_figure, write_text  # noqa: E402

# Methods in the order of the paper's comparison (sam expands to one row per sparsity).
METHODS = ("pretrained", "sam", "tuning_copy", "tuning_retune", "no_alignment", "equalizer")
DOMAIN_METRICS = ("domain_psnr", "memory_bytes", "memory_cost")  # one row per domain
PAIR_METRICS = ("pair_psnr", "misalignment")                     # one row per ordered pair A != B
RECON_ROWS = ("original", "pretrained", "sam", "tuned")          # evaluate.reconstructions' rows
KEY = ["method", "sparsity"]                                     # a method/variant: a table row
DB, PCT, GAMMA = ".2f", ".3f", "g"                               # how numbers are written


@dataclass
class Inputs:
    tidy: pd.DataFrame          # evaluation.csv, typed, in METHODS order; plus a variant label
    summary: dict               # evaluate.json
    reconstructions: np.ndarray  # uint8 (domains, 4, n, 32, 32, 3)
    masks: pd.DataFrame         # sam cells, tidy: domain, sparsity, metric (mask_moved_fraction), value


# ------------------------------------------------------------------------------------------ inputs
def variant_label(method: str, sparsity: float) -> str:
    return method if pd.isna(sparsity) else f"{method} γ={100 * sparsity:g}%"


def read_tidy(path: Path) -> pd.DataFrame:
    """evaluation.csv with typed columns; sparsity NaN and domain/tx/rx '' where they do not apply."""
    if not path.is_file():
        raise DataError(f"report: {path} not found; run the evaluate stage first (dvc repro evaluate)")
    df = pd.read_csv(path, dtype={c: str for c in ("method", "metric", "domain", "tx", "rx", "unit")},
                     keep_default_na=False, na_values={"sparsity": [""], "value": [""]})
    if missing := [c for c in FIELDS if c not in df.columns]:
        raise DataError(f"report: {path} lacks columns {missing}; expected {FIELDS}")
    try:
        df["sparsity"] = pd.to_numeric(df["sparsity"])
        df["value"] = pd.to_numeric(df["value"])
    except ValueError as err:
        raise DataError(f"report: {path}: a sparsity or value is not a number ({err})") from None
    if df["value"].isna().any():
        raise DataError(f"report: {path}: {int(df['value'].isna().sum())} rows have no value")
    df["method"] = pd.Categorical(df["method"], categories=[*METHODS, *sorted(set(df["method"]) - set(METHODS))],
                                  ordered=True)
    df = df.sort_values(KEY, na_position="first", kind="stable").reset_index(drop=True)
    df["variant"] = [variant_label(m, s) for m, s in zip(df["method"], df["sparsity"])]
    df["variant"] = pd.Categorical(df["variant"], categories=list(dict.fromkeys(df["variant"])), ordered=True)
    return df


def check_complete(df: pd.DataFrame, params: Params, source: Path) -> None:
    """Every method (sam at every γ of params, no other γ) and metric, for every domain and ordered pair."""
    domains = list(params.domains.names)
    if stale := sorted(set(claims.sam_sparsities(df)) - set(params.adapt.sparsities)):
        raise DataError(f"report: {source} has sam at sparsities {stale} that adapt.sparsities lacks; "
                        "re-run the evaluate stage")
    expected = {"domain": sorted(domains), "pair": sorted(ordered_pairs(domains))}
    for method in METHODS:
        for sparsity in (params.adapt.sparsities if method == "sam" else (None,)):
            name = variant_label(method, sparsity)
            for metric in (*DOMAIN_METRICS, *PAIR_METRICS):
                rows = claims.values(df, method, metric, sparsity)
                found = sorted(rows["domain"]) if metric in DOMAIN_METRICS else sorted(zip(rows["tx"], rows["rx"]))
                kind = "domain" if metric in DOMAIN_METRICS else "pair"
                if found != expected[kind]:
                    raise DataError(f"report: {source} lacks {metric} of {name} (found {len(found)} rows, expected "
                                    f"one per {kind} of domains {domains}); re-run the evaluate stage")


def read_masks(params: Params, paths: Paths) -> pd.DataFrame:
    """How far each sam mask moved from its initial top-k (SPEC.md asks to report it)."""
    rows = []
    for sparsity in params.adapt.sparsities:
        for domain in params.domains.names:
            path = paths.cell("sam", domain, sparsity).metrics
            try:
                details = json.loads(path.read_text())["details"]
                rows.append({"domain": domain, "sparsity": sparsity, "metric": "mask_moved_fraction",
                             "value": float(details["mask_moved_fraction"])})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise DataError(f"report: sam cell {path} unusable ({type(err).__name__}: {err}); "
                                "re-run adapt_sam") from None
    return pd.DataFrame(rows)


def read_inputs(params: Params, paths: Paths) -> Inputs:
    """Every input, checked; raises DataError (exit 2) before the stage writes anything."""
    source = paths.evaluation_csv
    tidy = read_tidy(source)
    check_complete(tidy, params, source)
    summary_path = paths.evaluate_json
    try:
        summary = json.loads(summary_path.read_text())
        float(summary["reference_psnr"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"report: {summary_path} unusable ({type(err).__name__}: {err}); re-run evaluate") from None
    try:
        recon = np.load(paths.reconstructions, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"report: {paths.reconstructions} unusable ({type(err).__name__}: {err}); "
                        "re-run evaluate") from None
    want = (len(params.domains.names), len(RECON_ROWS))
    if recon.dtype != np.uint8 or recon.ndim != 6 or recon.shape[:2] != want or recon.shape[3:] != (32, 32, 3):
        raise DataError(f"report: {paths.reconstructions} has {recon.dtype} {recon.shape}; expected uint8 "
                        f"({want[0]}, {want[1]}, n, 32, 32, 3); re-run evaluate")
    return Inputs(tidy, summary, recon, read_masks(params, paths))


# -------------------------------------------------------------------------------- pivoted frames
@dataclass
class Frames:
    """The pivoted frames every table and figure is drawn from (index: method, sparsity)."""
    main: pd.DataFrame           # mean domain PSNR, mean misalignment, mean memory cost
    domain_psnr: pd.DataFrame    # variant x domain (+ mean)
    misalignment: pd.DataFrame   # variant x (mean, max)
    memory: pd.DataFrame         # variant x (bytes, %) mean and max over domains
    pair_psnr: pd.DataFrame      # (variant, tx) x rx
    mask_movement: pd.DataFrame  # sam sparsity x domain (+ mean): fraction of kept entries not in the initial mask


def _metric(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[df["metric"] == metric]


def _agg(df: pd.DataFrame, metric: str, how) -> pd.DataFrame:
    """Per variant: the metric's values aggregated (``how``: what ``groupby.agg`` takes)."""
    return _metric(df, metric).groupby(KEY, observed=True, dropna=False, sort=False)["value"].agg(how)


def _pivot(df: pd.DataFrame, metric: str, rows: list[str], columns: str, order: list[str]) -> pd.DataFrame:
    """The metric's values with ``rows`` down and ``columns`` across (in ``order``), one value per cell."""
    cells = _metric(df, metric).groupby([*rows, columns], observed=True, dropna=False, sort=False)["value"].mean()
    return cells.unstack(columns)[order].rename_axis(columns=None)


def _with_mean(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(mean=frame.mean(axis=1))


def summarise(inputs: Inputs, domains: list[str]) -> Frames:
    df = inputs.tidy
    domain_psnr = _with_mean(_pivot(df, "domain_psnr", KEY, "domain", domains))
    misalignment = _agg(df, "misalignment", ["mean", "max"]).add_prefix("misalignment_").add_suffix("_db")
    memory = pd.concat([_agg(df, "memory_bytes", ["mean", "max"]).round().astype("int64").add_prefix("memory_bytes_"),
                        _agg(df, "memory_cost", ["mean", "max"]).add_prefix("memory_cost_pct_")], axis=1)
    main = pd.DataFrame({"domain_psnr_db": domain_psnr["mean"], "misalignment_db": misalignment["misalignment_mean_db"],
                         "memory_cost_pct": memory["memory_cost_pct_mean"]})
    pair_psnr = _pivot(df, "pair_psnr", [*KEY, "tx"], "rx", domains)
    mask_movement = _with_mean(_pivot(inputs.masks, "mask_moved_fraction", ["sparsity"], "domain", domains))
    return Frames(main, domain_psnr, misalignment, memory, pair_psnr, mask_movement)


def sam_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """sam's rows of a (method, sparsity) frame, indexed by sparsity."""
    return frame.xs("sam", level="method")


def reference_row(frame: pd.DataFrame, method: str) -> pd.Series:
    """The one row of a method without sparsity."""
    return frame.xs(method, level="method").iloc[0]


# ---------------------------------------------------------------------------------------- tables
def table_specs(frames: Frames) -> dict[str, tuple[pd.DataFrame, dict[str, str]]]:
    """name -> (frame, number format per column); the frames' index becomes leading columns."""
    def formats(frame: pd.DataFrame, default: str, **special: str) -> dict[str, str]:
        return {"sparsity_pct": GAMMA, **{str(c): special.get(str(c), default) for c in frame.columns}}

    memory_pct = {c: PCT for c in frames.memory.columns if "pct" in c}
    return {
        "main": (frames.main, formats(frames.main, DB, memory_cost_pct=PCT)),
        "domain_psnr": (frames.domain_psnr, formats(frames.domain_psnr, DB)),
        "misalignment": (frames.misalignment, formats(frames.misalignment, DB)),
        "memory": (frames.memory, formats(frames.memory, "d", **memory_pct)),
        "pair_psnr": (frames.pair_psnr, formats(frames.pair_psnr, DB)),
        "mask_movement": (frames.mask_movement, formats(frames.mask_movement, PCT)),
    }


def flat_table(frame: pd.DataFrame, fmt: dict[str, str]) -> pd.DataFrame:
    """Index as leading columns, γ in %, numbers rounded as written (2 decimals dB, 3 decimals %)."""
    flat = frame.reset_index()
    flat.columns = [str(c) for c in flat.columns]
    flat = flat.rename(columns={"sparsity": "sparsity_pct"})
    flat["sparsity_pct"] = (100 * flat["sparsity_pct"]).round(6)
    return flat.round({c: int(f[1:-1]) for c, f in fmt.items() if f.endswith("f") and c in flat.columns})


def render_table(flat: pd.DataFrame, fmt: dict[str, str], header: str) -> tuple[str, str, str]:
    """CSV, Markdown (header line first) and LaTeX (header as a comment) of one table."""
    markdown = flat.astype(object).where(flat.notna(), None).to_markdown(
        index=False, floatfmt=[fmt.get(c, "g") for c in flat.columns], missingval="")
    latex = (flat.style.hide(axis="index")
             .format({c: f"{{:{f}}}" for c, f in fmt.items() if c in flat.columns}, na_rep="", escape="latex")
             .format_index(escape="latex", axis=1).to_latex(hrules=True))
    return flat.to_csv(index=False), f"{header}\n\n{markdown}\n", f"% {header}\n{latex}"


def write_tables(frames: Frames, folder: Path, header: str) -> list[Path]:
    written = []
    for name, (frame, fmt) in table_specs(frames).items():
        for text, suffix in zip(render_table(flat_table(frame, fmt), fmt, header), (".csv", ".md", ".tex")):
            write_text(folder / f"{name}{suffix}", text)
            written.append(folder / f"{name}{suffix}")
    # The folder is a persistent DVC output (kept, not emptied, before the stage runs): a file this run
    # did not write, a table of older code for instance, must not pass as part of this run's result.
    for stale in sorted(set(folder.iterdir()) - set(written)):
        stale.unlink()
    return written


def plot_data(frames: Frames, domains: list[str]) -> dict[str, pd.DataFrame]:
    """CSVs for ``dvc plots``, one row per γ: sam domain PSNR per domain, sam memory cost (max)."""
    return {"psnr_vs_sparsity": sam_rows(frames.domain_psnr)[domains].reset_index(),
            "memory_vs_sparsity": sam_rows(frames.memory)[["memory_cost_pct_max"]].reset_index()}


# --------------------------------------------------------------------------------------- figures
def _gamma_axis(ax, gammas, log_y: bool = False) -> None:
    """Log γ axis (in %) with a tick at every evaluated γ."""
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xticks([100 * g for g in gammas], [f"{100 * g:g}%" for g in gammas])
    ax.minorticks_off()
    ax.set_xlabel("sparsity γ")


def fig_psnr_vs_sparsity(frames: Frames, domains: list[str]):
    import matplotlib.pyplot as plt
    import seaborn as sns
    sam = sam_rows(frames.domain_psnr)[domains]
    long = sam.rename_axis(columns="domain").stack().rename("domain_psnr").reset_index()
    long["sparsity_pct"] = 100 * long["sparsity"]
    references = {"tuned (tuning_copy)": ("tuning_copy", "--", "k"), "pretrained": ("pretrained", ":", "grey")}
    fig, axes = plt.subplots(1, len(domains), figsize=(3.2 * len(domains), 3.2), squeeze=False)
    for ax, d in zip(axes[0], domains):
        sns.lineplot(long[long["domain"] == d], x="sparsity_pct", y="domain_psnr", marker="o", ax=ax, label="sam")
        for label, (method, style, colour) in references.items():
            ax.axhline(reference_row(frames.domain_psnr, method)[d], ls=style, color=colour, label=label)
        _gamma_axis(ax, sam.index)
        ax.set_title(d)
        ax.set_ylabel("domain PSNR (dB)")
        if ax is axes[0, 0]:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.get_legend().remove()
    fig.suptitle("sam domain PSNR vs sparsity, against full tuning and the pretrained model", fontsize=10)
    fig.tight_layout()
    return fig


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


def fig_misalignment(frames: Frames, tidy: pd.DataFrame, reference: float):
    import matplotlib.pyplot as plt
    import seaborn as sns
    labels = [variant_label(*k) for k in frames.misalignment.index]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(labels) + 1.2))
    sns.barplot(x=frames.misalignment["misalignment_mean_db"].to_numpy(), y=labels, order=labels,
                color="lightsteelblue", label="mean over pairs", ax=ax)
    with seeded_numpy():
        sns.stripplot(_metric(tidy, "misalignment"), x="value", y="variant", order=labels, color="k", size=3,
                      ax=ax, label="one pair A→B")
    ax.bar_label(ax.containers[0], fmt="%.2f", fontsize=7, padding=3)
    ax.axvline(0, color="k", lw=0.8)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    ax.legend(handles.values(), handles.keys(), fontsize=7, loc="lower right")
    ax.set_xlabel(f"misalignment loss (dB) vs pretrained Tx→Rx ({reference:.2f} dB)")
    ax.set_ylabel("")
    ax.set_title("Misalignment after each method's alignment step (base test images)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_memory_vs_sparsity(frames: Frames):
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import FuncFormatter
    sam = sam_rows(frames.memory).reset_index()
    sam["sparsity_pct"] = 100 * sam["sparsity"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    sns.lineplot(sam, x="sparsity_pct", y="memory_cost_pct_max", marker="o", ax=ax, label="sam (max over domains)")
    ax.plot(sam["sparsity_pct"], sam["sparsity_pct"], ls="--", color="grey", label="y = γ")
    ax.axhline(claims.C2_LIMIT_PCT, ls=":", color="r", label="1 % (claim C2)")
    _gamma_axis(ax, sam["sparsity"], log_y=True)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
    ax.set_ylabel("memory cost (% of the pretrained model)")
    ax.set_title("Stored SAM size vs sparsity (indices included)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_pair_matrix(frames: Frames):
    import matplotlib.pyplot as plt
    import seaborn as sns
    groups = list(frames.pair_psnr.groupby(level=KEY, observed=True, dropna=False, sort=False))
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    lo, hi = np.nanmin(frames.pair_psnr.to_numpy()), np.nanmax(frames.pair_psnr.to_numpy())
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols + 1, 2.7 * rows), squeeze=False, layout="constrained")
    for i, (ax, (key, matrix)) in enumerate(zip(axes.flat, groups)):
        sns.heatmap(matrix.droplevel(KEY), vmin=lo, vmax=hi, annot=True, fmt=".1f", cmap="viridis", cbar=False,
                    square=True, annot_kws={"fontsize": 7}, ax=ax)
        ax.set_title(variant_label(*key), fontsize=9)
        ax.set_xlabel("Rx (B)" if i + cols >= len(groups) else "")
        ax.set_ylabel("Tx (A)" if i % cols == 0 else "")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.colorbar(axes.flat[0].collections[0], ax=axes, shrink=0.6, label="pair PSNR (dB), base test images")
    fig.suptitle("A's Tx → B's Rx after each method's alignment step", fontsize=10)
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


def write_figures(inputs: Inputs, frames: Frames, params: Params, folder: Path) -> list[Path]:
    domains = list(params.domains.names)
    figures = {
        "psnr_vs_sparsity": lambda: fig_psnr_vs_sparsity(frames, domains),
        "misalignment": lambda: fig_misalignment(frames, inputs.tidy, inputs.summary["reference_psnr"]),
        "memory_vs_sparsity": lambda: fig_memory_vs_sparsity(frames),
        "pair_matrix": lambda: fig_pair_matrix(frames),
        "reconstructions": lambda: fig_reconstructions(inputs.reconstructions, domains, max(params.adapt.sparsities)),
    }
    for name, draw in figures.items():
        save_figure(draw(), folder / f"{name}.png")
    return [folder / f"{name}.png" for name in figures]


# ------------------------------------------------------------------------------------------ stage
def main(params: Params, paths: Paths) -> None:
    inputs = read_inputs(params, paths)  # fails (exit 2) before anything is written
    frames = summarise(inputs, list(params.domains.names))
    entries = claims.check_all(inputs.tidy, inputs.summary)
    out = paths.reports
    with Tracker(params, paths, "report") as tracker:
        prov = provenance(params, paths, tracker.run_id)
        header = (claims.provenance_line(prov) + f" · source `{paths.evaluation_csv.relative_to(out).as_posix()}` · "
                  f"reference PSNR (pretrained Tx→Rx, base test) {inputs.summary['reference_psnr']:.2f} dB")
        written = write_tables(frames, paths.tables, header)
        written += write_figures(inputs, frames, params, paths.figures)
        for name, frame in plot_data(frames, list(params.domains.names)).items():
            write_text(paths.plots / f"{name}.csv", frame.to_csv(index=False))
            written.append(paths.plots / f"{name}.csv")
        written += claims.write_claims(entries, out, prov)
        for path in written:  # on the stage's run and on the execution's (parent) run, where a reader looks first
            folder = path.parent.relative_to(out).as_posix() if path.parent != out else None
            tracker.log_artifact(path, folder)
            tracker.log_parent_artifact(path, folder)
        tracker.log_metrics({f"claim_{e['id']}_pass": float(e["status"] == claims.PASS) for e in entries})
        tracker.set_tags({f"claim.{e['id']}": e["status"] for e in entries})
    for e in entries:
        print(f"report: {e['id']} {e['kind']} {e['status']}: {e['summary']}")
    failed = claims.failed_guarantees(entries)
    verdict = "all PASS" if not failed else "FAILED: " + ", ".join(failed)
    print(f"report: {len(written)} files in {out}; guarantees {verdict}")
    if tracker.runs_page:
        print(f"report: MLflow: `mlflow ui --host 127.0.0.1`, then {tracker.runs_page} (this run's tables and "
              "figures are on its parent run)")


if __name__ == "__main__":
    run(main)
