"""Study ``severity``: the gain of adaptation against the size of the shift. For each level of
``ablate.severities`` (``pipeline.domains``' ladder, level 3 = the params' magnitudes) and each domain of
``ablate.domains``, the level's train/val/test arrays are built from the same base images as the main
run's (``pipeline.data.cut_splits``: only the transform's magnitude changes); on them the pretrained
model's domain PSNR, sam at ``ablate.sparsity``, lora at that sam's stored bytes and full tuning (its
agent's own quality: ``tuning_copy``), each method at the main grid's chosen point for (domain,
``ablate.sparsity``), seeds 0..``ablate.severity_seeds``-1 (``adapt.seed`` + i, as the main cells).
The gain over the pretrained model in dB and in %, mean and 95 % interval over seeds (Student t; one
seed: none, the point estimate decides), and claim H's threshold (``pipeline.claims.PAPER_HEADLINE_PCT``)
decided per level, as H is: on the domain with the largest mean gain, its interval against +29.7 % (here
against the pretrained model only: the study does not re-tune on base data, so H's other baseline,
tuning_retune, has no row here).

Cached: at level 3, when the level's arrays are the data folder's byte for byte, a seed the main grid
trained is its cell (no training); every other measurement is kept in the cell store
(``.cells/<run>/ablate-severity/``) under a content key (the study's code, the method's params, the
level's arrays, the pretrained model), so a rerun trains only what changed.
"""
from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import torch
from pydantic import AfterValidator, Field

from .. import sources
from ..config import Block, unique
from ..data import cut_splits, domain_splits, to_tensor
from ..domains import DEFAULT_LEVEL, SCALE, magnitude
from ..fingerprint import base_fingerprint
from ..methods import Context, registry as methods
from ..methods import lora, sam, tuning
from ..paths import Cell, cell_name
from ..selection import Trial, choose, grid_points, trial_params
from ..stats import mean_ci, verdict
from ..storage import write_json
from ..train import data_fingerprint, fingerprint

if TYPE_CHECKING:
    from ..config import Params

NAME, ORDER = "severity", 8
ROWS = ("sam", "lora", "tuning_copy")  # the table's methods (tuning_copy: the fully tuned agent's own PSNR)
TRAINED = {"sam": "sam", "lora": "lora", "tuning_copy": "tuning"}  # the method file that trains each


class Config(Block):
    severities: Annotated[tuple[Annotated[int, Field(ge=min(SCALE), le=max(SCALE))], ...],
                          AfterValidator(unique)] = Field(
        min_length=1, description=f"severity study: the levels of pipeline.domains' ladder ({DEFAULT_LEVEL}: "
                                  "the params' magnitudes)")
    severity_seeds: Annotated[int, Field(ge=1, le=100)] = Field(
        description="severity study: adaptation seeds per level (adapt.seed + 0 ..); 2 or more give intervals")


def check(params: Params) -> None:
    if missing := [m for m in TRAINED.values() if m not in params.adapt.methods]:
        raise ValueError(f"the severity study compares sam, lora and tuning at their chosen grid points: "
                         f"{missing} must be among adapt.methods")
    if params.ablate.sparsity not in params.adapt.sparsities:
        raise ValueError(f"ablate.sparsity {params.ablate.sparsity:g} must be one of adapt.sparsities "
                         f"{list(params.adapt.sparsities)} for the severity study (lora's and sam's chosen points)")


@dataclasses.dataclass
class _AtLevel(Context):
    """A context whose domain splits are one level's arrays, and whose sam cell is the study's own."""
    arrays: dict = dataclasses.field(default_factory=dict)
    sam_cell: Cell | None = None

    def split(self, name: str) -> torch.Tensor:
        return self.arrays[name] if name in self.arrays else super().split(name)

    def cell(self, method: str, domain: str, sparsity: float | None = None) -> Cell:
        return self.sam_cell if method == "sam" and self.sam_cell is not None else super().cell(method, domain,
                                                                                                   sparsity)


class _Quiet:
    """A tracker that logs nothing (a study's trainings are not cells)."""

    def log_history(self, *args, **kwargs) -> None:
        pass


def _train(c: _AtLevel, method: str, d: str, s: float, out: Cell, sam_cell: Cell | None) -> dict:
    """Train one method on the level's arrays with its own recipe; its served test PSNR and stored bytes.
    sam's file is written at ``out`` (kept in the store): lora of the same level and seed sizes its ranks
    to it (``sam_cell``)."""
    torch.manual_seed(c.params.adapt.seed)  # as the adapt stage's cells
    if method == "sam":
        r = sam.adapt(c, d, s, out, _Quiet())
    elif method == "lora":
        c = dataclasses.replace(c, sam_cell=sam_cell)
        r = lora.adapt(c, d, s, Cell(c.checkpoints / "lora", f"lora-{cell_name(d, s)}", c.checkpoints), _Quiet())
    else:
        model = c.pretrained().requires_grad_(True)
        tuning.finetune(c, model, c.split(f"{d}_train"), c.params.adapt.epochs, d, d)
        model.eval()
        return {"psnr": c.psnr(c.self_link(model), c.split(f"{d}_test")), "bytes": tuning.copy_bytes(model)}
    return {"psnr": r["domain_psnr"], "bytes": r["memory_bytes"]}


