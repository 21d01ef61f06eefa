"""Study ``strength``: sam's and full tuning's gain against the strength of the base they adapt. The main
seed pretrained for each of ``ablate.strength_epochs`` epochs with the pretrain recipe (the main base itself
at ``pretrain.epochs``; the budget study's bases reused from the base store, ``_adapted.stored_base``), sam at
``ablate.sparsity`` and full tuning (its local quality, tuning_copy's domain PSNR) adapted on each base at the
main grid's chosen points (adaptation seed 0; on the main base its cells are read), on ``ablate.domains``.
The gain (adapted minus that base's pretrained domain PSNR) is fitted against the base's base test PSNR by
ordinary least squares over the bases: ``scipy.stats.linregress`` (scipy is already a dependency, for the
intervals of pipeline/stats.py, and one regressor needs no more than slope, intercept and their standard
errors), the 95 % intervals Student-t with n − 2 degrees of freedom. The fit is read at
``ablate.strength_extra_db`` more base test PSNR than the main base's (the full profile: +0.42 dB, what its
last doubling of pretraining, 75 → 150 epochs, added): how C3 (sam within 0.5 dB of tuning) and C5 (sam
improves on pretrained on every domain) would move on a stronger base.

Time in the full profile (2 cores of the AMD EPYC of reports/cifar100-full: pretraining 862 images/s,
3392 s for 150 epochs of 19 500 images, i.e. 22.6 s an epoch; a quick-profile sam cell of 5 epochs on 1000
images takes about 12 s, a tuning cell of 5 + 5 epochs about 18 s, reports/benchmarks.md): bases at 15 and
37 epochs, 52 epochs ≈ 20 min (75 is the budget study's, 150 the main base: read, not trained; about 28 min
more when ``ablate@budget`` has not run first); sam (10 epochs, per-epoch test PSNR on 1000 images, ≈ 28 s)
and tuning (10 epochs, ≈ 18 s) on 3 bases × 4 domains ≈ 9 min; ≈ 30 min in all (≈ 58 min without the
budget study's 75-epoch base), within the 60 min of one ``dvc repro ablate@strength``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import numpy as np
import pandas as pd
from pydantic import AfterValidator, Field

from ..claims.combine import intersection_union
from ..claims.findings import C3_TOLERANCE_DB
from ..config import Block, unique
from ..stats import LEVEL, Interval, verdict
from ._adapted import METHODS, OnBase, adapted_psnr, cell_psnr, chosen_points, stored_base, trial_context

if TYPE_CHECKING:
    from ..config import Params
    from ..methods import Context

NAME, ORDER = "strength", 9


class Config(Block):
    strength_epochs: Annotated[tuple[Annotated[int, Field(ge=1)], ...], AfterValidator(unique)] = Field(
        min_length=3, description="strength study: the main seed pretrained for each of these epochs (at least 3 "
                                  "bases: a fitted line with an interval); sam and tuning adapted on each")
    strength_extra_db: float = Field(gt=0, description="strength study: the fit read at this much more base test "
                                                       "PSNR than the main base's (dB)")


def check(params: Params) -> None:
    a = params.ablate
    if a.sparsity not in params.adapt.sparsities:
        raise ValueError(f"ablate.sparsity {a.sparsity:g} must be one of adapt.sparsities "
                         f"{list(params.adapt.sparsities)} for the strength study (it reads the main cells)")
    if missing := [m for m in METHODS if m not in params.adapt.methods]:
        raise ValueError(f"the strength study adapts sam and tuning: {missing} must be among adapt.methods")


def run(ctx: Context) -> tuple[pd.DataFrame, str, object]:
    params, a = ctx.params, ctx.params.ablate
    points, seed = chosen_points(ctx), params.pretrain.seed
    found = []
    for epochs in sorted(a.strength_epochs):
        main = epochs == params.pretrain.epochs
        on = OnBase(params, ctx.paths, ctx.device, checkpoints=ctx.checkpoints,
                    base=None if main else stored_base(ctx, seed, epochs, "strength"))
        pre = on.pretrained()
        base_psnr = on.psnr(on.self_link(pre), on.split("base_test"))
        for d in a.domains:
            pretrained = on.psnr(on.self_link(pre), on.split(f"{d}_test"))
            for m in METHODS:
                h = points[(m, d)]
                if main:
                    psnr, source = cell_psnr(ctx, m, d, 0, h), "main cell"
                else:
                    psnr = adapted_psnr(trial_context(on, m, h, 0), m, d, f"strength-{epochs}-{m}-{d}")
                    source = "trained here"
                found.append({"pretrain_epochs": epochs, "base": "the pipeline's base" if main
                              else f"seed {seed}, {epochs} epochs", "base_test_psnr": base_psnr, "domain": d,
                              "method": m, "point": h, "pretrained_psnr": pretrained, "adapted_psnr": psnr,
                              "gain": psnr - pretrained, "source": source})
    df = pd.DataFrame(found)
    main_base = ctx.psnr(ctx.self_link(ctx.pretrained()), ctx.split("base_test"))
    return df, strength_finding(df, main_base, a.strength_extra_db, a.sparsity), figure(df, main_base,
                                                                                          a.strength_extra_db)


# ------------------------------------------------------------------------------------------ the fit
@dataclass(frozen=True)
class Fit:
    """An ordinary least-squares line y = intercept + slope·x over n points, with Student-t intervals."""
    slope: Interval
    intercept: float
    n: int
    x_mean: float
    sxx: float
    residual_sd: float

    def at(self, x: float) -> Interval:
        """The fitted line at ``x`` with the 95 % interval of the line there (not of a new point)."""
        y = self.intercept + self.slope.mean * x
        se = self.residual_sd * math.sqrt(1 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        half = _t(self.n) * se
        return Interval(y, y - half, y + half, self.n)


def _t(n: int) -> float:
    from scipy import stats
    return float(stats.t.ppf(0.5 + LEVEL / 2, n - 2))


def fit_line(x, y) -> Fit:
    """OLS of ``y`` on ``x`` (scipy.stats.linregress), the slope's 95 % Student-t interval (n − 2 df)."""
    from scipy import stats
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or x.size != y.size:
        raise ValueError(f"fit_line: need at least 3 (x, y) pairs for a line with an interval, got {x.size}")
    if np.ptp(x) == 0:
        raise ValueError(f"fit_line: every base has the same base test PSNR ({x[0]:.3f} dB): no slope to fit")
    r = stats.linregress(x, y)
    half = _t(x.size) * r.stderr
    sxx = float(((x - x.mean()) ** 2).sum())
    return Fit(Interval(float(r.slope), float(r.slope - half), float(r.slope + half), int(x.size)),
               float(r.intercept), int(x.size), float(x.mean()), sxx, float(r.stderr * math.sqrt(sxx)))


