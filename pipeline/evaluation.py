"""The evaluation (stage ``evaluate``): domain PSNR and SSIM, pair PSNR and SSIM with misalignment (full
A x B matrices), cross-traffic PSNR and SSIM, and memory cost of every method, variant and sparsity, as
defined in SPEC.md (and ``pipeline.metrics``), against the pretrained reference.

The stage writes its rows as one tidy CSV (a row per measurement, columns ``pipeline.metrics.FIELDS``), a DVC metrics
summary, the per-image PSNR/SSIM behind every domain_*, pair_* and cross_* mean (``Paths.per_image``, for
paired bootstrap intervals; read with ``pipeline.metrics.read_per_image``), and sample reconstructions for
the report's figure. Every link is evaluated with the same noise realisation; PSNR and SSIM of a
link come from the same reconstructions.

Metrics (``metric`` column; domain / tx / rx):

- ``domain_psnr``, ``domain_ssim``: d / d / d, agent d's own link on ``{d}_test``;
- ``pair_psnr``, ``pair_ssim``, ``misalignment``: base / a / b, a's Tx -> b's Rx after the alignment
  step on base test images (misalignment: reference PSNR - pair PSNR);
- ``cross_psnr``, ``cross_ssim``: a / a / b, the same link on a's own domain test images ``{a}_test``
  (what real traffic between adapted agents gets);
- ``memory_bytes``, ``memory_cost``: d / - / -, what agent d stores beyond W0 and needs.

``seed`` is the context's ``seed`` (0 when it has none).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses
import statistics

import numpy as np
import torch

from .methods import BASE_AGENT, Context, Variant, active
from .metrics import EXACT_IMAGES, Quality, fp32_bytes, memory_cost_pct, misalignment, ordered_pairs, per_image_key
from .selection import FIELDS as VALIDATION_FIELDS  # noqa: F401 - the evaluate stage writes these columns
from .selection import Trial, choose, validation_table

if TYPE_CHECKING:
    from .config import Params
    from .paths import Paths


def all_variants(ctx: Context, reference: bool = True) -> list[Variant]:
    """The pretrained reference (``reference``), then every method's variants at every sparsity it uses,
    for the context's seed at the grid points chosen on validation data."""
    pre = ctx.pretrained()
    out = [Variant("pretrained", None, lambda d: ctx.self_link(pre), None, lambda d: 0,
                   transmit=lambda a: ctx.channel(pre), receive=lambda a, b: ctx.receiver(pre))] if reference else []
    for name, module in sorted(active(ctx.params).items()):
        for s in (ctx.params.adapt.sparsities if module.USES_SPARSITY else (None,)):
            out += module.variants(ctx, s)
    return out


@dataclasses.dataclass(frozen=True)
class ExactReference:
    """What the bit-for-bit switch-off check compares against: the first ``EXACT_IMAGES`` base test
    images and the pretrained link's outputs on them (evaluation noise seed), computed once."""
    images: torch.Tensor
    outputs: torch.Tensor

    @classmethod
    @torch.no_grad()
    def of(cls, ctx: Context, base_test: torch.Tensor) -> "ExactReference":
        pre = ctx.pretrained()
        x = base_test[:EXACT_IMAGES].to(ctx.device).float() / 255
        return cls(x, ctx.link(pre, pre)(x, _exact_noise(ctx)))


def _exact_noise(ctx: Context) -> torch.Generator:
    return torch.Generator(device=ctx.device).manual_seed(ctx.params.evaluate.noise_seed)


@torch.no_grad()
def switch_off_exact(ctx: Context, variant: Variant, exact: ExactReference) -> bool:
    """Every link of the variant after its alignment step (every ordered pair of agents, the base agent
    included) gives the pretrained link's outputs bit for bit, on the same images and noise."""
    agents = [BASE_AGENT, *ctx.params.domains.names]
    return all(torch.equal(variant.pair(a, b)(exact.images, _exact_noise(ctx)), exact.outputs)
               for a in agents for b in agents if a != b)