def _main_cell(ctx: Context, module, d: str, s: float, trial: Trial) -> dict | None:
    path = ctx.paths.cell(module.NAME, d, s if module.USES_SPARSITY else None, trial.tag).metrics
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    return {"psnr": done["domain_psnr"], "bytes": done["memory_bytes"]}


def _params_of(params: Params, *modules) -> dict:
    """The values of the methods' ``PARAMS`` (what their results depend on)."""
    tree = params.model_dump(mode="json")
    out = {}
    for key in sorted({k for m in modules for k in m.PARAMS}):
        value = tree
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def measure(ctx: Context, d: str, level: int, arrays: dict, is_main: bool, seed: int, chosen: dict) -> dict:
    """Every method of ``ROWS`` for one (domain, level, seed): the main cell (level 3, the data folder's
    arrays, a seed the main grid has), the store's copy, or trained here and stored."""
    s, found = ctx.params.ablate.sparsity, {}
    lctx = _AtLevel(ctx.params, ctx.paths, ctx.device, arrays=arrays)
    base_fp = base_fingerprint(ctx.pretrained())
    data_fp = data_fingerprint(*(arrays[f"{d}_{x}"] for x in ("train", "val", "test")))
    store, sam_cell = ctx.paths.cell_store(f"ablate-{NAME}"), None
    for method in ROWS:  # sam first: lora's byte target is its file
        module = methods()[TRAINED[method]]
        h = chosen[module.NAME].get((d, s if module.USES_SPARSITY else None), 0)
        trial = Trial(seed, h)
        if is_main and seed < ctx.params.adapt.seeds and (done := _main_cell(ctx, module, d, s, trial)):
            found[method] = done
            sam_cell = ctx.paths.cell("sam", d, s, trial.tag) if method == "sam" else sam_cell
            continue
        tp = trial_params(ctx.params, grid_points(ctx.params, module.NAME)[h], seed)
        key = fingerprint(NAME, method, d, s, level, trial.tag, sources.digest(__name__), base_fp, data_fp,
                          _params_of(tp, methods()["sam"], module), chosen["sam"].get((d, s), 0))
        folder = ctx.checkpoints or ctx.paths.checkpoints / "adhoc"
        out = Cell(store, f"{d}-L{level}-{method}-{trial.tag or 's0'}-{key}", folder / f"{d}-L{level}-s{seed}")
        cached = out.metrics
        if not cached.is_file() or (method == "sam" and not out.artifact().is_file()):
            c = dataclasses.replace(lctx, params=tp, trial=trial, checkpoints=out.checkpoints)
            store.mkdir(parents=True, exist_ok=True)
            write_json(cached, _train(c, method, d, s, out, sam_cell))
        sam_cell = out if method == "sam" else sam_cell
        found[method] = json.loads(cached.read_text())
    return found


def run(ctx: Context) -> tuple[pd.DataFrame, str, object]:
    params, a = ctx.params, ctx.params.ablate
    _, base_images = cut_splits(params, ctx.paths)
    chosen = {m: choose(params, ctx.paths, m, methods()[m]) for m in set(TRAINED.values())}
    found, pre = [], ctx.pretrained()
    for d in a.domains:
        for level in a.severities:
            arrays = {k: to_tensor(v) for k, v in domain_splits(d, base_images[d], params.domains, level).items()}
            is_main = level == DEFAULT_LEVEL and all(torch.equal(v, ctx.split(k)) for k, v in arrays.items())
            pretrained = ctx.psnr(ctx.self_link(pre), arrays[f"{d}_test"])
            for seed in range(a.severity_seeds):
                for method, r in measure(ctx, d, level, arrays, is_main, seed, chosen).items():
                    found.append({"domain": d, "level": level, "method": method, "seed": seed,
                                  "pretrained_psnr": pretrained, **r})
    return summarise(pd.DataFrame(found), params)


