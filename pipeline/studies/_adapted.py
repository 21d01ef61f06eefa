"""sam and full tuning adapted as the main run adapts them, on another base or with other params (the
strength and length studies): at the main grid's chosen points, measured as their adapt cells measure
the domain PSNR; the main run's cells are read, never retrained, where the study's setting is the main run's.

Also the store of extra bases: a base pretrained with the recipe for some seed and budget is kept by its
key (recipe, data, the pretraining code) in ``.cells/<run>/pretrained_bases/``, outside every DVC output,
so the budget and strength studies train each (seed, budget) once, whichever runs first.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import sources
from ..config import parse
from ..evaluation import choices
from ..methods import Context
from ..methods.sam import train_sam
from ..methods.tuning import finetune
from ..pretraining import base_key, train_base
from ..sam import install_sam, sam_state
from ..selection import Trial, grid_points, trial_params
from ..train import fingerprint, load_model, save_model

if TYPE_CHECKING:
    from ..config import Params

METHODS = ("sam", "tuning")  # sam at ablate.sparsity; tuning: its local quality (tuning_copy's domain PSNR)
BASE_STORE = "pretrained_bases"  # the folder of .cells/<run>/ holding the studies' extra bases


@dataclasses.dataclass
class OnBase(Context):
    """A context whose pretrained model is the file ``base`` (None: the pipeline's own base)."""
    base: Path | None = None

    def pretrained(self):
        if self.base is None:
            return super().pretrained()
        return load_model(self.params, self.base).to(self.device).eval()


def stored_base(ctx: Context, seed: int, epochs: int, desc: str) -> Path:
    """The file of the base pretrained ``epochs`` epochs from ``seed`` with the recipe (``train_base``),
    trained here only when the store lacks it (the budget study's key: either study reuses the other's)."""
    train_x = ctx.split("base_train")
    key = base_key(ctx.params, ("budget", seed, epochs), train_x)
    path = ctx.paths.cell_store(BASE_STORE) / (f"seed{seed}-{epochs}ep-"
                                               + fingerprint(key, sources.digest("pipeline.pretraining"))
                                               + ".safetensors")
    if not path.is_file():
        model, _ = train_base(ctx.params, train_x, seed=seed, epochs=epochs, device=ctx.device,
                              checkpoint=ctx.checkpoint(f"{desc}-seed{seed}-{epochs}"), key=key, desc=desc)
        save_model(model.cpu(), path, {"profile": ctx.params.profile, "source": ctx.params.data.source,
                                       "pretrain_seed": str(seed), "pretrain_epochs": str(epochs)})
    return path


def sparsity_of(params: Params, method: str) -> float | None:
    return params.ablate.sparsity if method == "sam" else None


def chosen_points(ctx: Context) -> dict[tuple[str, str], int]:
    """(method, domain) -> the main grid's point chosen on validation data (the studies' checks keep
    ablate.sparsity among adapt.sparsities, so every cell asked for is on the grid)."""
    chosen = choices(ctx.params, ctx.paths)
    return {(m, d): chosen[m][(d, sparsity_of(ctx.params, m))]
            for m in METHODS for d in ctx.params.ablate.domains}


def cell_psnr(ctx: Context, method: str, domain: str, seed: int, point: int) -> float:
    """The domain PSNR the adapt stage measured for this cell (the main base, the main params)."""
    cell = ctx.paths.cell(method, domain, sparsity_of(ctx.params, method), Trial(seed, point).tag)
    return float(json.loads(cell.metrics.read_text())["domain_psnr"])


def trial_context(ctx: Context, method: str, point: int, seed: int, epochs: int | None = None) -> Context:
    """``ctx`` with the params of one trial of ``method``'s grid (point, seed), and optionally
    ``adapt.epochs`` set to ``epochs``."""
    params = trial_params(ctx.params, grid_points(ctx.params, method)[point], seed)
    return dataclasses.replace(ctx, params=with_epochs(params, epochs))


def with_epochs(params: Params, epochs: int | None) -> Params:
    if epochs is None or epochs == params.adapt.epochs:
        return params
    tree = params.model_dump(mode="json")
    tree["adapt"]["epochs"] = epochs
    return parse(tree)


def adapted_psnr(ctx: Context, method: str, domain: str, tag: str) -> float:
    """Domain test PSNR of ``method`` adapted afresh to ``domain`` on ``ctx``'s pretrained model with
    ``ctx``'s params, measured as its adapt cell measures it: sam's stored (fp16) state installed, the
    tuned agent's own link (tuning_copy's domain PSNR)."""
    p = ctx.params
    test = ctx.split(f"{domain}_test")
    if method == "sam":
        trained = train_sam(ctx, domain, p.ablate.sparsity, allocation=p.adapt.allocation, tag=tag)
        return ctx.psnr(ctx.self_link(install_sam(trained["model"], sam_state(trained["model"]))), test)
    model = ctx.pretrained().requires_grad_(True)
    finetune(ctx, model, ctx.split(f"{domain}_train"), p.adapt.epochs, tag, domain)
    return ctx.psnr(ctx.self_link(model.eval()), test)
