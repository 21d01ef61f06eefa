"""tuning: every weight fine-tuned on the local domain (the best local quality).

Two ways back to alignment, both reported: re-tune on base data (``tuning_retune``; what is left of
the domain PSNR afterwards is the forgetting), or keep a second full copy of the pretrained model
(``tuning_copy``; memory 100 %). The tuned agents talking directly are the ``no_alignment``
reference.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from pydantic import Field

from ..config import Block, Epochs, LearningRate
from ..fingerprint import base_fingerprint
from ..metrics import fp32_bytes, memory_cost_pct, tensor_bytes
from ..train import data_fingerprint, fingerprint, fit, load_model, save_model
from . import BASE_AGENT, Context, Variant

NAME = "tuning"
USES_SPARSITY = False
PARAMS = ("model", "train", "adapt.epochs", "adapt.seed", "tuning", "domains.n_train", "evaluate.noise_seed",
          "evaluate.snr_db")


class Config(Block):
    """tuning: every weight fine-tuned on the domain (``adapt.epochs``, ``adapt.seed``)."""
    lr: LearningRate = Field(description="Adam learning rate of every weight")
    retune_epochs: Epochs = Field(description="tuning_retune: epochs re-tuning on base images after the domain")


RETUNED = "retuned"  # the variant name of the re-tuned agent's file


def tuned_path(ctx: Context, domain: str, retuned: bool = False):
    """Where the adapt stage had this domain's tuned (or re-tuned) agent stored."""
    return ctx.cell(NAME, domain).artifact(RETUNED if retuned else "")


def copy_bytes(model: torch.nn.Module) -> int:
    """A second full copy of the pretrained model, counted from its real tensors."""
    return tensor_bytes(model.state_dict().values())


def finetune_run(ctx: Context, model, images, epochs: int, tag: str, key_parts) -> dict:
    """The keyword arguments of the ``fit`` call that fine-tunes ``model`` (less ``forward``, the model's
    own): Adam on every weight, MSE through the channel, checkpointed like every training loop."""
    p = ctx.params
    opt = torch.optim.Adam(model.parameters(), lr=p.tuning.lr)
    key = fingerprint(NAME, tag, key_parts, base_fingerprint(model), data_fingerprint(images),
                      p.model_dump(include={"adapt", "tuning", "train", "model", "domains"}))
    return dict(module=model, optimizer=opt, images=images, epochs=epochs, batch_size=p.train.batch_size,
                seed=p.adapt.seed, device=ctx.device, checkpoint=ctx.checkpoint(tag), key=key, desc=f"tuning {tag}")


def fit_each(runs: list[dict]) -> list[list[dict]]:
    """One ``fit`` after another (``pipeline.batched.fit_grouped`` trains the same runs in stacked steps)."""
    return [fit(**r, forward=r["module"]) for r in runs]


def finetune(ctx: Context, model, images, epochs: int, tag: str, key_parts) -> list[dict]:
    return fit_each([finetune_run(ctx, model, images, epochs, tag, key_parts)])[0]


def adapt(ctx: Context, domain: str, sparsity: None, out, tracker) -> dict:
    return adapt_cells([ctx], [domain], [sparsity], [out], [tracker])[0]


def adapt_cells(ctxs: list[Context], domains: list[str], sparsities: list[None], outs: list, trackers: list,
                fit_all: Callable[[list[dict]], list[list[dict]]] = fit_each) -> list[dict]:
    """``adapt`` of several cells (``sparsities``: None each: tuning has no budget), their two trainings each
    done by ``fit_all`` (a list of ``fit`` calls' arguments -> their histories); ``train_seconds`` is each
    cell's share of the time."""
    cells = list(zip(ctxs, domains, outs, strict=True))
    models = [ctx.pretrained().requires_grad_(True) for ctx in ctxs]
    start = time.perf_counter()
    curves = fit_all([finetune_run(ctx, m, ctx.split(f"{d}_train"), ctx.params.adapt.epochs, d, d)
                      for (ctx, d, _), m in zip(cells, models)])
    local, val = [], []
    for (ctx, d, out), model in zip(cells, models):
        save_model(model.cpu(), out.artifact(), {"method": NAME, "domain": d})
        model.to(ctx.device).eval()
        local.append(ctx.psnr(ctx.self_link(model), ctx.split(f"{d}_test")))
        val.append(ctx.psnr(ctx.self_link(model), ctx.split(f"{d}_val")))
        model.train()
    # Way back (a): fine-tune on as many base images as the domain had.
    retune_curves = fit_all([finetune_run(ctx, m, ctx.split("base_train")[:ctx.params.domains.n_train],
                                          ctx.params.tuning.retune_epochs, f"{d}-retune", d)
                             for (ctx, d, _), m in zip(cells, models)])
    after = []
    for (ctx, d, out), model in zip(cells, models):
        save_model(model.cpu(), out.artifact(RETUNED), {"method": NAME, "domain": d})
        model.to(ctx.device).eval()
        after.append(ctx.psnr(ctx.self_link(model), ctx.split(f"{d}_test")))
    seconds = (time.perf_counter() - start) / len(cells)
    results = []
    for i, ((ctx, d, _), tracker) in enumerate(zip(cells, trackers, strict=True)):
        tracker.log_history(curves[i])
        tracker.log_history(retune_curves[i], prefix="retune_")
        base = ctx.pretrained()
        nbytes = copy_bytes(base)
        results.append({"method": NAME, "domain": d, "sparsity": None, "domain_psnr": local[i],
                        "memory_bytes": nbytes, "memory_cost_pct": memory_cost_pct(nbytes, fp32_bytes(base)),
                        "details": {"val_psnr": val[i], "domain_psnr_after_retune": after[i],
                                    "forgetting_db": local[i] - after[i], "train_seconds": seconds,
                                    "curve": curves[i], "retune_curve": retune_curves[i]}})
    return results


def tuned_models(ctx: Context, retuned: bool = False) -> dict:
    """Every domain's tuned (or re-tuned) agent, plus the unadapted ``BASE_AGENT``."""
    models = {d: load_model(ctx.params, tuned_path(ctx, d, retuned)).to(ctx.device).eval()
              for d in ctx.params.domains.names}
    return {BASE_AGENT: ctx.pretrained(), **models}


def variants(ctx: Context, sparsity: None) -> list[Variant]:
    tuned, retuned, base = tuned_models(ctx), tuned_models(ctx, retuned=True), ctx.pretrained()
    nbytes = copy_bytes(base)
    return [
        Variant("tuning_retune", None, lambda d: ctx.self_link(retuned[d]), None, lambda d: 0,
                transmit=lambda a: ctx.channel(retuned[a]), receive=lambda a, b: ctx.receiver(retuned[b])),
        Variant("tuning_copy", None, lambda d: ctx.self_link(tuned[d]), None, lambda d: nbytes,
                transmit=lambda a: ctx.channel(base), receive=lambda a, b: ctx.receiver(base)),
        Variant("no_alignment", None, lambda d: ctx.self_link(tuned[d]), None, lambda d: 0,
                transmit=lambda a: ctx.channel(tuned[a]), receive=lambda a, b: ctx.receiver(tuned[b])),
    ]