def summarise(per_seed: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, str, object]:
    """The table (per domain, level and method: gains in dB and % with 95 % intervals over seeds, H's
    verdict), the finding and the figure, from one row per (domain, level, method, seed)."""
    from ..claims import PAPER_HEADLINE_PCT
    per_seed = per_seed.assign(gain_db=per_seed.psnr - per_seed.pretrained_psnr)
    per_seed["gain_pct"] = 100 * per_seed.gain_db / per_seed.pretrained_psnr
    rows = []
    for (d, level, method), g in per_seed.groupby(["domain", "level", "method"], sort=False):
        db, pct = mean_ci(g.gain_db), mean_ci(g.gain_pct)
        rows.append({"domain": d, "level": level, "magnitude": magnitude(d, params.domains, level),
                     "method": method, "seeds": len(g), "pretrained_psnr": g.pretrained_psnr.iloc[0],
                     "psnr": g.psnr.mean(), "memory_bytes": round(g.bytes.mean()),
                     "gain_db": db.mean, "gain_db_lo": db.lo, "gain_db_hi": db.hi,
                     "gain_pct": pct.mean, "gain_pct_lo": pct.lo, "gain_pct_hi": pct.hi,
                     "H": verdict(pct, PAPER_HEADLINE_PCT, "above")})
    df = pd.DataFrame(rows)
    place = {d: i for i, d in enumerate(dict.fromkeys(df.domain))}  # ablate.domains' order, then the level
    df = df.sort_values(["domain", "level"], key=lambda c: c.map(place) if c.name == "domain" else c,
                        kind="stable").reset_index(drop=True)
    return df, finding(df, params, PAPER_HEADLINE_PCT), figure(df, PAPER_HEADLINE_PCT)


def _best(df: pd.DataFrame, method: str, level: int) -> pd.Series:
    """The row of ``method`` at ``level`` on the domain with the largest mean % gain (claim H's max over domains)."""
    rows = df[(df.method == method) & (df.level == level)]
    return rows.loc[rows.gain_pct.idxmax()]


def finding(df: pd.DataFrame, params: Params, headline: float) -> str:
    """Per level: sam's and full tuning's largest % gain over the pretrained model (over domains), with its
    interval and H's verdict; then at which level, if any, each reaches the paper's +headline %."""
    a = params.ablate
    levels = sorted(set(df.level))
    seeds = int(df.seeds.max())
    parts, reached = [], {}
    for level in levels:
        words = []
        for method in ("sam", "tuning_copy"):
            r = _best(df, method, level)
            interval = "" if seeds < 2 else f" [{r.gain_pct_lo:+.1f}, {r.gain_pct_hi:+.1f}]"
            words.append(f"{method} {r.gain_pct:+.1f} %{interval} on {r.domain} ({r.gain_db:+.2f} dB) H {r.H}")
            if r.H == "PASS":
                reached.setdefault(method, (level, r.domain))
        parts.append(f"level {level}: " + ", ".join(words))
    verdicts = []
    for method, who in (("sam", "sam"), ("tuning_copy", "full tuning")):
        if method in reached:
            level, d = reached[method]
            verdicts.append(f"{who} first reaches +{headline:g} % at level {level} ({d})")
        else:
            verdicts.append(f"{who} reaches +{headline:g} % at no level of {levels}")
    return (f"Gain over the pretrained model against the shift's severity (pipeline.domains' ladder: level "
            f"{DEFAULT_LEVEL} = the params' magnitudes; sam and lora at γ={a.sparsity:g}, lora at sam's bytes; "
            f"{seeds} seed{'s' if seeds > 1 else ''}, 95 % intervals over seeds"
            + ("" if seeds > 1 else ": none with one seed, the point estimate decides") + f"; domains "
            f"{', '.join(a.domains)}; largest gain over domains per level): " + "; ".join(parts) + ". "
            + "; ".join(verdicts) + ".")


def figure(df: pd.DataFrame, headline: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.figures import method_colour
    domains = list(dict.fromkeys(df.domain))
    fig, axes = plt.subplots(1, len(domains), figsize=(3.4 * len(domains) + 1.2, 3.2), squeeze=False)
    for ax, d in zip(axes[0], domains):
        for method in ROWS:
            g = df[(df.domain == d) & (df.method == method)].sort_values("level")
            err = [(g.gain_pct - g.gain_pct_lo).fillna(0), (g.gain_pct_hi - g.gain_pct).fillna(0)]
            ax.errorbar(g.level, g.gain_pct, yerr=err, marker="o", capsize=3, color=method_colour(method),
                        label=method)
        ax.axhline(headline, color="0.4", linestyle="--", linewidth=1, label=f"paper +{headline:g} %")
        ax.set_title(d, fontsize=10)
        ax.set_xlabel("severity level")
        ax.set_xticks(sorted(set(df.level)))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gain over pretrained (%)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Gain against shift severity (error bars: 95 % CI over seeds)", fontsize=10)
    fig.tight_layout()
    return fig
