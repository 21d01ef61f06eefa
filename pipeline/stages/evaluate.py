"""Stage ``evaluate``: domain PSNR, misalignment (full A x B matrices) and memory cost of every
method, variant and sparsity, as defined in SPEC.md, against the pretrained reference.

Writes one tidy CSV (a row per measurement), a DVC metrics summary, and sample reconstructions
for the report's figure. Every link is evaluated with the same noise realisation.
"""
from __future__ import annotations

import statistics

import numpy as np
import torch

from ..config import Params
from ..methods import Context, Variant, registry
from ..metrics import FIELDS, fp32_bytes, memory_cost_pct, misalignment, ordered_pairs
from ..paths import Paths
from ..tracking import Tracker
from ..train import setup_runtime
from . import provenance, run, write_json, write_npy, write_rows


def all_variants(ctx: Context) -> list[Variant]:
    """The pretrained reference, then every method's variants at every sparsity it uses."""
    pre = ctx.pretrained()
    out = [Variant("pretrained", None, lambda d: ctx.self_link(pre), None, lambda d: 0,
                   transmit=lambda a: ctx.channel(pre), receive=lambda a, b: ctx.receiver(pre))]
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
                     "metric": metric, "domain": domain, "tx": tx, "rx": rx, "value": value, "unit": unit})

    for d in names:
        row("domain_psnr", ctx.psnr(variant.local(d), ctx.split(f"{d}_test")), "dB", domain=d, tx=d, rx=d)
    for (a, b), pair in ctx.pair_psnrs(variant, ordered_pairs(names), base_test).items():
        row("pair_psnr", pair, "dB", domain="base", tx=a, rx=b)
        row("misalignment", misalignment(reference, pair), "dB", domain="base", tx=a, rx=b)
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


def evaluate_all(ctx: Context) -> tuple[list[dict], float, list[Variant]]:
    pre = ctx.pretrained()
    reference = ctx.psnr(ctx.link(pre, pre), ctx.split("base_test"))
    variants = all_variants(ctx)
    rows = []
    for v in variants:
        rows += measure(ctx, v, reference, fp32_bytes(pre))
    return rows, reference, variants


def main(params: Params, paths: Paths) -> None:
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"))
    with Tracker(params, paths, "evaluate") as tracker:
        rows, reference, variants = evaluate_all(ctx)
        write_csv(paths.evaluation_csv, rows)
        summary = summarise(rows, reference)
        write_json(paths.evaluate_json, {**summary, "provenance": provenance(params, paths, tracker.run_id)})
        write_npy(paths.reconstructions, reconstructions(ctx, variants, params.evaluate.reconstructions))
        for name, vals in summary.items():
            if isinstance(vals, dict):
                tracker.log_metrics({f"{name}.{k}": v for k, v in vals.items()})
        tracker.log_artifact(paths.evaluation_csv, "metrics")
    print(f"evaluate: {len(rows)} measurements, reference PSNR {reference:.2f} dB")


if __name__ == "__main__":
    run(main)
