"""base_control: the tuning budget spent on base images, evaluated on every domain (a control).

The pretrained model fine-tuned exactly as ``tuning`` fine-tunes it (all weights, Adam,
``tuning.lr``, ``adapt.epochs``, ``adapt.seed``; the same ``tuning.finetune``), but on base images
(``base_train[:domains.n_train]``, as many as a domain has) instead of a domain's: what a method
gains over the pretrained model beyond this control is adaptation, not just more training.

One model for all domains: it never sees a domain, so ``PER_DOMAIN = False`` and the adapt stage runs
one cell, for the first of ``domains.names``; every domain's agent in ``variants`` is that one model
(its cell's ``details`` hold the test PSNR of every domain). The variant: ``local(d)`` is the control
model's own link on d's test images, ``pair`` the control Tx -> control Rx (the unadapted agent is
the pretrained model), memory 0 -- it is a control, not an agent anyone deploys (``notes`` say so;
the cell's ``memory_bytes`` gives the bytes of the full copy it stores, as ``tuning`` does).
"""
from __future__ import annotations

import time

from ..metrics import fp32_bytes, memory_cost_pct
from ..train import load_model, save_model
from . import BASE_AGENT, Context, Variant
from .tuning import copy_bytes, finetune

NAME = "base_control"
USES_SPARSITY = False
PER_DOMAIN = False  # its result does not depend on the domain: one cell, for the first domain
PARAMS = ("model", "train", "adapt.epochs", "adapt.seed", "tuning.lr", "domains.n_train", "evaluate.noise_seed",
          "evaluate.snr_db")


def control_path(ctx: Context):
    """The one control model: the cell of the first domain."""
    return ctx.cell(NAME, ctx.params.domains.names[0]).artifact()


def adapt(ctx: Context, domain: str, sparsity: None, out, tracker) -> dict:
    p = ctx.params
    model = ctx.pretrained().requires_grad_(True)
    images = ctx.split("base_train")[:p.domains.n_train]
    start = time.perf_counter()
    curve = finetune(ctx, model, images, p.adapt.epochs, "base-control", NAME)
    seconds = time.perf_counter() - start
    tracker.log_history(curve)
    save_model(model.cpu(), out.artifact(), {"method": NAME})
    control = load_model(p, out.artifact()).to(ctx.device).eval()  # evaluate what was stored
    by_domain = {d: ctx.psnr(ctx.self_link(control), ctx.split(f"{d}_test")) for d in p.domains.names}
    base = ctx.pretrained()
    nbytes = copy_bytes(base)
    return {"method": NAME, "domain": domain, "sparsity": None, "domain_psnr": by_domain[domain],
            "memory_bytes": nbytes, "memory_cost_pct": memory_cost_pct(nbytes, fp32_bytes(base)),
            "details": {"val_psnr": ctx.psnr(ctx.self_link(control), ctx.split("base_val")),
                        "domain_psnr_by_domain": by_domain,
                        "base_test_psnr": ctx.psnr(ctx.self_link(control), ctx.split("base_test")),
                        "trained_on": f"base_train[:{p.domains.n_train}]", "one_cell_for_every_domain": True,
                        "train_seconds": seconds, "curve": curve}}


def variants(ctx: Context, sparsity: None) -> list[Variant]:
    control = load_model(ctx.params, control_path(ctx)).to(ctx.device).eval()
    pre = ctx.pretrained()

    def agent(a: str):
        return pre if a == BASE_AGENT else control

    return [Variant(NAME, None, lambda d: ctx.self_link(control), None, lambda d: 0,
                    notes={"control": "the tuning budget spent on base images: not a deployable agent, memory not "
                                      "charged (0); one model serves every domain (one cell, the first domain)"},
                    transmit=lambda a: ctx.channel(agent(a)), receive=lambda a, b: ctx.receiver(agent(b)))]