def _per_base(df: pd.DataFrame, value: pd.Series) -> pd.DataFrame:
    """``value`` (indexed like df) averaged over domains per base, beside the base's base test PSNR."""
    return (df.assign(v=value).groupby("pretrain_epochs").agg(x=("base_test_psnr", "first"), y=("v", "mean")))


def fits(df: pd.DataFrame) -> dict[tuple[str, str], Fit]:
    """(method or 'gap', domain or 'mean') -> the line of the gain (gap: tuning − sam) on base test PSNR."""
    out = {}
    wide = df.pivot_table(index=["pretrain_epochs", "domain"], columns="method", values="gain").reset_index()
    wide = wide.merge(df.drop_duplicates("pretrain_epochs")[["pretrain_epochs", "base_test_psnr"]])
    wide["gap"] = wide["tuning"] - wide["sam"]
    for what in (*METHODS, "gap"):
        mean = _per_base(wide, wide[what])
        out[(what, "mean")] = fit_line(mean.x, mean.y)
        for d, part in wide.groupby("domain", sort=False):
            out[(what, d)] = fit_line(part.base_test_psnr, part[what])
    return out


def _signed(i: Interval) -> str:
    return f"{i.mean:+.2f} dB [95 % CI {i.lo:+.2f}, {i.hi:+.2f}]"


