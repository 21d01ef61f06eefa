"""Stage ``evaluate``: domain PSNR, misalignment (full A x B matrices) and memory cost of every
method, variant and sparsity, as defined in SPEC.md, against the pretrained reference.

Writes one tidy CSV (a row per measurement), a DVC metrics summary, and sample reconstructions
for the report's figure. Every link is evaluated with the same noise realisation.
"""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import torch

from ..config import Params
from ..methods import Context, Variant, registry
from ..metrics import FIELDS, fp32_bytes, memory_cost_pct, misalignment, ordered_pairs
from ..paths import Paths
from ..selection import Trial, choose, validation_table
from ..tracking import Tracker
from ..train import setup_runtime
from . import provenance, run, write_json, write_npy, write_rows


def all_variants(ctx: Context, reference: bool = True) -> list[Variant]:
    """The pretrained reference (``reference``), then every method's variants at every sparsity it uses,
    for the context's seed at the grid points chosen on validation data."""
    pre = ctx.pretrained()
    out = [Variant("pretrained", None, lambda d: ctx.self_link(pre), None, lambda d: 0,
                   transmit=lambda a: ctx.channel(pre), receive=lambda a, b: ctx.receiver(pre))] if reference else []
    for name, module in sorted(registry().items()):
        for s in (ctx.params.adapt.sparsities if module.USES_SPARSITY else (None,)):
            out += module.variants(ctx, s)
    return out


def measure(ctx: Context, variant: Variant, reference: float, base_bytes: int) -> list[dict]:
    """Rows for one variant: domain PSNR, pair PSNR and misalignment per ordered pair, memory."""
    names, base_test = list(ctx.params.domains.names), ctx.split("base_test")
    rows = []

    def row(metric, value, unit, domain="", tx="", rx=""):
        rows.append({"method": variant.method, "sparsity": "" if variant.sparsity is None else variant.sparsity,
                     "seed": ctx.trial.seed, "metric": metric, "domain": domain, "tx": tx, "rx": rx, "value": value, "unit": unit})

    for d in names:
        row("domain_psnr", ctx.psnr(variant.local(d), ctx.split(f"{d}_test")), "dB", domain=d, tx=d, rx=d)
    for (a, b), pair in ctx.pair_psnrs(variant, ordered_pairs(names), base_test).items():
        row("pair_psnr", pair, "dB", domain="base", tx=a, rx=b)
        row("misalignment", misalignment(reference, pair), "dB", domain="base", tx=a, rx=b)
    if variant.method == "pretrained":  # the paired-shift control: the same test images before the transform
        for d in names:
            row("source_psnr", ctx.psnr(variant.local(d), ctx.split(f"{d}_test_source")), "dB", domain=d, tx=d, rx=d)
    for d in names:
        nbytes = int(variant.memory_bytes(d))
        row("memory_bytes", nbytes, "B", domain=d)
        row("memory_cost", memory_cost_pct(nbytes, base_bytes), "%", domain=d)
    return rows


def summarise(rows: list[dict], reference: float) -> dict:
    """Means over domains / pairs per method and sparsity: the DVC metrics."""
    out = {"reference_psnr": round(reference, 4)}
    keys = sorted({(r["method"], r["sparsity"]) for r in rows}, key=lambda k: (k[0], str(k[1])))
    for method, s in keys:
        name = method if s == "" else f"{method}_gamma_{s:g}"
        sel = [r for r in rows if r["method"] == method and r["sparsity"] == s]
        out[name] = {m: round(statistics.fmean(r["value"] for r in sel if r["metric"] == m), 6)
                     for m in ("domain_psnr", "misalignment", "memory_cost")}
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


def write_csv(path, rows: list[dict]) -> None:
    write_rows(path, [{**r, "value": f"{r['value']:.6f}" if isinstance(r["value"], float) else r["value"]}
                      for r in rows], FIELDS)


def choices(params: Params, paths: Paths) -> dict[str, dict]:
    """Every method's grid point per (domain, sparsity), chosen on validation data (pipeline/selection.py)."""
    return {name: choose(params, paths, name, module) for name, module in registry().items()}


def validation_rows(params: Params, paths: Paths) -> list[dict]:
    return [r for name, module in sorted(registry().items()) for r in validation_table(params, paths, name, module)]


VALIDATION_FIELDS = ["method", "domain", "sparsity", "point", "setting", "val_psnr", "chosen"]


def evaluate_all(ctx: Context) -> tuple[list[dict], float, list[Variant]]:
    """Rows of every seed (the pretrained reference once, as seed 0); the variants of seed 0."""
    pre = ctx.pretrained()
    reference = ctx.psnr(ctx.link(pre, pre), ctx.split("base_test"))
    chosen = choices(ctx.params, ctx.paths)
    rows, first = [], None
    for seed in range(ctx.params.adapt.seeds):
        sctx = dataclasses.replace(ctx, trial=Trial(seed), chosen=chosen)
        variants = all_variants(sctx, reference=seed == 0)
        for v in variants:
            rows += measure(sctx, v, reference, fp32_bytes(pre))
        first = first or variants
    return rows, reference, first


def main(params: Params, paths: Paths) -> None:
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"))
    with Tracker(params, paths, "evaluate") as tracker:
        rows, reference, variants = evaluate_all(ctx)
        write_csv(paths.evaluation_csv, rows)
        write_rows(paths.validation_csv, validation_rows(params, paths), VALIDATION_FIELDS)
        summary = summarise(rows, reference)
        write_json(paths.evaluate_json, {**summary, "provenance": provenance(params, paths, tracker.run_id)})
        write_npy(paths.reconstructions, reconstructions(ctx, variants, params.evaluate.reconstructions))
        for name, vals in summary.items():
            if isinstance(vals, dict):
                tracker.log_metrics({f"{name}.{k}": v for k, v in vals.items()})
        tracker.log_artifact(paths.evaluation_csv, "metrics")
        tracker.log_artifact(paths.validation_csv, "metrics")
    print(f"evaluate: {len(rows)} measurements, reference PSNR {reference:.2f} dB")


if __name__ == "__main__":
    run(main)
