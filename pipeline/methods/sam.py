"""sam (ZFDA): a sparse additive modification per domain; switched off for everyone else."""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..fingerprint import base_fingerprint
from ..sam import (SAMState, attach_sam, install_sam, load_sam, memory_cost, sam_disabled, sam_layers, sam_parameters,
                   sam_state, save_sam, set_sam_enabled)
from ..train import data_fingerprint, fingerprint, fit
from ..paths import cell_name
from . import BASE_AGENT, Context, Variant

NAME = "sam"
USES_SPARSITY = True
SWITCH_OFF_EXACT = True  # switched off, every agent computes with W0 bit for bit (claim ZF checks it)
# The params a cell's result depends on (dvc.yaml's adapt_sam lists the same; tests/test_dvc.py checks).
PARAMS = ("model", "train", "adapt", "evaluate.noise_seed", "evaluate.snr_db")


def sam_path(ctx: Context, domain: str, sparsity: float):
    """Where the adapt stage had this domain's SAM stored."""
    return ctx.cell(NAME, domain, sparsity).artifact()


MASKS = ("score", "random", "fisher")


def _fix_mask(ctx: Context, model, images, mask: str, seed: int) -> None:
    """Ablation masks, chosen once and frozen: random scores, or a one-shot squared-gradient
    (Fisher-like, as in FISH-mask) score from a few batches of the domain's data."""
    layers = sam_layers(model)
    if mask == "random":
        g = torch.Generator().manual_seed(seed)
        for m in layers.values():
            m.scores.data = torch.rand(m.scores.shape, generator=g).to(m.scores.device)
    elif mask == "fisher":
        for m in layers.values():
            m.base.weight.requires_grad_(True)
        fisher = {n: torch.zeros_like(m.base.weight) for n, m in layers.items()}
        gen = torch.Generator(device=ctx.device).manual_seed(seed)
        with sam_disabled(model):  # the gradients of W0 itself
            for i in range(0, min(len(images), 8 * ctx.params.train.batch_size), ctx.params.train.batch_size):
                x = images[i:i + ctx.params.train.batch_size].to(ctx.device).float() / 255
                model.zero_grad(set_to_none=True)
                torch.nn.functional.mse_loss(model(x, gen), x).backward()
                for n, m in layers.items():
                    fisher[n] += m.base.weight.grad.pow(2)
        for n, m in layers.items():
            m.base.weight.requires_grad_(False)
            m.base.weight.grad = None
            m.scores.data = fisher[n]
    for m in layers.values():
        m.scores.requires_grad_(False)


