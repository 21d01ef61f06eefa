"""Measurements 1-5: SAM step, switch/reload/swap, storage, fit against train_one_epoch, inference.

Training goes through ``pipeline.train.train_one_epoch`` (what ``fit`` runs each epoch), never a
copy of its loop; a "step" is one epoch over one batch.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.config import Params
from pipeline.sam import (attach_sam, base_fingerprint, install_sam, memory_cost, sam_layers, sam_parameters, sam_state,
                          save_sam, set_sam_enabled)
from pipeline.train import build_model, fit, to_float, train_one_epoch

from .timing import Settings, interleaved, med, paired_ratio


# ------------------------------------------------------------------------------------- fixtures
def make_model(params: Params, *, width: int | None = None, seed: int = 0, device="cpu") -> nn.Module:
    """The default model of ``params`` (optionally another width), seeded."""
    if width is not None:
        params = params.model_copy(update={"model": params.model.model_copy(update={"width": width})})
    torch.manual_seed(seed)
    return build_model(params).to(device)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 NCHW 32x32 RGB, what ``fit`` takes."""
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def generator(device, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def sam_optimizer(model: nn.Module, params: Params) -> torch.optim.Optimizer:
    """Adam with the two groups of pipeline/methods/sam.py (scores, values)."""
    scores, values = sam_parameters(model)
    return torch.optim.Adam([{"params": scores, "lr": params.adapt.score_lr},
                             {"params": values, "lr": params.adapt.value_lr}])


def epoch(model: nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, params: Params, *, seed: int = 0,
          device=None, precision: str | None = None) -> float:
    """One ``train_one_epoch`` of ``model`` (its own forward) over ``images``, on the model's device
    (``precision`` None: the process's, fp32 unless ``setup_runtime`` said otherwise)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    return train_one_epoch(model, opt, images, lambda x, gen: model(x, gen), epoch=0, seed=seed,
                           batch_size=params.train.batch_size, device=device, desc="benchmark", precision=precision)


def trained_sam(params: Params, base: nn.Module, sparsity: float, *, steps: int, seed: int = 0) -> nn.Module:
    """A copy of ``base`` with a training-mode SAM after ``steps`` real Adam steps on random images."""
    model = attach_sam(copy.deepcopy(base), sparsity, params.adapt.allocation)
    epoch(model, sam_optimizer(model, params), random_images(params.train.batch_size * steps, seed=1000 + seed),
          params, seed=seed)
    return model


# ---------------------------------------------------------------------------------- measurements
def measure_sam_step(params: Params, sparsities: Sequence[float], s: Settings, *, device="cpu",
                     width: int | None = None, precision: str | None = None) -> dict[str, float]:
    """Seconds per training step, full fine-tuning vs SAM at each sparsity, and the paired ratios."""
    base = make_model(params, width=width, device=device)
    batch = random_images(params.train.batch_size, seed=1)
    cands: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    full = copy.deepcopy(base).requires_grad_(True)
    cands["full"] = (full, torch.optim.Adam(full.parameters(), lr=params.tuning.lr))
    for g in sparsities:
        m = attach_sam(copy.deepcopy(base), g, params.adapt.allocation)
        cands[f"sam@{g:g}"] = (m, sam_optimizer(m, params))
    fns = {k: (lambda c=c: epoch(c[0], c[1], batch, params, precision=precision)) for k, c in cands.items()}
    t = interleaved(fns, repeats=s.repeats, inner=s.inner, device=device, warmup=2)
    out = {"full_step_s": med(t["full"])}
    for g in sparsities:
        out[f"sam_step_s@{g:g}"] = med(t[f"sam@{g:g}"])
        out[f"sam_ratio@{g:g}"] = paired_ratio(t, f"sam@{g:g}", "full")
    return out


def measure_switch(params: Params, sparsity: float, s: Settings, tmpdir: Path) -> dict[str, float]:
    """Switch off+on, reload of the base from disk, swap of two domains' stored states (CPU).

    The merged weight W0 + m*v is built eagerly by ``install`` and cached; a switch flips flags
    only, and each layer's next forward looks the weight up (the base tensor, or the cached merged
    copy, rebuilt only when W0 changed). So ``switch_s`` (``set_sam_enabled`` off then on) is the
    whole cost of a switch once it is verified that no merged weight is rebuilt afterwards
    (``rebuilds``, counted over all the switching and the forwards that follow: must be 0) and that
    the outputs are right (off: the base model bit for bit; on: the installed state's).
    ``switch_ready_s`` adds the per-forward weight lookup of every layer after each flip (paid by
    every forward, switched or not): an upper bound on what a switch can cost the next forward.
    """
    base = make_model(params).eval()
    state_a = sam_state(trained_sam(params, base, sparsity, steps=s.train_steps, seed=0))
    state_b = sam_state(trained_sam(params, base, sparsity, steps=s.train_steps, seed=1))
    model = install_sam(copy.deepcopy(base), state_a).eval()
    layers = list(sam_layers(model).values())
    x = to_float(random_images(params.train.batch_size, seed=2), torch.device("cpu"))

    def out(m):
        with torch.no_grad():
            return m(x, generator("cpu", 7))

    on_ref, base_ref = out(model), out(base)
    ptrs = [m.effective_weight().data_ptr() for m in layers]

    def switch():
        set_sam_enabled(model, False)
        set_sam_enabled(model, True)

    def switch_ready():
        set_sam_enabled(model, False)
        for m in layers:
            m.effective_weight()
        set_sam_enabled(model, True)
        for m in layers:
            m.effective_weight()

    path = tmpdir / "base.safetensors"
    save_file({k: v.detach().contiguous() for k, v in base.state_dict().items()}, str(path))
    plain = make_model(params, seed=1)

    def reload():
        plain.load_state_dict(load_file(str(path)))

    other = install_sam(copy.deepcopy(base), state_a)
    turn = [state_b, state_a]

    def swap():
        install_sam(other, turn[0])
        turn.reverse()

    fast = interleaved({"switch": switch, "switch_ready": switch_ready}, repeats=s.fast_repeats,
                       inner=s.fast_inner)
    slow = interleaved({"switch": switch, "reload": reload, "swap": swap}, repeats=s.repeats,
                       inner={"switch": s.fast_inner, "reload": s.slow_inner, "swap": 2 * s.slow_inner})
    set_sam_enabled(model, False)
    off_ok = torch.equal(out(model), base_ref)
    set_sam_enabled(model, True)
    on_ok = torch.equal(out(model), on_ref) and not torch.equal(on_ref, base_ref)
    rebuilds = sum(m.effective_weight().data_ptr() != p for m, p in zip(layers, ptrs))
    return {"switch_s": med(fast["switch"]), "switch_ready_s": med(fast["switch_ready"]),
            "reload_s": med(slow["reload"]), "swap_s": med(slow["swap"]),
            "reload_over_switch": paired_ratio(slow, "reload", "switch"),
            "reload_over_swap": paired_ratio(slow, "reload", "swap"),
            "layers": float(len(layers)), "base_file_bytes": float(path.stat().st_size),
            # checks, not measurements (0 is the right number of rebuilds)
            "check_rebuilds": float(rebuilds), "check_outputs_correct": float(off_ok and on_ok)}


def measure_storage(params: Params, sparsities: Sequence[float], s: Settings, tmpdir: Path) -> dict[str, float]:
    """Stored SAM bytes after a short real training at each sparsity, against gamma * 4N."""
    base = make_model(params)
    fp = base_fingerprint(base)
    n_params = sum(p.numel() for p in {id(p): p for p in base.parameters()}.values())
    out: dict[str, float] = {"base_fp32_bytes": 4.0 * n_params}
    for g in sparsities:
        model = trained_sam(params, base, g, steps=s.train_steps, seed=3)
        state = sam_state(model)
        path = tmpdir / f"sam-{g:g}.safetensors"
        save_sam(path, state, sparsity=g, allocation=params.adapt.allocation, base_fingerprint=fp)
        cost = memory_cost(path, model)
        out[f"bytes@{g:g}"] = float(cost["bytes"])
        out[f"pct@{g:g}"] = float(cost["pct"])
        out[f"kept@{g:g}"] = float(state.kept())
        out[f"header@{g:g}"] = float(safetensors_header_bytes(path))
    return out


def safetensors_header_bytes(path: str | os.PathLike) -> int:
    """Bytes before a safetensors file's tensor data: the 8-byte length and the JSON header it counts."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) != 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    return 8 + int.from_bytes(head, "little")


def measure_pretrain(params: Params, s: Settings, tmpdir: Path, *, device="cpu", width: int | None = None,
                     n_images: int | None = None, precision: str | None = None) -> dict[str, float]:
    """``fit`` as the pretrain stage calls it (one epoch per block, its per-epoch checkpoint into
    ``tmpdir``; no ``on_epoch`` evaluation) against ``train_one_epoch`` alone: same model, data,
    batch, seeds; the difference is what ``fit`` adds (checkpoint resume check and save, history)."""
    n = n_images or s.n_images
    images = random_images(n, seed=4)
    dev = torch.device(device)
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    for k in ("fit", "epoch"):
        m = make_model(params, width=width, device=device, seed=params.pretrain.seed)
        runs[k] = (m, torch.optim.Adam(m.parameters(), lr=params.pretrain.lr))
    calls = [0]

    def with_fit():
        model, opt = runs["fit"]
        calls[0] += 1
        ckpt = tmpdir / f"pretrain-{calls[0]}.pt"  # fresh each call: fit must not resume a finished run
        fit(model, opt, images, lambda x, gen: model(x, gen), epochs=1, batch_size=params.train.batch_size,
            seed=params.pretrain.seed + calls[0], device=dev, checkpoint=ckpt, key=f"benchmark-{calls[0]}",
            desc="benchmark fit", precision=precision)
        ckpt.unlink(missing_ok=True)

    def epoch_only():
        model, opt = runs["epoch"]
        epoch(model, opt, images, params, seed=params.pretrain.seed + calls[0], device=dev, precision=precision)

    t = interleaved({"fit": with_fit, "epoch": epoch_only}, repeats=s.repeats, device=device, warmup=1)
    return {"fit_s": med(t["fit"]), "epoch_s": med(t["epoch"]), "images": float(n),
            "fit_images_per_s": n / med(t["fit"]), "epoch_images_per_s": n / med(t["epoch"]),
            "throughput_ratio": paired_ratio(t, "epoch", "fit")}


def measure_inference(params: Params, sparsity: float, s: Settings, *, device="cpu",
                      width: int | None = None) -> dict[str, float]:
    """Forward (no grad) of the base model against the same base with a stored SAM switched on."""
    base = make_model(params, width=width, device=device).eval()
    state = sam_state(trained_sam(params, base, sparsity, steps=s.train_steps, seed=5))
    served = install_sam(copy.deepcopy(base), state).eval()
    set_sam_enabled(served, True)
    x = to_float(random_images(params.train.batch_size, seed=6), torch.device(device))
    gens = {"base": generator(device, 0), "sam": generator(device, 0)}

    def fwd(m, k):
        with torch.no_grad():
            m(x, gens[k])

    t = interleaved({"base": lambda: fwd(base, "base"), "sam": lambda: fwd(served, "sam")}, repeats=s.repeats,
                    inner=max(2, 2 * s.inner), device=device, warmup=2)
    return {"base_s": med(t["base"]), "sam_s": med(t["sam"]),
            "base_images_per_s": params.train.batch_size / med(t["base"]),
            "sam_images_per_s": params.train.batch_size / med(t["sam"]),
            "throughput_ratio": paired_ratio(t, "base", "sam")}
