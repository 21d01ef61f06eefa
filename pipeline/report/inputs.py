"""The report's inputs, read and checked: evaluate's tables and arrays, the sam cells' mask movement and,
where the run has the bases study, its ``ablations/bases.csv`` (the main gains' interval over bases).

Every input is read and checked before the report writes anything; a bad one raises ``DataError``
(one line naming the file and what is wrong, exit code 2 from the stage).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .. import claims
from ..data import DataError
from ..metrics import FIELDS, ordered_pairs
from ..paths import Paths
from ..selection import FIELDS as VALIDATION_FIELDS
from ..selection import Trial, choose

if TYPE_CHECKING:
    from ..config import Params

# Methods in the order of the paper's comparison (a method with sparsities expands to one row per γ):
# the reference, the zero-forget methods, the baselines, the control.
METHODS = ("pretrained", "sam", "lora", "delta_topk", "bitfit", "tuning_copy", "tuning_retune", "no_alignment",
           "equalizer", "base_control")
REQUIRED_METHODS = ("pretrained", "sam", "tuning_copy", "tuning_retune", "no_alignment", "equalizer")  # the claims'
DOMAIN_METRICS = ("domain_psnr", "domain_ssim", "memory_bytes", "memory_cost")  # one row per domain
PAIR_METRICS = ("pair_psnr", "pair_ssim", "misalignment", "cross_psnr", "cross_ssim")  # one per ordered pair A != B
CONTROL_METRIC = ("pretrained", "source_psnr")                   # the paired-shift control, one row per domain
RECON_ROWS = ("original", "pretrained", "sam", "tuned")          # evaluate.reconstructions' rows
KEY = ["method", "sparsity"]                                     # a method/variant: a table row


@dataclass
class Inputs:
    tidy: pd.DataFrame          # evaluation.csv, typed, in METHODS order; plus a variant label
    summary: dict               # evaluate.json
    reconstructions: np.ndarray  # uint8 (domains, 4, n, 32, 32, 3)
    masks: pd.DataFrame         # sam cells, tidy: domain, sparsity, metric (mask_moved_fraction), value
    per_image: claims.PerImage | None = None  # evaluate's per-image values (None only in frame-level tests)
    validation: pd.DataFrame | None = None  # evaluate's validation.csv (the search grid)
    bases: pd.DataFrame | None = None  # the bases study's ablations/bases.csv (None: the run has one base)


def variant_label(method: str, sparsity: float) -> str:
    return method if pd.isna(sparsity) else f"{method} γ={100 * sparsity:g}%"


def read_tidy(path: Path) -> pd.DataFrame:
    """evaluation.csv with typed columns; sparsity NaN and domain/tx/rx '' where they do not apply."""
    if not path.is_file():
        raise DataError(f"report: {path} not found; run the evaluate stage first (dvc repro evaluate)")
    df = pd.read_csv(path, dtype={c: str for c in ("method", "metric", "domain", "tx", "rx", "unit")},
                     keep_default_na=False, na_values={"sparsity": [""], "value": [""], "seed": [""]})
    if missing := [c for c in FIELDS if c not in df.columns]:
        raise DataError(f"report: {path} lacks columns {missing}; expected {FIELDS}; re-run the evaluate stage")
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
    """The claims' methods (sam at every γ of params) are there; every variant has every domain and pair
    metric, at each of its seeds (the same for all its metrics), for every domain or every ordered pair
    once; the pretrained model has its paired-shift control; no γ outside params."""
    domains = list(params.domains.names)
    for method in sorted(set(df.loc[df["sparsity"].notna(), "method"])):
        gammas = sorted(set(df.loc[(df["method"] == method), "sparsity"].dropna()))
        if stale := [g for g in gammas if not np.isclose(g, params.adapt.sparsities).any()]:
            raise DataError(f"report: {source} has {method} at sparsities {stale} that adapt.sparsities lacks; "
                            "re-run the evaluate stage")
    expected = {**{m: sorted(domains) for m in (*DOMAIN_METRICS, CONTROL_METRIC[1])},
                **{m: sorted(ordered_pairs(domains)) for m in PAIR_METRICS}}

    def found(rows: pd.DataFrame, metric: str) -> list:
        return sorted(zip(rows["tx"], rows["rx"])) if metric in PAIR_METRICS else sorted(rows["domain"])

    def kind(metric: str) -> str:
        return "ordered pair" if metric in PAIR_METRICS else "domain"

    def lacks(label: str, metric: str, got: int, seed: str = "") -> DataError:
        return DataError(f"report: {source} lacks {metric} of {label}{seed} (found {got} rows, expected one per "
                         f"{kind(metric)} of domains {domains}); re-run the evaluate stage")

    for method in REQUIRED_METHODS:
        for sparsity in (params.adapt.sparsities if method == "sam" else (None,)):
            if claims.values(df, method, "domain_psnr", sparsity).empty:
                raise lacks(variant_label(method, sparsity), "domain_psnr", 0)
    if claims.values(df, *CONTROL_METRIC).empty:
        raise lacks(CONTROL_METRIC[0], CONTROL_METRIC[1], 0)
    known = df[df["metric"].isin(expected)]
    for (method, sparsity), rows in df.groupby(KEY, observed=True, dropna=False, sort=False):
        have = set(rows["metric"])
        if absent := [m for m in (*DOMAIN_METRICS, *PAIR_METRICS) if m not in have]:
            raise lacks(variant_label(method, sparsity), absent[0], 0)
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
            raise lacks(variant_label(method, sparsity), metric, len(got), f" at seed {seed}")


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


def read_per_image(paths: Paths) -> claims.PerImage:
    """evaluate's per-image values (the claims' paired intervals with one seed)."""
    from ..metrics import read_per_image
    try:
        return claims.PerImage(read_per_image(paths.per_image))
    except (OSError, ValueError, KeyError, TypeError) as err:  # PerImageFileError included
        raise DataError(f"report: {paths.per_image} unusable ({type(err).__name__}: {err}); "
                        "re-run the evaluate stage") from None


def read_validation(path: Path) -> pd.DataFrame:
    """evaluate's validation.csv: every method's search grid and the chosen point."""
    if not path.is_file():
        raise DataError(f"report: {path} not found; run the evaluate stage first (dvc repro evaluate)")
    df = pd.read_csv(path, dtype={"setting": str, "sparsity": str, "origin": str, "choice": str}, keep_default_na=False)
    if missing := [c for c in VALIDATION_FIELDS if c not in df.columns]:
        raise DataError(f"report: {path} lacks columns {missing}; expected {VALIDATION_FIELDS}; re-run the evaluate stage")
    return df


def read_bases(path: Path) -> pd.DataFrame | None:
    """The bases study's table (sam's gain on each base), or None when the run has no bases study."""
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, dtype={"base": str, "domain": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(f"report: {path} unreadable ({type(err).__name__}: {err}); re-run ablate@bases") from None
    if missing := [c for c in claims.BASES_COLUMNS if c not in df.columns]:
        raise DataError(f"report: {path} lacks columns {missing}; re-run ablate@bases")
    numbers = [c for c in claims.BASES_COLUMNS if c not in ("base", "domain")]
    try:
        df[numbers] = df[numbers].apply(pd.to_numeric)
    except ValueError as err:
        raise DataError(f"report: {path}: a value of {numbers} is not a number ({err}); re-run ablate@bases") from None
    if df.empty or not df[numbers].map(np.isfinite).all().all():
        raise DataError(f"report: {path} is empty or holds a value that is not finite; re-run ablate@bases")
    return df


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
    validation = read_validation(paths.validation_csv)
    try:  # the results page reads it (the machine, the training time)
        json.loads(paths.pretrain_json.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"report: {paths.pretrain_json} unusable ({type(err).__name__}: {err}); "
                        "re-run the pretrain stage") from None
    return Inputs(tidy, summary, recon, read_masks(params, paths), read_per_image(paths), validation,
                  read_bases(paths.ablations / "bases.csv"))
