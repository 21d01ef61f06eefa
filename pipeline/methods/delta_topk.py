"""delta_topk: full fine-tuning, then per layer the top-k of |W_tuned - W0| under sam's budget.

The tuned agent is the ``tuning`` method's (``NEEDS = ("tuning",)``: all weights fine-tuned on the
domain, Adam, ``tuning.lr``, ``adapt.epochs``). Of each adaptable layer's weight delta it keeps the
k entries of largest magnitude, with k = sam's layer budget at this γ (``pipeline.sam.layer_budgets``,
rule ``adapt.allocation``): a one-shot sparse delta. Biases and PReLU slopes stay W0, as in sam
(the tuned agent's changes to them are dropped). With ``delta_topk.retrain_epochs`` > 0 the kept
values are then re-trained on the fixed mask (Adam, ``delta_topk.lr``, ``adapt.seed``).

Stored in sam's own file format (``save_sam``: indices + fp16 values + header, the base fingerprint)
and served exactly as sam is (``install_sam``, switched off by ``set_sam_enabled``: W0 bit for bit),
so its bytes are sam's at the same γ up to the index encoding of the kept positions.
"""
from __future__ import annotations

import time
from typing import Annotated

import torch
from pydantic import Field

from ..config import Block, LearningRate
from ..fingerprint import base_fingerprint
from ..sam import (SAMState, attach_sam, install_sam, layer_budgets, load_sam, memory_cost, sam_layers, sam_state,
                   save_sam, set_sam_enabled)
from ..train import data_fingerprint, fingerprint, fit, load_model
from . import BASE_AGENT, Context, Variant
from .sam import empty_state
from .tuning import tuned_path

NAME = "delta_topk"
USES_SPARSITY = True
SWITCH_OFF_EXACT = True  # switched off, every agent computes with W0 bit for bit (claim ZF checks it)
NEEDS = ("tuning",)  # its cells read the domain's tuned agent (the adapt_tuning stage's outputs)
PARAMS = ("model", "train", "adapt.allocation", "adapt.seed", "delta_topk", "evaluate.noise_seed",
          "evaluate.snr_db")


class Config(Block):
    """delta_topk: the top-k of |W_tuned - W0| per layer under sam's budget, optionally re-trained on that mask."""
    retrain_epochs: Annotated[int, Field(ge=0, le=10_000)] = Field(
        description="0: one-shot sparse delta; > 0: epochs re-training the kept values on the fixed mask")
    lr: LearningRate = Field(description="Adam learning rate of the kept values when retrain_epochs > 0")


def topk_delta(base, tuned, budgets: dict[str, int]) -> SAMState:
    """Per layer the ``budgets[layer]`` entries of largest |W_tuned - W0| (fp32 deltas, sorted indices)."""
    state = SAMState({}, {}, {})
    for n, k in budgets.items():
        w0, wt = base.get_submodule(n).weight.detach(), tuned.get_submodule(n).weight.detach()
        delta = (wt - w0).flatten()
        idx = delta.abs().topk(k).indices.sort().values
        state.indices[n], state.values[n], state.shapes[n] = idx, delta[idx].clone(), tuple(w0.shape)
    return state


def retrain(ctx: Context, state: SAMState, domain: str, sparsity: float, tag: str) -> tuple[SAMState, list[dict]]:
    """Re-train the kept values on the fixed mask of ``state`` (scores frozen: the mask cannot move)."""
    p = ctx.params
    model = attach_sam(ctx.pretrained(), sparsity, p.adapt.allocation)
    for n, m in sam_layers(model).items():
        scores = torch.zeros_like(m.scores).flatten()
        scores[state.indices[n].to(scores.device)] = 1.0
        m.scores.data = scores.view_as(m.scores)
        m.scores.requires_grad_(False)
        values = torch.zeros_like(m.values).flatten()
        values[state.indices[n].to(values.device)] = state.values[n].to(values.device, values.dtype)
        m.values.data = values.view_as(m.values)
    opt = torch.optim.Adam([m.values for m in sam_layers(model).values()], lr=p.delta_topk.lr)
    train_x = ctx.split(f"{domain}_train")
    key = fingerprint(NAME, tag, base_fingerprint(model), data_fingerprint(train_x),
                      data_fingerprint(*(t.detach().cpu() for n in sorted(state.indices)
                                         for t in (state.indices[n], state.values[n]))),
                      p.model_dump(include={"adapt", "delta_topk", "train", "model"}))
    curve = fit(model, opt, train_x, lambda x, g: model(x, g), epochs=p.delta_topk.retrain_epochs,
                batch_size=p.train.batch_size, seed=p.adapt.seed, device=ctx.device,
                checkpoint=ctx.checkpoint(tag), key=key, desc=f"delta_topk {tag}")
    out = sam_state(model)
    for n in state.indices:  # the mask is what was chosen, entry for entry
        assert torch.equal(out.indices[n].cpu(), state.indices[n].cpu()), n
    return out, curve


