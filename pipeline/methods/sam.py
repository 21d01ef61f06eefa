"""sam (ZFDA): a sparse additive modification per domain; switched off for everyone else."""
from __future__ import annotations

import time

import torch

from ..model import awgn
from ..sam import (attach_sam, base_fingerprint, install_sam, load_sam, memory_cost, sam_layers, sam_parameters,
                   sam_state, save_sam, set_sam_enabled)
from ..train import CHECKPOINTS, fingerprint, fit
from . import Context, Variant, cell_name

NAME = "sam"
USES_SPARSITY = True


def sam_path(ctx: Context, domain: str, sparsity: float):
    return ctx.cell_dir(NAME) / f"{cell_name(domain, sparsity)}.safetensors"


def adapt(ctx: Context, domain: str, sparsity: float, tracker) -> dict:
    p = ctx.params
    model = ctx.pretrained()
    base_fp = base_fingerprint(model)
    attach_sam(model, sparsity, p.adapt.allocation)
    scores, values = sam_parameters(model)
    opt = torch.optim.Adam([{"params": scores, "lr": p.adapt.score_lr},
                            {"params": values, "lr": p.adapt.value_lr}])
    initial = {n: m.mask().clone() for n, m in sam_layers(model).items()}
    train_x, test_x = ctx.split(f"{domain}_train"), ctx.split(f"{domain}_test")

    def on_epoch(epoch, loss):
        model.eval()
        row = {"domain_psnr": ctx.psnr(ctx.self_link(model), test_x), "mask_moved": _moved(model, initial)}
        tracker.log_metrics({"train_loss": loss, **row}, step=epoch)
        return row

    key = fingerprint(NAME, domain, sparsity, base_fp, p.model_dump(include={"adapt", "train", "model"}))
    start = time.perf_counter()
    history = fit(model, opt, train_x, lambda x, g: model(x, g), epochs=p.adapt.epochs,
                  batch_size=p.train.batch_size, seed=p.adapt.seed, device=ctx.device,
                  checkpoint=CHECKPOINTS / p.run_name / NAME / f"{cell_name(domain, sparsity)}.pt", key=key,
                  desc=f"sam {cell_name(domain, sparsity)}", on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    moved = _moved(model, initial)
    path = sam_path(ctx, domain, sparsity)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_sam(path, sam_state(model), sparsity=sparsity, allocation=p.adapt.allocation, base_fingerprint=base_fp,
             extra_meta={"domain": domain})
    # Evaluate what was stored: reload the file onto a fresh base (fp16 values, exactly as served).
    served = install_sam(ctx.pretrained(), load_sam(path, ctx.pretrained()))
    cost = memory_cost(path, served)
    kept = {n: int(m.k) for n, m in sam_layers(served).items()}
    return {"method": NAME, "domain": domain, "sparsity": sparsity,
            "domain_psnr": ctx.psnr(ctx.self_link(served), test_x),
            "memory_bytes": int(cost["bytes"]), "memory_cost_pct": cost["pct"],
            "details": {"kept_per_layer": kept, "kept_total": sum(kept.values()), "mask_moved_fraction": moved,
                        "train_seconds": seconds, "curve": history}}


def _moved(model, initial) -> float:
    """Fraction of kept entries that left the initial mask (0: the mask never moved)."""
    changed = kept = 0
    for n, m in sam_layers(model).items():
        now = m.mask()
        changed += int((now & ~initial[n]).sum())
        kept += int(now.sum())
    return changed / max(kept, 1)


def variants(ctx: Context, sparsity: float) -> list[Variant]:
    """One base model, loaded once; each agent's SAM is hot-swapped in, and switched off to talk."""
    model = ctx.pretrained()
    states = {d: load_sam(sam_path(ctx, d, sparsity), model) for d in ctx.params.domains.names}
    install_sam(model, next(iter(states.values())))

    def local(d):
        install_sam(model, states[d])
        set_sam_enabled(model, True)
        return ctx.self_link(model)

    def pair(a, b):
        # A's Tx and B's Rx each switch their own SAM off: both compute with W0.
        def decode(x, g):
            install_sam(model, states[a])
            set_sam_enabled(model, False)
            y = awgn(model.transmit(x), ctx.snr_db, g)
            install_sam(model, states[b])
            set_sam_enabled(model, False)
            return model.decoder(y)
        return decode

    return [Variant(NAME, sparsity, local, pair, lambda d: sam_path(ctx, d, sparsity).stat().st_size)]