def measure(ctx: Context, variant: Variant, reference: float, base_bytes: int,
            per_image: dict[str, torch.Tensor] | None = None, exact: ExactReference | None = None,
            methods: dict[str, object] | None = None) -> list[dict]:
    """Rows for one variant: domain PSNR/SSIM, pair PSNR/SSIM and misalignment per ordered pair,
    cross-traffic PSNR/SSIM per ordered pair, memory, and for a ``SWITCH_OFF_EXACT`` method the ZF
    check against ``exact`` (computed here when not given). ``per_image`` (if given) receives the
    per-image values of every PSNR/SSIM row, keyed ``per_image_key`` of the row. ``methods``: the
    registry, when the caller has it."""
    names, base_test = list(ctx.params.domains.names), ctx.split("base_test")
    seed = ctx.trial.seed
    sparsity = "" if variant.sparsity is None else variant.sparsity
    pairs = ordered_pairs(names)
    rows = []

    def row(metric, value, unit, domain="", tx="", rx="", values=None):
        rows.append({"method": variant.method, "sparsity": sparsity, "seed": seed,
                     "metric": metric, "domain": domain, "tx": tx, "rx": rx, "value": value, "unit": unit})
        if per_image is not None and values is not None:
            key = per_image_key(variant.method, sparsity, seed, metric, domain, tx, rx)
            if key in per_image:
                raise ValueError(f"evaluate: two measurements share the per-image key {key!r}")
            per_image[key] = values

    def quality_rows(kind: str, q: Quality, domain: str, tx: str, rx: str):
        row(f"{kind}_psnr", q.mean_psnr, "dB", domain, tx, rx, q.psnr)
        row(f"{kind}_ssim", q.mean_ssim, "1", domain, tx, rx, q.ssim)

    for d in names:
        quality_rows("domain", ctx.quality(variant.local(d), ctx.split(f"{d}_test")), d, d, d)
    for (a, b), q in ctx.pair_qualities(variant, pairs, base_test).items():
        quality_rows("pair", q, "base", a, b)
        row("misalignment", misalignment(reference, q.mean_psnr), "dB", domain="base", tx=a, rx=b)
    for (a, b), q in ctx.pair_qualities(variant, pairs, lambda a: ctx.split(f"{a}_test")).items():
        quality_rows("cross", q, a, a, b)
    if getattr((methods or active(ctx.params)).get(variant.method), "SWITCH_OFF_EXACT", False):
        exact = exact or ExactReference.of(ctx, base_test)
        row("switch_off_exact", float(switch_off_exact(ctx, variant, exact)), "1", domain="base")
    if variant.method == "pretrained":  # the paired-shift control: the same test images before the transform
        for d in names:
            quality_rows("source", ctx.quality(variant.local(d), ctx.split(f"{d}_test_source")), d, d, d)
    for d in names:
        nbytes = int(variant.memory_bytes(d))
        row("memory_bytes", nbytes, "B", domain=d)
        row("memory_cost", memory_cost_pct(nbytes, base_bytes), "%", domain=d)
    return rows


SUMMARY_METRICS = ("domain_psnr", "domain_ssim", "misalignment", "cross_psnr", "cross_ssim", "memory_cost")


def summarise(rows: list[dict], reference: float) -> dict:
    """Means over domains / pairs per method and sparsity: the DVC metrics."""
    out = {"reference_psnr": round(reference, 4)}
    keys = sorted({(r["method"], r["sparsity"]) for r in rows}, key=lambda k: (k[0], str(k[1])))
    for method, s in keys:
        name = method if s == "" else f"{method}_gamma_{s:g}"
        sel = [r for r in rows if r["method"] == method and r["sparsity"] == s]
        out[name] = {m: round(statistics.fmean(r["value"] for r in sel if r["metric"] == m), 6)
                     for m in SUMMARY_METRICS}
        out[name]["max_abs_misalignment"] = max(abs(r["value"]) for r in sel if r["metric"] == "misalignment")
    return out


@torch.no_grad()
def reconstructions(ctx: Context, variants: list[Variant], n: int) -> np.ndarray:
    """uint8 (domains, rows, n, 32, 32, 3): original, pretrained, sam (largest sparsity), tuning."""
    by = {(v.method, v.sparsity): v for v in variants}
    sam = by[("sam", max(ctx.params.adapt.sparsities))]
    chosen = [by[("pretrained", None)], sam, by[("tuning_copy", None)]]
    out = []
    for d in ctx.params.domains.names:
        x = ctx.split(f"{d}_test")[:n].to(ctx.device).float() / 255
        rows = [x]
        for v in chosen:
            g = torch.Generator(device=ctx.device).manual_seed(ctx.params.evaluate.noise_seed)
            rows.append(v.local(d)(x, g))
        out.append(torch.stack(rows).mul(255).round().clamp(0, 255).byte().permute(0, 1, 3, 4, 2).cpu().numpy())
    return np.stack(out)


def choices(params: Params, paths: Paths) -> dict[str, dict]:
    """Every method's grid point per (domain, sparsity), chosen on validation data (pipeline/selection.py)."""
    return {name: choose(params, paths, name, module) for name, module in active(params).items()}


def validation_rows(params: Params, paths: Paths) -> list[dict]:
    return [r for name, module in sorted(active(params).items()) for r in validation_table(params, paths, name, module)]




def evaluate_all(ctx: Context, per_image: dict[str, torch.Tensor] | None = None
                 ) -> tuple[list[dict], float, list[Variant]]:
    """Rows of every seed (the pretrained reference once, as seed 0) at the grid points chosen on
    validation data; the variants of seed 0."""
    pre = ctx.pretrained()
    reference = ctx.psnr(ctx.link(pre, pre), ctx.split("base_test"))
    chosen = choices(ctx.params, ctx.paths)
    exact, methods = ExactReference.of(ctx, ctx.split("base_test")), active(ctx.params)
    rows, first = [], None
    for seed in range(ctx.params.adapt.seeds):
        sctx = dataclasses.replace(ctx, trial=Trial(seed), chosen=chosen)
        variants = all_variants(sctx, reference=seed == 0)
        for v in variants:
            rows += measure(sctx, v, reference, fp32_bytes(pre), per_image, exact, methods)
        first = first or variants
    return rows, reference, first