def delta_path(ctx: Context, domain: str, sparsity: float):
    return ctx.cell(NAME, domain, sparsity).artifact()


def adapt(ctx: Context, domain: str, sparsity: float, out, tracker) -> dict:
    p = ctx.params
    base = ctx.pretrained()
    tuned = load_model(p, tuned_path(ctx, domain)).to(ctx.device).eval()
    budgets = layer_budgets(base, sparsity, p.adapt.allocation)
    start = time.perf_counter()
    state = topk_delta(base, tuned, budgets)
    total = sum(float((tuned.get_submodule(n).weight - base.get_submodule(n).weight).detach().pow(2).sum())
                for n in budgets)
    kept_energy = sum(float(v.pow(2).sum()) for v in state.values.values())
    curve = []
    if p.delta_topk.retrain_epochs > 0:
        state, curve = retrain(ctx, state, domain, sparsity, out.name)
        tracker.log_history(curve)
    state.values = {n: v.detach().cpu().to(torch.float16) for n, v in state.values.items()}
    state.indices = {n: i.detach().cpu() for n, i in state.indices.items()}
    path = out.artifact()
    save_sam(path, state, sparsity=sparsity, allocation=p.adapt.allocation, base_fingerprint=base_fingerprint(base),
             extra_meta={"domain": domain, "method": NAME})
    served = install_sam(ctx.pretrained(), load_sam(path, ctx.pretrained()))  # what was stored, fp16 values
    cost = memory_cost(path, served)
    return {"method": NAME, "domain": domain, "sparsity": sparsity,
            "domain_psnr": ctx.psnr(ctx.self_link(served), ctx.split(f"{domain}_test")),
            "memory_bytes": int(cost["bytes"]), "memory_cost_pct": cost["pct"],
            "details": {"val_psnr": ctx.psnr(ctx.self_link(served), ctx.split(f"{domain}_val")),
                        "kept_per_layer": budgets, "kept_total": sum(budgets.values()),
                        "delta_energy_kept": kept_energy / total if total > 0 else 0.0,
                        "retrain_epochs": p.delta_topk.retrain_epochs, "seconds": time.perf_counter() - start,
                        "curve": curve}}


def variants(ctx: Context, sparsity: float) -> list[Variant]:
    """As sam's: one base model, each agent's sparse delta hot-swapped in, switched off to talk."""
    model = ctx.pretrained()
    states = {d: load_sam(delta_path(ctx, d, sparsity), model) for d in ctx.params.domains.names}
    install_sam(model, next(iter(states.values())))
    states[BASE_AGENT] = empty_state(model)

    def use(agent: str, enabled: bool):
        install_sam(model, states[agent])
        set_sam_enabled(model, enabled)
        return model

    def local(d):
        use(d, True)
        return ctx.self_link(model)

    def transmit(a):
        return lambda x, g: ctx.channel(use(a, False))(x, g)

    def receive(a, b):
        return lambda y: use(b, False).decoder(y)

    return [Variant(NAME, sparsity, local, None, lambda d: delta_path(ctx, d, sparsity).stat().st_size,
                    notes={"bytes": "sam's file format (indices + fp16 values + header)"},
                    transmit=transmit, receive=receive)]
