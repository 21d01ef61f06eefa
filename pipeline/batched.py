"""Many cells in one training step: K models of one architecture trained together with ``torch.func``.

The SC model is small (16-32 channels), so one cell's step leaves the cores, and a GPU far more, mostly
idle. ``fit_cells`` trains K ``pipeline.train.fit`` calls at once: in every step the K models' parameters
are stacked (``torch.stack`` of each model's own leaf tensors, so the autograd graph reaches them) and
the encoder and decoder run once for all K through ``torch.func.vmap`` of ``functional_call``; vmap
turns a convolution whose weight carries a batch dimension into one grouped convolution over the K
cells. Everything else of a cell stays its own and is exactly what its ``fit`` does: its images and
shuffle order (``(seed, epoch)``), its noise generator (the channel is applied to each cell's slice by
``pipeline.model.apply_channel`` itself), its loss (``mse_loss`` of its slice), its ``torch.optim.Adam``
(its own lr and state, stepped on its own model's parameters), its per-epoch checkpoint in ``fit``'s
format (so a run resumes by either path), its history.

torch.func rather than hand-written grouped convolutions: the vmap batching rules of conv2d,
conv_transpose2d, PReLU and GDN's convolution are torch's own and kept by torch, the model's modules run
unchanged (``functional_call``), and gradients come from ordinary autograd.

Equal to one ``fit`` after another up to floating-point rounding, not bit for bit: a grouped convolution
sums in another order than K single ones (``tests/test_batched.py`` bounds the difference; the measured
sizes are in ``reports/benchmarks.md``, section "Batched cells"). Deterministic: the same inputs give
the same bytes, and a cell's result does not depend on the other cells of its batch beyond that rounding
(each cell's gradient is computed from its own slice only).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, vmap

from .model import SCModel, apply_channel, power_normalize
from . import train
from .train import _load_checkpoint, _save_checkpoint, epoch_generator, to_float

if TYPE_CHECKING:
    from .methods import Context

# Where batching pays: on CUDA from 2 cells; on the CPU from CPU_CROSSOVER cells, the smallest K at which
# the measured median batched/sequential cells/s ratio exceeded 1 (``python -m benchmarks.batched``,
# reports/benchmarks.md, section "Batched cells").
CPU_CROSSOVER: int | None = 4


def use_batched(device: torch.device | str, k: int) -> bool:
    """Whether K cells of one shape should train in one stacked step on ``device``."""
    if k < 2:
        return False
    if torch.device(device).type == "cuda":
        return True
    return CPU_CROSSOVER is not None and k >= CPU_CROSSOVER


def _stack(models: list[nn.Module], prefix: str) -> dict[str, torch.Tensor]:
    """The K models' parameters under ``prefix`` (a submodule's), stacked along a new first dimension."""
    names = [n for n, _ in models[0].named_parameters() if n.startswith(prefix)]
    own = [dict(m.named_parameters()) for m in models]
    return {n[len(prefix):]: torch.stack([p[n] for p in own]) for n in names}


def stacked_forward(models: list[SCModel], x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """``models[k](x[k], generators[k])`` for every k, as one (K, batch, 3, 32, 32) tensor: encoder and decoder
    vmapped over the stacked parameters, each cell's power normalisation and channel on its own slice."""
    enc, dec = models[0].encoder, models[0].decoder
    z = vmap(lambda p, xb: functional_call(enc, p, (xb,)))(_stack(models, "encoder."), x)
    y = torch.stack([apply_channel(m.channel, power_normalize(z[k]), m.snr_db, g)
                     for k, (m, g) in enumerate(zip(models, generators))])
    return vmap(lambda p, yb: functional_call(dec, p, (yb,)))(_stack(models, "decoder."), y)


def _check(runs: list[dict]) -> None:
    """One stacked step needs one architecture, one device and equal batch sizes in every step."""
    first = runs[0]
    shapes = [(n, tuple(p.shape)) for n, p in first["module"].named_parameters()]
    for r in runs:
        if not isinstance(r["module"], SCModel) or not isinstance(r["optimizer"], torch.optim.Adam):
            raise TypeError("fit_cells trains SCModel modules with their torch.optim.Adam (full fine-tuning)")
        if [(n, tuple(p.shape)) for n, p in r["module"].named_parameters()] != shapes:
            raise ValueError(f"fit_cells: {r['desc']} has other parameter shapes than {first['desc']}")
        for k in ("epochs", "batch_size", "device"):
            if r[k] != first[k]:
                raise ValueError(f"fit_cells: {k} {r[k]} of {r['desc']} differs from {first[k]} of {first['desc']}")
        if len(r["images"]) != len(first["images"]):
            raise ValueError(f"fit_cells: {r['desc']} has {len(r['images'])} images, {first['desc']} "
                             f"{len(first['images'])}: their batches would differ in size")


