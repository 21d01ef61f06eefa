"""Stage ``report``: the paper's tables and figures, and the claims check, from the evaluate stage.

Reads ``reports/<run>/metrics/evaluation.csv`` (tidy: a row per measurement and seed; a file without
a ``seed`` column is seed 0) and ``evaluate.json``, ``build/<run>/eval/reconstructions.npy``, the sam
cells' JSONs (how far each mask moved) and, when evaluate wrote it, ``build/<run>/eval/
per_image.safetensors`` (per-image values: paired intervals for the claims with one seed). Writes
under ``reports/<run>/``: ``tables/`` (CSV, Markdown, LaTeX), ``figures/`` (PNG), ``plots/`` (CSVs
for ``dvc plots``), ``claims.json`` and ``claims.md``. Tables and figures are drawn from the same
frames (``summarise``): every cell that aggregates seeds is the mean over seeds of the per-seed value
with its 95 % Student-t half-width (``pipeline.stats.mean_ci``; one seed: the mean alone). A table
or column whose metric evaluation.csv lacks (an older evaluate: no SSIM, no cross traffic) is left
out, and a log line says so. Every input is read and checked before anything is written.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # a stage draws to files only

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import claims  # noqa: E402

from ..data import DataError, grid  # noqa: E402
from ..metrics import FIELDS, ordered_pairs  # noqa: E402
from ..model import bandwidth_note  # noqa: E402
from ..paths import Paths  # noqa: E402
from ..selection import Trial, choose  # noqa: E402
from ..stats import mean_ci  # noqa: E402
from ..tracking import Tracker  # noqa: E402
from . import provenance, run, save_figure, write_text  # noqa: E402

if TYPE_CHECKING:
    from ..config import Params

# Methods in the order of the paper's comparison (a method with sparsities expands to one row per γ):
# the reference, the zero-forget methods, the baselines, the control.
METHODS = ("pretrained", "sam", "lora", "delta_topk", "bitfit", "tuning_copy", "tuning_retune", "no_alignment",
           "equalizer", "base_control")
REQUIRED_METHODS = ("pretrained", "sam", "tuning_copy", "tuning_retune", "no_alignment", "equalizer")  # the claims'
DOMAIN_METRICS = ("domain_psnr", "domain_ssim", "memory_bytes", "memory_cost")  # one row per domain
PAIR_METRICS = ("pair_psnr", "pair_ssim", "misalignment", "cross_psnr", "cross_ssim")  # one per ordered pair A != B
REQUIRED_METRICS = ("domain_psnr", "memory_bytes", "memory_cost", "pair_psnr", "misalignment")
RECON_ROWS = ("original", "pretrained", "sam", "tuned")          # evaluate.reconstructions' rows
KEY = ["method", "sparsity"]                                     # a method/variant: a table row
# The cross-traffic table: A's own domain images to B's Rx, beside base images A -> B (means over pairs).
CROSS_COLUMNS = {"cross_psnr": "cross_psnr_db", "cross_ssim": "cross_ssim", "pair_psnr": "pair_psnr_db",
                 "pair_ssim": "pair_ssim", "misalignment": "misalignment_db"}
DEFAULT_SEED = 0                                                 # of an evaluation.csv without seeds
CI = "_ci95"                                                     # suffix of a 95 % half-width column
DB, SSIM, PCT, GAMMA = ".2f", ".4f", ".3f", "g"                  # how numbers are written


@dataclass
class Inputs:
    tidy: pd.DataFrame          # evaluation.csv, typed, in METHODS order; plus a variant label
    summary: dict               # evaluate.json
    reconstructions: np.ndarray  # uint8 (domains, 4, n, 32, 32, 3)
    masks: pd.DataFrame         # sam cells, tidy: domain, sparsity, metric (mask_moved_fraction), value
    per_image: claims.PerImage | None = None  # evaluate's per-image values, when it wrote them
    validation: pd.DataFrame | None = None  # evaluate's validation.csv (the search grid), when it wrote one


# ------------------------------------------------------------------------------------------ inputs
def variant_label(method: str, sparsity: float) -> str:
    return method if pd.isna(sparsity) else f"{method} γ={100 * sparsity:g}%"


def read_tidy(path: Path) -> pd.DataFrame:
    """evaluation.csv with typed columns; sparsity NaN and domain/tx/rx '' where they do not apply; seed 0
    when the file has no seed column (an evaluate of one seed, before seeds existed)."""
    if not path.is_file():
        raise DataError(f"report: {path} not found; run the evaluate stage first (dvc repro evaluate)")
    df = pd.read_csv(path, dtype={c: str for c in ("method", "metric", "domain", "tx", "rx", "unit")},
                     keep_default_na=False, na_values={"sparsity": [""], "value": [""], "seed": [""]})
    if "seed" not in df.columns:
        df["seed"] = DEFAULT_SEED
    if missing := [c for c in (*FIELDS, "seed") if c not in df.columns]:
        raise DataError(f"report: {path} lacks columns {missing}; expected {FIELDS}")
    try:
        df["sparsity"] = pd.to_numeric(df["sparsity"])
        df["value"] = pd.to_numeric(df["value"])
        seeds = pd.to_numeric(df["seed"])
    except ValueError as err:
        raise DataError(f"report: {path}: a sparsity, seed or value is not a number ({err})") from None
    if df["value"].isna().any():
        raise DataError(f"report: {path}: {int(df['value'].isna().sum())} rows have no value")
    if seeds.isna().any() or (seeds != seeds.round()).any() or (seeds < 0).any():
        raise DataError(f"report: {path}: seeds must be integers ≥ 0, found {sorted(set(df['seed'].astype(str)))}")
    df["seed"] = seeds.astype("int64")
    df["method"] = pd.Categorical(df["method"], categories=[*METHODS, *sorted(set(df["method"]) - set(METHODS))],
                                  ordered=True)
    df = df.sort_values(KEY, na_position="first", kind="stable").reset_index(drop=True)
    df["variant"] = [variant_label(m, s) for m, s in zip(df["method"], df["sparsity"])]
    df["variant"] = pd.Categorical(df["variant"], categories=list(dict.fromkeys(df["variant"])), ordered=True)
    return df


def check_complete(df: pd.DataFrame, params: Params, source: Path) -> None:
    """The claims' methods (sam at every γ of params) have every required metric; every metric a variant
    has covers, at each of its seeds (the same for all its metrics), every domain or every ordered pair
    once; no γ outside params."""
    domains = list(params.domains.names)
    for method in sorted(set(df.loc[df["sparsity"].notna(), "method"])):
        gammas = sorted(set(df.loc[(df["method"] == method), "sparsity"].dropna()))
        if stale := [g for g in gammas if not np.isclose(g, params.adapt.sparsities).any()]:
            raise DataError(f"report: {source} has {method} at sparsities {stale} that adapt.sparsities lacks; "
                            "re-run the evaluate stage")
    expected = {**{m: sorted(domains) for m in DOMAIN_METRICS},
                **{m: sorted(ordered_pairs(domains)) for m in PAIR_METRICS}}

    def found(rows: pd.DataFrame, metric: str) -> list:
        return sorted(rows["domain"]) if metric in DOMAIN_METRICS else sorted(zip(rows["tx"], rows["rx"]))

    def kind(metric: str) -> str:
        return "domain" if metric in DOMAIN_METRICS else "ordered pair"

    for method in REQUIRED_METHODS:
        for sparsity in (params.adapt.sparsities if method == "sam" else (None,)):
            for metric in REQUIRED_METRICS:
                if claims.values(df, method, metric, sparsity).empty:
                    raise DataError(f"report: {source} lacks {metric} of {variant_label(method, sparsity)} (found 0 "
                                    f"rows, expected one per {kind(metric)} of domains {domains}); re-run the "
                                    "evaluate stage")
    known = df[df["metric"].isin(expected)]
    for (method, sparsity), rows in known.groupby(KEY, observed=True, dropna=False, sort=False):
        seeds = rows.groupby("metric")["seed"].agg(lambda s: tuple(sorted(set(s))))
        if seeds.nunique() > 1:  # an interval over fewer seeds than its neighbours would pass unnoticed
            usual = seeds.mode().iloc[0]
            odd = ", ".join(f"{m} at {list(v)}" for m, v in seeds.items() if v != usual)
            raise DataError(f"report: {source}: the metrics of {variant_label(method, sparsity)} are at different "
                            f"seeds: {odd}, the others at {list(usual)}; re-run the evaluate stage")
    for (method, sparsity, metric, seed), rows in known.groupby([*KEY, "metric", "seed"], observed=True,
                                                                dropna=False, sort=False):
        if (got := found(rows, metric)) != expected[metric]:
            raise DataError(f"report: {source} lacks {metric} of {variant_label(method, sparsity)} at seed {seed} "
                            f"(found {len(got)} rows, expected one per {kind(metric)} of domains {domains}); "
                            "re-run the evaluate stage")


def read_masks(params: Params, paths: Paths) -> pd.DataFrame:
    """How far each sam mask moved from its initial top-k (SPEC.md asks to report it), per seed, at the
    grid point chosen on validation data."""
    rows = []
    sam = SimpleNamespace(USES_SPARSITY=True)
    try:
        chosen = choose(params, paths, "sam", sam)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"report: sam cells unusable ({type(err).__name__}: {err}); re-run adapt_sam") from None
    for sparsity in params.adapt.sparsities:
        for domain, seed in ((d, s) for d in params.domains.names for s in range(params.adapt.seeds)):
            path = paths.cell("sam", domain, sparsity, Trial(seed, chosen[(domain, sparsity)]).tag).metrics
            try:
                details = json.loads(path.read_text())["details"]
                rows.append({"domain": domain, "sparsity": sparsity, "seed": seed, "metric": "mask_moved_fraction",
                             "value": float(details["mask_moved_fraction"])})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise DataError(f"report: sam cell {path} unusable ({type(err).__name__}: {err}); "
                                "re-run adapt_sam") from None
    return pd.DataFrame(rows)


def read_per_image(paths: Paths) -> claims.PerImage | None:
    """evaluate's per-image values, None when it did not write them (an older evaluate)."""
    path = paths.per_image
    if not path.is_file():
        print(f"report: no {path.name} in {path.parent}: one-seed claims get no paired interval")
        return None
    from ..metrics import read_per_image  # written by the evaluate that writes the file
    try:
        return claims.PerImage(read_per_image(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"report: {path} unusable ({type(err).__name__}: {err}); re-run evaluate") from None


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
    validation = (pd.read_csv(paths.validation_csv, dtype={"setting": str, "sparsity": str}, keep_default_na=False)
                  if paths.validation_csv.is_file() else None)
    return Inputs(tidy, summary, recon, read_masks(params, paths), read_per_image(paths), validation)


# ---------------------------------------------------------------------------- frames over seeds
@dataclass
class Cells:
    """A table's numbers: ``mean`` over seeds and ``ci``, the 95 % half-width (NaN with one seed), of the
    same shape; ``ci`` None for a table that aggregates no seeds."""
    mean: pd.DataFrame
    ci: pd.DataFrame | None = None


@dataclass
class Frames:
    """The frames every table and figure is drawn from (index: method, sparsity [, ...])."""
    main: Cells            # mean domain PSNR (SSIM), mean misalignment, mean memory cost, seeds
    domain_psnr: Cells     # variant x domain (+ mean)
    domain_ssim: Cells | None  # variant x domain (+ mean); None when evaluate measured no SSIM
    misalignment: Cells    # variant x (mean, max)
    memory: Cells          # variant x (bytes, %) mean and max over domains
    pair_psnr: Cells       # (variant, tx) x rx
    cross_traffic: Cells | None  # variant x cross / pair PSNR (SSIM), misalignment; None without cross_psnr
    memory_network: Cells  # (variant, agents) x bytes per agent, % per agent, total bytes
    mask_movement: Cells   # sam sparsity x domain (+ mean): fraction of kept entries not in the initial mask
    memory_per_domain: Cells  # variant x domain: stored bytes (the PSNR-vs-bytes figure)
    skipped: list[str] = field(default_factory=list)  # what was left out, and why (logged)
    controls: Cells | None = None  # the two controls x domain (+ mean); None without source_psnr
    validation: Cells | None = None  # the search grid: validation PSNR per point, the chosen one


def _metric(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[df["metric"] == metric]


def _per_seed(df: pd.DataFrame, metric: str, by: list[str], how: str = "mean") -> pd.Series:
    """The metric's values reduced (``how``) to one per ``by`` and seed."""
    return _metric(df, metric).groupby([*by, "seed"], observed=True, dropna=False, sort=False)["value"].agg(how)


def _over_seeds(per_seed: pd.Series) -> pd.DataFrame:
    """Per group of the index less its seed level: mean over seeds, 95 % half-width (NaN: one seed), n."""
    by = [n for n in per_seed.index.names if n != "seed"]
    grouped = per_seed.groupby(level=by, observed=True, dropna=False, sort=False)
    intervals = grouped.agg(mean_ci)
    return pd.DataFrame({"mean": intervals.map(lambda i: i.mean), "ci": intervals.map(lambda i: i.half_width),
                         "n": intervals.map(lambda i: i.n)})


def _cells(columns: dict[str, pd.Series]) -> Cells:
    """Columns name -> per-seed series (same index but seeds): the table of their means over seeds."""
    stats = {name: _over_seeds(series) for name, series in columns.items()}
    return Cells(pd.DataFrame({n: s["mean"] for n, s in stats.items()}),
                 pd.DataFrame({n: s["ci"] for n, s in stats.items()}))


def _wide(df: pd.DataFrame, metric: str, rows: list[str], columns: str, order: list[str],
          mean_column: bool = True) -> Cells:
    """The metric with ``rows`` down and ``columns`` across (in ``order``), each cell over seeds, plus the
    mean over ``columns`` (the per-seed mean's interval)."""
    cells = _over_seeds(_per_seed(df, metric, [*rows, columns]))
    mean = cells["mean"].unstack(columns)[order].rename_axis(columns=None)
    ci = cells["ci"].unstack(columns)[order].rename_axis(columns=None)
    if mean_column:
        overall = _over_seeds(_per_seed(df, metric, rows))
        mean["mean"], ci["mean"] = overall["mean"], overall["ci"]
    return Cells(mean, ci)


def _has(df: pd.DataFrame, metric: str) -> bool:
    return bool((df["metric"] == metric).any())


# The controls that separate adaptation from undertraining (README "Protocol"): (a) the paired shift, the
# pretrained model on the same test images before and after the domain's transform; (b) base_control,
# the pretrained model trained with the tuning budget on base images.
CONTROL_ROWS = {"pretrained, untransformed test images": ("pretrained", "source_psnr"),
                "pretrained": ("pretrained", "domain_psnr"),
                "base_control (tuning budget on base images)": ("base_control", "domain_psnr")}
SHIFT_ROW = "paired shift (untransformed − transformed)"


def controls(df: pd.DataFrame, domains: list[str]) -> Cells | None:
    """Domain PSNR of the controls, per domain, with the paired shift; None without source_psnr rows."""
    if not _has(df, "source_psnr"):
        return None
    parts = [df[(df["method"] == m) & (df["metric"] == metric)].assign(method=label, metric="psnr")
             for label, (m, metric) in CONTROL_ROWS.items()]
    rows = pd.concat([p for p in parts if not p.empty])
    rows["method"] = pd.Categorical(rows["method"], categories=list(CONTROL_ROWS), ordered=True)
    cells = _wide(rows, "psnr", KEY, "domain", domains)
    mean, ci = cells.mean.reset_index(), cells.ci.reset_index()
    labels = list(CONTROL_ROWS)
    shift = mean[mean.method == labels[0]].iloc[0].copy()
    for c in [*domains, "mean"]:
        shift[c] = float(shift[c]) - float(mean[mean.method == labels[1]].iloc[0][c])
    shift["method"] = SHIFT_ROW
    no_ci = {**{c: float("nan") for c in [*domains, "mean"]}, "method": SHIFT_ROW, "sparsity": shift["sparsity"]}
    mean = pd.concat([mean.astype({"method": object}), shift.to_frame().T], ignore_index=True)
    ci = pd.concat([ci.astype({"method": object}), pd.DataFrame([no_ci])], ignore_index=True)
    return Cells(mean.set_index(KEY).astype(float), ci.set_index(KEY).astype(float))


def validation_cells(validation: pd.DataFrame | None) -> Cells | None:
    """The search grid as evaluate chose from it (validation PSNR, mean over seeds; the chosen point)."""
    if validation is None or validation.empty:
        return None
    v = validation.assign(chosen=validation["chosen"].map(lambda c: "chosen" if str(c) == "True" else ""))
    v["sparsity"] = pd.to_numeric(v["sparsity"].replace("", float("nan")))
    return Cells(v.set_index(["method", "sparsity", "domain", "point"])[["setting", "val_psnr", "chosen"]])


def memory_network(df: pd.DataFrame, domains: int) -> Cells:
    """Per variant and K (``claims.NETWORK_AGENTS``): bytes and % of the model one agent stores, and the
    network's total, from the measured per-agent bytes (mean over domains, per seed)."""
    memory = df[df["metric"].isin(["memory_bytes", "memory_cost"])]
    units = memory.groupby([*KEY, "seed", "metric"], observed=True, dropna=False, sort=False)["value"].mean()
    rows = []
    for (method, sparsity, seed), unit in units.unstack("metric").iterrows():
        if method not in claims.NETWORK_SCALING:
            continue
        for k in claims.NETWORK_AGENTS:
            per_agent = claims.network_bytes(method, unit["memory_bytes"], k, domains)
            rows.append({"method": method, "sparsity": sparsity, "agents": k, "seed": seed,
                         "per_agent_bytes": per_agent, "total_bytes": k * per_agent,
                         "per_agent_cost_pct": claims.network_bytes(method, unit["memory_cost"], k, domains)})
    long = pd.DataFrame(rows)
    long["method"] = pd.Categorical(long["method"], categories=df["method"].cat.categories, ordered=True)
    long = long.set_index([*KEY, "agents", "seed"]).sort_index(level=KEY, sort_remaining=False, na_position="first")
    return _cells({c: long[c] for c in ("per_agent_bytes", "per_agent_cost_pct", "total_bytes")})


def summarise(inputs: Inputs, domains: list[str]) -> Frames:
    df, skipped = inputs.tidy, []
    has_ssim, has_cross = _has(df, "domain_ssim"), _has(df, "cross_psnr")
    if not has_ssim:
        skipped.append("SSIM (main table column, tables/domain_ssim): evaluation.csv has no domain_ssim rows")
    if not has_cross:
        skipped.append("tables/cross_traffic: evaluation.csv has no cross_psnr rows")
    domain_psnr = _wide(df, "domain_psnr", KEY, "domain", domains)
    domain_ssim = _wide(df, "domain_ssim", KEY, "domain", domains) if has_ssim else None
    main = {"domain_psnr_db": _per_seed(df, "domain_psnr", KEY)}
    if has_ssim:
        main["domain_ssim"] = _per_seed(df, "domain_ssim", KEY)
    main |= {"misalignment_db": _per_seed(df, "misalignment", KEY),
             "memory_cost_pct": _per_seed(df, "memory_cost", KEY)}
    main = _cells(main)
    seeds = _metric(df, "domain_psnr").groupby(KEY, observed=True, dropna=False, sort=False)["seed"]
    main.mean["seeds"] = seeds.nunique()
    misalignment = _cells({f"misalignment_{how}_db": _per_seed(df, "misalignment", KEY, how)
                           for how in ("mean", "max")})
    memory = _cells({**{f"memory_bytes_{how}": _per_seed(df, "memory_bytes", KEY, how) for how in ("mean", "max")},
                     **{f"memory_cost_pct_{how}": _per_seed(df, "memory_cost", KEY, how) for how in ("mean", "max")}})
    pair_psnr = _wide(df, "pair_psnr", [*KEY, "tx"], "rx", domains, mean_column=False)
    cross_traffic = None
    if has_cross:  # per variant that has cross traffic, means over ordered pairs
        crossed = df[df["variant"].isin(set(_metric(df, "cross_psnr")["variant"]))]
        cross_traffic = _cells({CROSS_COLUMNS[m]: _per_seed(crossed, m, KEY) for m in CROSS_COLUMNS if _has(df, m)})
    mask_movement = _wide(inputs.masks, "mask_moved_fraction", ["sparsity"], "domain", domains)
    memory_per_domain = _wide(df, "memory_bytes", KEY, "domain", domains, mean_column=False)
    if not _has(df, "source_psnr"):
        skipped.append("tables/controls: evaluation.csv has no source_psnr rows")
    return Frames(main, domain_psnr, domain_ssim, misalignment, memory, pair_psnr, cross_traffic,
                  memory_network(df, len(domains)), mask_movement, memory_per_domain, skipped,
                  controls(df, domains), validation_cells(inputs.validation))


def variant_rows(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    """One method's rows of a (method, sparsity) frame, indexed by sparsity."""
    return frame.xs(method, level="method")


def sam_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """sam's rows of a (method, sparsity) frame, indexed by sparsity."""
    return variant_rows(frame, "sam")


def reference_row(frame: pd.DataFrame, method: str) -> pd.Series:
    """The one row of a method without sparsity."""
    return frame.xs(method, level="method").iloc[0]


# ---------------------------------------------------------------------------------------- tables
def table_specs(frames: Frames) -> dict[str, tuple[Cells, dict[str, str]]]:
    """name -> (cells, number format per column); tables left out (``frames.skipped``) are absent."""
    def formats(cells: Cells, default: str, **special: str) -> dict[str, str]:
        return {"sparsity_pct": GAMMA, **{str(c): special.get(str(c), SSIM if "ssim" in str(c) else default)
                                          for c in cells.mean.columns}}

    memory_pct = {c: PCT for c in frames.memory.mean.columns if "pct" in c}
    specs = {
        "main": (frames.main, formats(frames.main, DB, memory_cost_pct=PCT, seeds="d")),
        "domain_psnr": (frames.domain_psnr, formats(frames.domain_psnr, DB)),
        "domain_ssim": (frames.domain_ssim, formats(frames.domain_ssim, SSIM) if frames.domain_ssim else {}),
        "misalignment": (frames.misalignment, formats(frames.misalignment, DB)),
        "memory": (frames.memory, formats(frames.memory, "d", **memory_pct)),
        "memory_network": (frames.memory_network, formats(frames.memory_network, "d", per_agent_cost_pct=PCT)),
        "pair_psnr": (frames.pair_psnr, formats(frames.pair_psnr, DB)),
        "cross_traffic": (frames.cross_traffic, formats(frames.cross_traffic, DB) if frames.cross_traffic else {}),
        "mask_movement": (frames.mask_movement, formats(frames.mask_movement, PCT)),
        "controls": (frames.controls, formats(frames.controls, DB) if frames.controls else {}),
        "validation": (frames.validation, {"sparsity_pct": GAMMA, "val_psnr": DB, "point": "d"}),
    }
    return {name: spec for name, spec in specs.items() if spec[0] is not None}


def flat_table(cells: Cells, fmt: dict[str, str]) -> pd.DataFrame:
    """Index as leading columns, γ in %; where the table aggregates seeds each column is followed by its
    95 % half-width ``<column>_ci95`` (empty with one seed); numbers rounded as written."""
    frame = cells.mean
    if cells.ci is not None:
        frame = pd.concat([part for c in cells.mean.columns for part in
                           ([cells.mean[c]] + ([cells.ci[c].rename(f"{c}{CI}")] if c in cells.ci else []))], axis=1)
    flat = frame.reset_index()
    flat.columns = [str(c) for c in flat.columns]
    flat = flat.rename(columns={"sparsity": "sparsity_pct"})
    flat["sparsity_pct"] = (100 * flat["sparsity_pct"]).round(6)
    for column in flat.columns:
        f = fmt.get(column.removesuffix(CI), "")
        if f.endswith("f"):
            flat[column] = flat[column].round(int(f[1:-1]))
        elif f == "d":
            flat[column] = flat[column].round().astype("Int64")
    return flat


def _written(value, f: str) -> str:
    if pd.isna(value):
        return ""
    return value if isinstance(value, str) else format(int(value) if f == "d" else value, f or "g")


def display_table(flat: pd.DataFrame, fmt: dict[str, str]) -> pd.DataFrame:
    """The table as written for a reader: a half-width column joins its column as 'mean ± half-width'."""
    out = {}
    for column in (c for c in flat.columns if not c.endswith(CI)):
        f, means = fmt.get(column, ""), flat[column].astype(object)
        halves = flat[column + CI].astype(object) if column + CI in flat else [None] * len(flat)
        out[column] = [_written(m, f) + (f" ± {_written(h, f)}" if h is not None and not pd.isna(h) else "")
                       for m, h in zip(means, halves)]
    return pd.DataFrame(out)


def render_table(flat: pd.DataFrame, fmt: dict[str, str], header: str) -> tuple[str, str, str]:
    """CSV (half-widths in their own columns), Markdown (header line first) and LaTeX (header as a comment)."""
    shown = display_table(flat, fmt)
    align = ["right" if pd.api.types.is_numeric_dtype(flat[c]) else "left" for c in shown.columns]
    markdown = shown.to_markdown(index=False, disable_numparse=True, colalign=align)
    latex = (shown.style.hide(axis="index").format(escape="latex")
             .format_index(escape="latex", axis=1).to_latex(hrules=True))
    return flat.to_csv(index=False), f"{header}\n\n{markdown}\n", f"% {header}\n{latex}"


SEEDS_NOTE = " · cells: mean over seeds ± 95 % half-width (Student-t; one seed: the mean alone)"


def write_tables(frames: Frames, folder: Path, header: str) -> list[Path]:
    written = []
    for name, (cells, fmt) in table_specs(frames).items():
        note = SEEDS_NOTE if cells.ci is not None else ""
        for text, suffix in zip(render_table(flat_table(cells, fmt), fmt, header + note), (".csv", ".md", ".tex")):
            write_text(folder / f"{name}{suffix}", text)
            written.append(folder / f"{name}{suffix}")
    # The folder is a persistent DVC output (kept, not emptied, before the stage runs): a file this run
    # did not write, a table of older code or one left out this time, must not pass as part of this result.
    for stale in sorted(set(folder.iterdir()) - set(written)):
        stale.unlink()
    return written


def plot_data(frames: Frames, domains: list[str]) -> dict[str, pd.DataFrame]:
    """CSVs for ``dvc plots``, one row per γ: sam domain PSNR per domain, sam memory cost (max)."""
    return {"psnr_vs_sparsity": sam_rows(frames.domain_psnr.mean)[domains].reset_index(),
            "memory_vs_sparsity": sam_rows(frames.memory.mean)[["memory_cost_pct_max"]].reset_index()}


# --------------------------------------------------------------------------------------- figures
def _gamma_axis(ax, gammas, log_y: bool = False) -> None:
    """Log γ axis (in %) with a tick at every evaluated γ."""
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xticks([100 * g for g in gammas], [f"{100 * g:g}%" for g in gammas])
    ax.minorticks_off()
    ax.set_xlabel("sparsity γ")


def _half(ci: pd.Series) -> np.ndarray:
    """Error bar lengths: a half-width, 0 where there is none (one seed)."""
    return np.nan_to_num(ci.to_numpy(dtype=float), nan=0.0)


def fig_psnr_vs_sparsity(frames: Frames, domains: list[str]):
    import matplotlib.pyplot as plt
    mean, ci = sam_rows(frames.domain_psnr.mean)[domains], sam_rows(frames.domain_psnr.ci)[domains]
    references = {"tuned (tuning_copy)": ("tuning_copy", "--", "k"), "pretrained": ("pretrained", ":", "grey")}
    fig, axes = plt.subplots(1, len(domains), figsize=(3.2 * len(domains), 3.2), squeeze=False)
    for ax, d in zip(axes[0], domains):
        ax.errorbar(100 * mean.index.to_numpy(), mean[d], yerr=_half(ci[d]), marker="o", capsize=3, label="sam")
        for label, (method, style, colour) in references.items():
            ax.axhline(reference_row(frames.domain_psnr.mean, method)[d], ls=style, color=colour, label=label)
        _gamma_axis(ax, mean.index)
        ax.set_title(d)
        ax.set_ylabel("domain PSNR (dB)")
        if ax is axes[0, 0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("sam domain PSNR vs sparsity (95 % CI over seeds), against full tuning and the pretrained model",
                 fontsize=10)
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
    labels = [variant_label(*k) for k in frames.misalignment.mean.index]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(labels) + 1.2))
    sns.barplot(x=frames.misalignment.mean["misalignment_mean_db"].to_numpy(), y=labels, order=labels,
                color="lightsteelblue", label="mean over pairs and seeds", ax=ax)
    with seeded_numpy():
        sns.stripplot(_metric(tidy, "misalignment"), x="value", y="variant", order=labels, color="k", size=3,
                      ax=ax, label="one pair A→B, one seed")
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
    sam = sam_rows(frames.memory.mean).reset_index()
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


def fig_psnr_vs_bytes(frames: Frames, domains: list[str]):
    """Per domain: domain PSNR (95 % CI over seeds) against the bytes an agent stores, every method: a line
    over γ for a method with sparsities, a point otherwise; a method that stores nothing (0 B: no point on a
    log axis) is a horizontal line."""
    import matplotlib.pyplot as plt
    psnr, ci, nbytes = frames.domain_psnr.mean, frames.domain_psnr.ci, frames.memory_per_domain.mean
    methods = list(dict.fromkeys(psnr.index.get_level_values("method")))
    colours = dict(zip(methods, plt.get_cmap("tab10").colors * 2))
    fig, axes = plt.subplots(1, len(domains), figsize=(3.6 * len(domains), 3.6), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], domains):
        for method in methods:
            y, err, x = variant_rows(psnr, method)[d], variant_rows(ci, method)[d], variant_rows(nbytes, method)[d]
            if (x <= 0).all():
                ax.axhline(y.mean(), ls=":", lw=1, color=colours[method], label=f"{method} (0 B)")
                continue
            order = np.argsort(x.to_numpy())
            ax.errorbar(x.to_numpy()[order], y.to_numpy()[order], yerr=_half(err)[order], capsize=2,
                        marker="o", ms=4, ls="-" if len(x) > 1 else "none", color=colours[method], label=method)
        ax.set_xscale("log")
        ax.set_xlabel("bytes stored per agent (log)")
        ax.set_title(f"domain {d}", fontsize=9)
    axes[0, 0].set_ylabel("domain PSNR (dB)")
    axes[0, -1].legend(fontsize=6, loc="lower right")
    fig.suptitle("Domain PSNR vs stored bytes (a line over γ; error bars: 95 % CI over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_memory_network(frames: Frames):
    """Log-log: bytes per agent and for the whole network against the number of agents K."""
    import matplotlib.pyplot as plt
    mean = frames.memory_network.mean
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for key, rows in mean.groupby(level=KEY, observed=True, dropna=False, sort=False):
        agents = rows.index.get_level_values("agents").to_numpy()
        style = "--" if claims.NETWORK_SCALING[key[0]] == claims.PER_PARTNER else "-"
        for ax, column in zip(axes, ("per_agent_bytes", "total_bytes")):
            ax.plot(agents, rows[column].to_numpy(), style, marker=".", label=variant_label(*key))
    for ax, what in zip(axes, ("per agent", "whole network")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("agents K")
        ax.set_ylabel(f"bytes stored, {what}")
        ax.set_title(f"Memory beyond the shared model, {what}", fontsize=9)
    axes[0].legend(fontsize=6)
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


def write_figures(inputs: Inputs, frames: Frames, params: Params, folder: Path) -> list[Path]:
    domains = list(params.domains.names)
    figures = {
        "psnr_vs_sparsity": lambda: fig_psnr_vs_sparsity(frames, domains),
        "psnr_vs_bytes": lambda: fig_psnr_vs_bytes(frames, domains),
        "misalignment": lambda: fig_misalignment(frames, inputs.tidy, inputs.summary["reference_psnr"]),
        "memory_vs_sparsity": lambda: fig_memory_vs_sparsity(frames),
        "memory_network": lambda: fig_memory_network(frames),
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
    for reason in frames.skipped:
        print(f"report: left out {reason} (an evaluate before these metrics; re-run it to get them)")
    entries = claims.check_all(inputs.tidy, inputs.summary, inputs.per_image)
    out = paths.reports
    with Tracker(params, paths, "report") as tracker:
        prov = provenance(params, paths, tracker.run_id)
        header = (claims.provenance_line(prov) + f" · source `{paths.evaluation_csv.relative_to(out).as_posix()}` · "
                  f"reference PSNR (pretrained Tx→Rx, base test) {inputs.summary['reference_psnr']:.2f} dB · "
                  f"bandwidth {bandwidth_note(params.model.bandwidth_ratio)}")
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
