"""tuning: every weight fine-tuned on the local domain (the best local quality).

Two ways back to alignment, both reported: re-tune on base data (``tuning_retune``; what is left of
the domain PSNR afterwards is the forgetting), or keep a second full copy of the pretrained model
(``tuning_copy``; memory 100 %). The tuned agents talking directly are the ``no_alignment``
reference.
"""
from __future__ import annotations

import time

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


def finetune(ctx: Context, model, images, epochs: int, tag: str, key_parts) -> list[dict]:
    """Adam on every weight, MSE through the channel; checkpointed like every training loop."""
    p = ctx.params
    opt = torch.optim.Adam(model.parameters(), lr=p.tuning.lr)
    key = fingerprint(NAME, tag, key_parts, base_fingerprint(model), data_fingerprint(images),
                      p.model_dump(include={"adapt", "tuning", "train", "model", "domains"}))
    return fit(model, opt, images, lambda x, g: model(x, g), epochs=epochs, batch_size=p.train.batch_size,
               seed=p.adapt.seed, device=ctx.device, checkpoint=ctx.checkpoint(tag),
               key=key, desc=f"tuning {tag}")


def adapt(ctx: Context, domain: str, sparsity: None, out, tracker) -> dict:
    p = ctx.params
    test_x = ctx.split(f"{domain}_test")
    model = ctx.pretrained().requires_grad_(True)
    start = time.perf_counter()
    curve = finetune(ctx, model, ctx.split(f"{domain}_train"), p.adapt.epochs, domain, domain)
    save_model(model.cpu(), out.artifact(), {"method": NAME, "domain": domain})
    model.to(ctx.device).eval()
    local = ctx.psnr(ctx.self_link(model), test_x)
    val = ctx.psnr(ctx.self_link(model), ctx.split(f"{domain}_val"))
    # Way back (a): fine-tune on as many base images as the domain had.
    retune_x = ctx.split("base_train")[:p.domains.n_train]
    model.train()
    retune_curve = finetune(ctx, model, retune_x, p.tuning.retune_epochs, f"{domain}-retune", domain)
    save_model(model.cpu(), out.artifact(RETUNED), {"method": NAME, "domain": domain})
    model.to(ctx.device).eval()
    after = ctx.psnr(ctx.self_link(model), test_x)
    seconds = time.perf_counter() - start
    tracker.log_history(curve)
    tracker.log_history(retune_curve, prefix="retune_")
    base = ctx.pretrained()
    nbytes = copy_bytes(base)
    return {"method": NAME, "domain": domain, "sparsity": None, "domain_psnr": local,
            "memory_bytes": nbytes, "memory_cost_pct": memory_cost_pct(nbytes, fp32_bytes(base)),
            "details": {"val_psnr": val, "domain_psnr_after_retune": after, "forgetting_db": local - after,
                        "train_seconds": seconds, "curve": curve, "retune_curve": retune_curve}}


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