class _Optimizers:
    """Several torch optimizers stepped as one (``fit`` needs zero_grad, step, param_groups and state dicts):
    the scores' SGD beside the values' Adam."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)


def make_optimizer(adapt, scores, values, train_scores: bool = True):
    """Values: Adam at ``adapt.value_lr``; scores (when ``train_scores``): ``adapt.score_optimizer`` at
    ``adapt.score_lr`` (Adam: one optimizer with two groups, the original recipe; SGD: plain, no momentum)."""
    groups = [{"params": values, "lr": adapt.value_lr}]
    if not train_scores:
        return torch.optim.Adam(groups)
    if adapt.score_optimizer == "adam":  # scores and values in separate groups with their own learning rates
        return torch.optim.Adam([{"params": scores, "lr": adapt.score_lr}, *groups])
    return _Optimizers(torch.optim.SGD(scores, lr=adapt.score_lr), torch.optim.Adam(groups))


def sam_run(ctx: Context, domain: str, sparsity: float, *, allocation: str, mask: str = "score",
            tag: str | None = None) -> tuple[dict, Callable[[list[dict], float], dict]]:
    """The keyword arguments of the ``fit`` call that trains a SAM on a fresh copy of the pretrained model
    (less ``forward``, the model's own), and ``finish(history, seconds)`` -> ``train_sam``'s result."""
    p = ctx.params
    model = ctx.pretrained()
    base_fp = base_fingerprint(model)
    attach_sam(model, sparsity, allocation, value_grad=p.adapt.value_grad)
    train_x, test_x = ctx.split(f"{domain}_train"), ctx.split(f"{domain}_test")
    if mask != "score":
        _fix_mask(ctx, model, train_x, mask, p.adapt.seed)
    scores, values = sam_parameters(model)
    opt = make_optimizer(p.adapt, scores, values, train_scores=mask == "score")
    layers = sam_layers(model)
    initial = {n: m.mask().clone() for n, m in layers.items()}
    before = {}  # the mask as the epoch starts (after a resume too: the checkpoint's)
    frozen_from = p.adapt.epochs - p.adapt.freeze_epochs

    def before_epoch(epoch):
        before.update({n: m.mask() for n, m in layers.items()})
        if epoch >= frozen_from:  # scores without gradient: neither optimizer touches them
            for s in scores:
                s.requires_grad_(False)

    def on_epoch(epoch, loss):
        model.eval()
        changed = _changed({n: m.mask() for n, m in layers.items()}, before)
        return {"domain_psnr": ctx.psnr(ctx.self_link(model), test_x), "mask_moved": _moved(model, initial),
                "mask_changed": changed}

    tag = tag or cell_name(domain, sparsity)
    key = fingerprint(NAME, tag, allocation, mask, base_fp, data_fingerprint(train_x, test_x),
                      p.model_dump(include={"adapt", "train", "model", "evaluate"}))
    run = dict(module=model, optimizer=opt, images=train_x, epochs=p.adapt.epochs, batch_size=p.train.batch_size,
               seed=p.adapt.seed, device=ctx.device, checkpoint=ctx.checkpoint(tag), key=key, desc=f"sam {tag}",
               on_epoch=on_epoch, before_epoch=before_epoch)

    def finish(history: list[dict], seconds: float) -> dict:
        return {"model": model, "base_fingerprint": base_fp, "history": history, "mask_moved": _moved(model, initial),
                "stored_mask_unseen": _unseen(model), "seconds": seconds}
    return run, finish


def train_sam(ctx: Context, domain: str, sparsity: float, *, allocation: str, mask: str = "score",
              tracker=None, tag: str | None = None) -> dict:
    """Adapt a fresh copy of the pretrained model to ``domain`` with a SAM; returns the model and
    what was measured. ``mask``: score-based (the paper's), or a fixed random / Fisher mask.

    The recipe is ``ctx.params.adapt``: the values' gradient (``value_grad``), the scores' optimizer
    (``score_optimizer``, ``score_lr``) and ``freeze_epochs``: the last N epochs keep the scores (hence the
    mask) fixed, so the stored top-k is the mask its values were trained with. ``stored_mask_unseen``: the
    fraction of the stored mask's entries outside the mask of the last training forward pass (0: the
    stored mask was used with its values; None: no epoch trained here, e.g. a completed checkpoint).
    """
    run, finish = sam_run(ctx, domain, sparsity, allocation=allocation, mask=mask, tag=tag)
    start = time.perf_counter()
    history = fit(**run, forward=run["module"])
    if tracker is not None:
        tracker.log_history(history)
    return finish(history, time.perf_counter() - start)


def adapt(ctx: Context, domain: str, sparsity: float, out, tracker) -> dict:
    return adapt_cells([ctx], [domain], [sparsity], [out], [tracker])[0]


def adapt_cells(ctxs: list[Context], domains: list[str], sparsities: list[float], outs: list, trackers: list,
                fit_all: Callable[[list[dict]], list[list[dict]]] | None = None) -> list[dict]:
    """``adapt`` of several cells, their trainings done by ``fit_all`` (a list of ``fit`` calls' arguments ->
    their histories; default one ``fit`` after another); ``train_seconds`` is each cell's share of the time."""
    if fit_all is None:
        fit_all = lambda runs: [fit(**r, forward=r["module"]) for r in runs]
    made = [sam_run(ctx, d, s, allocation=ctx.params.adapt.allocation)
            for ctx, d, s in zip(ctxs, domains, sparsities, strict=True)]
    start = time.perf_counter()
    histories = fit_all([run for run, _ in made])
    seconds = (time.perf_counter() - start) / len(made)
    results = []
    for (_, finish), history, ctx, d, s, out, tracker in zip(made, histories, ctxs, domains, sparsities, outs, trackers,
                                                             strict=True):
        tracker.log_history(history)
        results.append(_stored_result(ctx, d, s, finish(history, seconds), out))
    return results


def _stored_result(ctx: Context, domain: str, sparsity: float, trained: dict, out) -> dict:
    """Store the trained SAM at ``out`` and measure what was stored: the cell's result."""
    p = ctx.params
    path = out.artifact()
    save_sam(path, sam_state(trained["model"]), sparsity=sparsity, allocation=p.adapt.allocation,
             base_fingerprint=trained["base_fingerprint"], extra_meta={"domain": domain})
    # Evaluate what was stored: reload the file onto a fresh base (fp16 values, exactly as served).
    served = install_sam(ctx.pretrained(), load_sam(path, ctx.pretrained()))
    cost = memory_cost(path, served)
    kept = {n: int(m.k) for n, m in sam_layers(served).items()}
    return {"method": NAME, "domain": domain, "sparsity": sparsity,
            "domain_psnr": ctx.psnr(ctx.self_link(served), ctx.split(f"{domain}_test")),
            "memory_bytes": int(cost["bytes"]), "memory_cost_pct": cost["pct"],
            "details": {"val_psnr": ctx.psnr(ctx.self_link(served), ctx.split(f"{domain}_val")),
                        "kept_per_layer": kept, "kept_total": sum(kept.values()),
                        "mask_moved_fraction": trained["mask_moved"],
                        "stored_mask_unseen_fraction": trained["stored_mask_unseen"],
                        "train_seconds": trained["seconds"],
                        "curve": trained["history"]}}


def _moved(model, initial) -> float:
    """Fraction of kept entries that left the initial mask (0: the mask never moved)."""
    changed = kept = 0
    for n, m in sam_layers(model).items():
        now = m.mask()
        changed += int((now & ~initial[n]).sum())
        kept += int(now.sum())
    return changed / max(kept, 1)


def _changed(now: dict, before: dict) -> float:
    """Fraction of kept entries of ``now`` not kept in ``before`` (per-epoch churn)."""
    changed = sum(int((now[n] & ~before[n]).sum()) for n in now)
    return changed / max(sum(int(m.sum()) for m in now.values()), 1)


def _unseen(model) -> float | None:
    """Fraction of the stored mask (the top-k now) outside the mask of the last training forward pass."""
    layers = sam_layers(model)
    if any(m.last_mask is None for m in layers.values()):
        return None
    return _changed({n: m.mask() for n, m in layers.items()}, {n: m.last_mask for n, m in layers.items()})


def empty_state(model) -> SAMState:
    """A SAM that keeps nothing: the base agent's."""
    layers = sam_layers(model)
    return SAMState({n: torch.zeros(0, dtype=torch.long) for n in layers},
                    {n: torch.zeros(0, dtype=torch.float16) for n in layers},
                    {n: tuple(m.base.weight.shape) for n, m in layers.items()})


def variants(ctx: Context, sparsity: float) -> list[Variant]:
    """One base model, loaded once; each agent's SAM is hot-swapped in, and switched off to talk."""
    model = ctx.pretrained()
    states = {d: load_sam(sam_path(ctx, d, sparsity), model) for d in ctx.params.domains.names}
    install_sam(model, next(iter(states.values())))
    states[BASE_AGENT] = empty_state(model)  # the unadapted agent holds no SAM

    def local(d):
        install_sam(model, states[d])
        set_sam_enabled(model, True)
        return ctx.self_link(model)

    # A's Tx and B's Rx each switch their own SAM off: both compute with W0.
    def transmit(a):
        def encode(x, g):
            install_sam(model, states[a])
            set_sam_enabled(model, False)
            return ctx.channel(model)(x, g)
        return encode

    def receive(a, b):
        def decode(y):
            install_sam(model, states[b])
            set_sam_enabled(model, False)
            return model.decoder(y)
        return decode

    return [Variant(NAME, sparsity, local, None, lambda d: sam_path(ctx, d, sparsity).stat().st_size,
                    transmit=transmit, receive=receive)]
