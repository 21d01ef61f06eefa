"""Sam trained with a study's settings at the main grid's points (``search.sam``), chosen on validation
PSNR as in the main comparison: the allocation, mask and sparsity studies' rows."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import torch

from ..methods import Context, registry
from ..methods.sam import sam_path, train_sam
from ..sam import install_sam, load_sam, sam_state
from ..selection import Trial, available, grid_points, trial_params


def sam_at(ctx: Context, domain: str, sparsity: float, allocation: str, mask: str, h: int, point: dict):
    """The stored (fp16) SAM of seed 0 at sam's grid point ``h`` and its churn: the ``adapt`` stage's
    cell file when the main grid trained exactly this one (same code, data, params), else trained here."""
    c = dataclasses.replace(ctx, params=trial_params(ctx.params, point, 0), trial=Trial(0, h), chosen={})
    p = c.params.adapt
    cell = c.cell("sam", domain, sparsity)
    if (allocation, mask) == (p.allocation, "score") and sparsity in p.sparsities and cell.metrics.is_file():
        done = json.loads(cell.metrics.read_text())
        served = install_sam(c.pretrained(), load_sam(sam_path(c, domain, sparsity), c.pretrained()))
        return c, served, done["details"]["mask_moved_fraction"]
    trained = train_sam(c, domain, sparsity, allocation=allocation, mask=mask,
                        tag=f"ablate-{domain}-{sparsity:g}-{allocation}-{mask}" + (f"-h{h}" if h else ""))
    return c, install_sam(trained["model"], sam_state(trained["model"])), trained["mask_moved"]


def train_eval(ctx: Context, domain: str, sparsity: float, allocation: str, mask: str
               ) -> tuple[dict, torch.Tensor]:
    """The row of a SAM trained with these settings at sam's grid point chosen on validation PSNR
    (``search.sam``; every variant gets the same grid, as in the main comparison), and the chosen
    SAM's per-image test PSNR. Test numbers are measured for the chosen point only."""
    best = None
    tried = []
    points = grid_points(ctx.params, "sam", ctx.paths)  # the main grid's, and its extension's for this cell
    mains = available(ctx.params, ctx.paths, "sam", registry()["sam"]).get((domain, sparsity))
    for h in mains or range(len(grid_points(ctx.params, "sam"))):
        point = points[h]
        c, model, moved = sam_at(ctx, domain, sparsity, allocation, mask, h, point)
        val = c.psnr(c.self_link(model), c.split(f"{domain}_val"))
        tried.append(f"{json.dumps(point, sort_keys=True) if point else '(as params)'}: {val:.3f}")
        if best is None or val > best[0]:
            best = (val, h, point, c, model, moved)
    val, h, point, c, model, moved = best
    test = c.quality(c.self_link(model), c.split(f"{domain}_test"), ssim=False)
    return ({"domain": domain, "sparsity": sparsity, "allocation": allocation, "mask": mask,
             "point": h, "val_psnr": val, "domain_psnr": test.mean_psnr, "mask_moved": moved,
             "validation": "; ".join(tried)}, test.psnr)


def rows(ctx: Context, settings) -> tuple[pd.DataFrame, dict]:
    """The study's rows, one per (domain, sparsity, allocation, mask), and their per-image test PSNR."""
    found, per_image = [], {}
    for d, s, alloc, m in settings:
        row, psnrs = train_eval(ctx, d, s, alloc, m)
        found.append(row)
        per_image[(d, s, alloc, m)] = psnrs
    return pd.DataFrame(found), per_image