def fit_cells(runs: list[dict], precision: str | None = None) -> list[list[dict]]:
    """``[fit(**r, forward=lambda x, g: r["module"](x, g)) for r in runs]``, trained in one stacked step.

    Each run is the keyword arguments of one ``pipeline.train.fit`` call less ``forward`` (the module's
    own forward, Tx -> channel -> Rx, is what is trained): ``module`` (an ``SCModel``), ``optimizer``
    (its ``torch.optim.Adam``), ``images``, ``epochs``, ``batch_size``, ``seed``, ``device``,
    ``checkpoint``, ``key``, ``desc``. Epochs, batch size, device, the number of images and the model's
    shapes must be equal across runs; seeds, images, learning rates and checkpoints are each run's own.
    Returns each run's history, as ``fit`` does; the modules are trained in place. Runs resumed from
    checkpoints at different epochs train in separate groups.
    """
    if not runs:
        return []
    _check(runs)
    precision = precision or train._precision
    histories: list[list[dict]] = [[] for _ in runs]
    starts = []
    for i, r in enumerate(runs):
        state = _load_checkpoint(r["checkpoint"], r["key"], precision)
        start = 0
        if state is not None:
            r["module"].load_state_dict(state["module"])
            r["optimizer"].load_state_dict(state["optimizer"])
            histories[i], start = [dict(h) for h in state["history"]], int(state["epoch"])
            print(f"{r['desc']}: resumed from checkpoint at epoch {start}/{r['epochs']}", flush=True)
        starts.append(start)
    for start in sorted(set(starts)):
        group = [i for i, s in enumerate(starts) if s == start]
        for epoch in range(start, runs[0]["epochs"]):
            losses = _epoch([runs[i] for i in group], epoch, precision)
            for i, loss in zip(group, losses):
                r = runs[i]
                histories[i].append({"epoch": epoch + 1, "train_loss": loss})
                _save_checkpoint(r["checkpoint"], {"key": r["key"], "precision": precision, "epoch": epoch + 1,
                                                   "module": r["module"].state_dict(),
                                                   "optimizer": r["optimizer"].state_dict(),
                                                   "history": histories[i]})
    return histories


def _epoch(runs: list[dict], epoch: int, precision: str) -> list[float]:
    """One epoch of every run (``train_one_epoch``'s draws per run), their mean train losses."""
    models = [r["module"].train() for r in runs]
    device, batch_size, n = runs[0]["device"], runs[0]["batch_size"], len(runs[0]["images"])
    gens = [epoch_generator(r["seed"], epoch, device) for r in runs]
    orders = [torch.randperm(n, generator=torch.Generator().manual_seed(r["seed"] * 1_000_003 + epoch)) for r in runs]
    totals, seen = [0.0] * len(runs), 0
    for i in range(0, n, batch_size):
        x = torch.stack([to_float(r["images"][o[i:i + batch_size]], device) for r, o in zip(runs, orders)])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = stacked_forward(models, x, gens)
            losses = [nn.functional.mse_loss(out[k].float(), x[k]) for k in range(len(runs))]
        for r in runs:
            r["optimizer"].zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for r in runs:
            r["optimizer"].step()
        totals = [t + float(loss.detach()) * x.shape[1] for t, loss in zip(totals, losses)]
        seen += x.shape[1]
    return [t / seen for t in totals]


def groups(runs: list[dict]) -> list[list[int]]:
    """The runs' indices grouped by what one stacked step needs equal (shapes, sizes, epochs, device)."""
    found: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        shapes = tuple((n, tuple(p.shape)) for n, p in r["module"].named_parameters())
        found.setdefault((shapes, len(r["images"]), r["epochs"], r["batch_size"], str(r["device"])), []).append(i)
    return list(found.values())


def fit_grouped(runs: list[dict], max_cells: int = 16, batch: bool | None = None) -> list[list[dict]]:
    """``fit_cells`` over every group of ``runs`` that may share a step, at most ``max_cells`` at a time;
    a group that is not batched (``batch`` False, or None and ``use_batched`` says no) runs ``fit`` per run."""
    out: list[list[dict] | None] = [None] * len(runs)
    for group in groups(runs):
        stack = use_batched(runs[group[0]]["device"], len(group)) if batch is None else batch and len(group) > 1
        size = max_cells if stack else 1
        for j in range(0, len(group), size):
            part = group[j:j + size]
            for i, history in zip(part, fit_cells([runs[i] for i in part]) if size > 1 else
                                  [_fit_one(runs[i]) for i in part]):
                out[i] = history
    return out  # type: ignore[return-value]


def _fit_one(run: dict) -> list[dict]:
    model = run["module"]
    return train.fit(**run, forward=lambda x, g: model(x, g))


def train_tuning_cells(ctxs: list[Context], domains: list[str], outs: list, trackers: list,
                       max_cells: int = 16, batch: bool | None = None) -> list[dict]:
    """``tuning.adapt(ctx, domain, None, out, tracker)`` for every cell, their trainings (the domain's
    fine-tuning, then the re-tuning on base images) batched where ``use_batched`` says it pays (``batch``
    True: always, False: never).
    Returns the cells' results in order; ``train_seconds`` is each cell's share of the batch's time."""
    from .methods import tuning
    return tuning.adapt_cells(ctxs, domains, outs, trackers, fit_all=lambda runs: fit_grouped(runs, max_cells, batch))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |a - b| per tensor of two state dicts (their keys must match)."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(set(a) ^ set(b))}")
    return {n: float((a[n].float() - b[n].float()).abs().max()) if a[n].numel() else 0.0 for n in a}