def strength_finding(df: pd.DataFrame, main_base: float, extra_db: float, sparsity: float) -> str:
    """The bases, each method's fitted slope (mean over domains and per domain), and C3's and C5's verdicts
    at the main base (seed 0) against what the fit predicts ``extra_db`` further on."""
    f, x0 = fits(df), main_base + extra_db
    domains = list(dict.fromkeys(df.domain))
    bases = df.drop_duplicates("pretrain_epochs")
    out = (f"{len(bases)} bases of the main seed (base test PSNR "
           + ", ".join(f"{int(r.pretrain_epochs)} epochs: {r.base_test_psnr:.2f} dB" for r in bases.itertuples())
           + f"), sam at γ={sparsity:g} and tuning at the main grid's chosen points (seed 0) on "
           f"{', '.join(domains)}. Gain over the base's own pretrained PSNR per dB of base test PSNR (OLS over "
           f"bases, mean over domains): " + "; ".join(
               f"{m} {_signed(f[(m, 'mean')].slope)} per dB" for m in METHODS)
           + " (per domain: " + "; ".join(f"{d}: " + ", ".join(f"{m} {f[(m, d)].slope.mean:+.2f}" for m in METHODS)
                                           for d in domains) + ")"
           + f". At {extra_db:+.2f} dB more base than the main base ({main_base:.2f} → {x0:.2f} dB) the fit predicts "
           + "; ".join(f"{m} gain {_signed(f[(m, 'mean')].at(x0))}" for m in METHODS) + ".")
    main = df[df.source == "main cell"]
    main = main if len(main) else None  # the main base is not among the study's bases: no verdict at it
    gap = f[("gap", "mean")]
    c3_then = verdict(gap.at(x0), C3_TOLERANCE_DB, "below")
    now = "" if main is None else (
        f"on the main base {_gap(main):+.2f} dB (seed 0: {verdict(_point(_gap(main)), C3_TOLERANCE_DB, 'below')}), ")
    out += (f" C3 (sam within {C3_TOLERANCE_DB:g} dB of tuning): the gap tuning − sam {now}slope "
            f"{_signed(gap.slope)} per dB, predicted {_signed(gap.at(x0))} on the stronger base: {c3_then}"
            + _moves(None if main is None else verdict(_point(_gap(main)), C3_TOLERANCE_DB, "below"), c3_then) + ".")
    then = {d: verdict(f[("sam", d)].at(x0), 0.0, "above") for d in domains}
    c5_then = intersection_union(then.values())
    c5_now = None if main is None else intersection_union(
        verdict(_point(float(g)), 0.0, "above") for g in main[main.method == "sam"].gain)
    out += (" C5 (sam improves on pretrained on every domain): sam's gain predicted on the stronger base "
            + "; ".join(f"{d} {_signed(f[('sam', d)].at(x0))} ({then[d]})" for d in domains)
            + f": {c5_then}" + _moves(c5_now, c5_then) + ".")
    return out


def _gap(main: pd.DataFrame) -> float:
    g = main.pivot_table(index="domain", columns="method", values="gain")
    return float(statistics.fmean(g["tuning"] - g["sam"]))


def _point(value: float) -> Interval:
    return Interval(value, math.nan, math.nan, 1)


def _moves(now: str | None, then: str) -> str:
    if now is None:
        return ""
    return f" (on the main base, seed 0: {now}; {'unchanged' if now == then else f'{now} → {then}'})"


def figure(df: pd.DataFrame, main_base: float, extra_db: float):
    """Gain vs base test PSNR, one panel per domain (own y-axis), each method's points and fitted line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.figures import method_colour
    domains = list(dict.fromkeys(df.domain))
    f = fits(df)
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.4), squeeze=False)
    xs = np.linspace(df.base_test_psnr.min(), max(df.base_test_psnr.max(), main_base + extra_db), 50)
    for ax, d in zip(axes[0], domains):
        for m in METHODS:
            part = df[(df.domain == d) & (df.method == m)]
            colour = method_colour("tuning_copy" if m == "tuning" else m)
            line = f[(m, d)]
            ax.plot(part.base_test_psnr, part.gain, "o", color=colour,
                    label=f"{m if m == 'sam' else 'tuning (tuning_copy)'}: slope {line.slope.mean:+.2f}")
            ax.plot(xs, line.intercept + line.slope.mean * xs, "-", color=colour, alpha=0.8)
        ax.axvline(main_base, color="grey", linestyle=":", linewidth=1)
        ax.axvline(main_base + extra_db, color="grey", linestyle="--", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(d, fontsize=10)
        ax.set_xlabel("base test PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("gain over its base's pretrained PSNR (dB)")
    fig.suptitle(f"Gain vs base strength (dotted: the main base; dashed: {extra_db:+.2f} dB more)", fontsize=10)
    fig.tight_layout()
    return fig
