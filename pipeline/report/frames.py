"""The frames every table and figure is drawn from: per-seed values reduced over seeds.

Every cell that aggregates seeds is the mean over seeds of the per-seed value with its 95 % Student-t
half-width (``pipeline.stats.mean_ci``; one seed: the mean alone, half-width NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import claims
from ..stats import mean_ci
from .inputs import KEY, Inputs

# The cross-traffic table: A's own domain images to B's Rx, beside base images A -> B (means over pairs).
CROSS_COLUMNS = {"cross_psnr": "cross_psnr_db", "cross_ssim": "cross_ssim", "pair_psnr": "pair_psnr_db",
                 "pair_ssim": "pair_ssim", "misalignment": "misalignment_db"}
# The controls that separate adaptation from undertraining (README "Protocol"): (a) the paired shift, the
# pretrained model on the same test images before and after the domain's transform; (b) base_control,
# the pretrained model trained with the tuning budget on base images.
CONTROL_ROWS = {"pretrained, untransformed test images": ("pretrained", "source_psnr"),
                "pretrained": ("pretrained", "domain_psnr"),
                "base_control (tuning budget on base images)": ("base_control", "domain_psnr")}
SHIFT_ROW = "paired shift (untransformed − transformed)"
REFERENCE_METHOD = "pretrained"  # the figures' gains are over it


@dataclass
class Cells:
    """A table's numbers: ``mean`` over seeds and ``ci``, the 95 % half-width (NaN with one seed), of the
    same shape; ``ci`` None for a table that aggregates no seeds."""
    mean: pd.DataFrame
    ci: pd.DataFrame | None = None


@dataclass
class Frames:
    """The frames every table and figure is drawn from (index: method, sparsity [, ...])."""
    main: Cells            # mean domain PSNR, SSIM, mean misalignment, mean memory cost, seeds
    domain_psnr: Cells     # variant x domain (+ mean)
    domain_ssim: Cells     # variant x domain (+ mean)
    misalignment: Cells    # variant x (mean, max)
    memory: Cells          # variant x (bytes, %) mean and max over domains
    pair_psnr: Cells       # (variant, tx) x rx
    cross_traffic: Cells   # variant x cross / pair PSNR (SSIM), misalignment
    memory_network: Cells  # (variant, agents) x bytes per agent, % per agent, total bytes
    mask_movement: Cells   # sam sparsity x domain (+ mean): fraction of kept entries not in the initial mask
    memory_per_domain: Cells  # variant x domain: stored bytes (the PSNR-vs-bytes figure)
    controls: Cells        # the two controls x domain (+ mean)
    validation: Cells | None  # the search grid: validation PSNR per point, the chosen one (None: no grid)
    domain_gain: Cells     # variant x domain (+ mean): domain PSNR minus the pretrained model's, per seed


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


def controls(df: pd.DataFrame, domains: list[str]) -> Cells:
    """Domain PSNR of the controls, per domain, with the paired shift."""
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
    """The search grid as evaluate chose from it (validation PSNR, mean over the scoring seeds, and their
    number; the chosen point, where its point comes from, the choice's status: interior, capped,
    edge-unsearched); None when no method searched."""
    if validation is None or validation.empty:
        return None
    v = validation.assign(chosen=validation["chosen"].map(lambda c: "chosen" if str(c) == "True" else ""))
    v["sparsity"] = pd.to_numeric(v["sparsity"].replace("", float("nan")))
    return Cells(v.set_index(["method", "sparsity", "domain", "point"])[["setting", "val_psnr", "seeds", "chosen",
                                                                          "origin", "choice"]])


def memory_network(df: pd.DataFrame, domains: int) -> Cells:
    """Per variant and K (``claims.NETWORK_AGENTS``): bytes and % of the model one agent stores, and the
    network's total, from the measured per-agent bytes (mean over domains, per seed)."""
    memory = df[df["metric"].isin(["memory_bytes", "memory_cost"])]
    units = memory.groupby([*KEY, "seed", "metric"], observed=True, dropna=False, sort=False)["value"].mean()
    rows = []
    for (method, sparsity, seed), unit in units.unstack("metric").iterrows():
        if claims.scaling(method) is None:
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


def domain_gain(df: pd.DataFrame, domains: list[str]) -> Cells:
    """Per variant and domain: domain PSNR minus the pretrained model's on the same domain, per seed (the
    pretrained model's value at that seed, or its mean over seeds where it was measured at fewer), then
    over seeds; the mean column is the gain of the mean over domains."""
    psnr = _metric(df, "domain_psnr")
    reference = psnr[psnr["method"] == REFERENCE_METHOD].groupby(["domain", "seed"])["value"].mean()
    fallback = reference.groupby(level="domain").mean()
    at = pd.MultiIndex.from_arrays([psnr["domain"], psnr["seed"]])
    base = reference.reindex(at).to_numpy()
    base = pd.Series(base, index=psnr.index).fillna(psnr["domain"].map(fallback))
    gains = psnr.assign(value=psnr["value"] - base, metric="domain_gain")
    return _wide(gains, "domain_gain", KEY, "domain", domains)


def summarise(inputs: Inputs, domains: list[str]) -> Frames:
    df = inputs.tidy
    main = _cells({"domain_psnr_db": _per_seed(df, "domain_psnr", KEY),
                   "domain_ssim": _per_seed(df, "domain_ssim", KEY),
                   "misalignment_db": _per_seed(df, "misalignment", KEY),
                   "memory_cost_pct": _per_seed(df, "memory_cost", KEY)})
    seeds = _metric(df, "domain_psnr").groupby(KEY, observed=True, dropna=False, sort=False)["seed"]
    main.mean["seeds"] = seeds.nunique()
    misalignment = _cells({f"misalignment_{how}_db": _per_seed(df, "misalignment", KEY, how)
                           for how in ("mean", "max")})
    memory = _cells({**{f"memory_bytes_{how}": _per_seed(df, "memory_bytes", KEY, how) for how in ("mean", "max")},
                     **{f"memory_cost_pct_{how}": _per_seed(df, "memory_cost", KEY, how) for how in ("mean", "max")}})
    return Frames(
        main=main,
        domain_psnr=_wide(df, "domain_psnr", KEY, "domain", domains),
        domain_ssim=_wide(df, "domain_ssim", KEY, "domain", domains),
        misalignment=misalignment,
        memory=memory,
        pair_psnr=_wide(df, "pair_psnr", [*KEY, "tx"], "rx", domains, mean_column=False),
        cross_traffic=_cells({column: _per_seed(df, metric, KEY) for metric, column in CROSS_COLUMNS.items()}),
        memory_network=memory_network(df, len(domains)),
        mask_movement=_wide(inputs.masks, "mask_moved_fraction", ["sparsity"], "domain", domains),
        memory_per_domain=_wide(df, "memory_bytes", KEY, "domain", domains, mean_column=False),
        controls=controls(df, domains),
        validation=validation_cells(inputs.validation),
        domain_gain=domain_gain(df, domains))


def variant_rows(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    """One method's rows of a (method, sparsity) frame, indexed by sparsity."""
    return frame.xs(method, level="method")


def sam_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """sam's rows of a (method, sparsity) frame, indexed by sparsity."""
    return variant_rows(frame, "sam")


def reference_row(frame: pd.DataFrame, method: str) -> pd.Series:
    """The one row of a method without sparsity."""
    return frame.xs(method, level="method").iloc[0]
