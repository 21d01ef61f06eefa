"""Many cells in one training step: K models of one architecture trained together with ``torch.func``.

The SC model is small (16-32 channels), so one cell's step leaves the cores, and a GPU far more, mostly
idle. ``fit_cells`` trains K ``pipeline.train.fit`` calls at once: in every step the K models' parameters
are stacked (``torch.stack`` of each model's own leaf tensors, so the autograd graph reaches them) and
the encoder and decoder run once for all K through ``torch.func.vmap`` of ``functional_call``; vmap
turns a convolution whose weight carries a batch dimension into one grouped convolution over the K
cells. Everything else of a cell stays its own and is exactly what its ``fit`` does: its images and
shuffle order (``(seed, epoch)``), its noise generator (the channel is applied to each cell's slice by
``pipeline.model.apply_channel`` itself), its loss (``mse_loss`` of its slice), its optimizer (its own
Adam, or sam's score and value optimizers, with its own learning rates and state, stepped on its own
model's parameters), its ``on_epoch`` / ``before_epoch`` hooks, its per-epoch checkpoint in ``fit``'s
format (so a run resumes by either path), its history. A model carrying SAM enters through each wrapped
layer's ``effective_weight()`` (``link_tensors``), computed per cell outside vmap, so SAM's straight-through
``autograd.Function`` needs no vmap rule and its mask is SAMLayer's own.

torch.func rather than hand-written grouped convolutions: the vmap batching rules of conv2d,
conv_transpose2d, PReLU and GDN's convolution are torch's own and kept by torch, the model's modules run
unchanged (``functional_call``), and gradients come from ordinary autograd.

Equal to one ``fit`` after another up to floating-point rounding, not bit for bit: a grouped convolution
sums in another order than K single ones (``tests/test_batched.py`` bounds the difference in fp32; the
measured sizes are in ``reports/benchmarks.md``, section "Batched cells"; in bf16 the gap is bf16's
rounding, carried on by Adam). Deterministic: the same inputs give the same bytes, and a cell's bits do
not depend on the other cells of its batch (tested: one cell's data and lr changed, the others keep
every bit).
"""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, vmap

from . import train
from .model import SCModel, apply_channel, power_normalize
from .train import _load_checkpoint, _save_checkpoint, epoch_generator, to_float

if TYPE_CHECKING:
    from .methods import Context

# Where batching pays: on CUDA from 2 cells; on the CPU from CPU_CROSSOVER[threads] cells at that many torch
# threads, the smallest K from which the measured median batched/sequential cells/s ratio stayed at 1.05 or
# more (``python -m benchmarks.batched``, reports/benchmarks.md, section "Batched cells"); None, or a thread
# count not measured: never on the CPU (``execute.batch: always`` still stacks there). Measured twice, quiet,
# on 2 cores of an AMD EPYC with AVX2 and no AVX-512 (the kind the benchmark targets): at 1 thread
# 0.91-1.06x; at 2 threads the first run read 0.96-1.11x (1.00x at K = 8 and 16), the second 0.95-1.10x
# (1.05x at 8, 1.10x at 16, so its crossover row reads K = 8): a gain of at most 10 % that one run shows and
# the other does not, not worth a second path's bytes by default. An earlier run on an AVX-512 EPYC under
# load (load average 5-8) read 1.19-3.2x at 2 threads with K = 1 itself at 1.10x: noise, not a crossover.
CPU_CROSSOVER: dict[int, int | None] = {1: None, 2: None}
MAX_CELLS = 16      # cells a stacked step holds on CUDA (the adapt stage's batches, pipeline.cells)
CPU_MAX_CELLS = 8   # on the CPU (execute.batch: always): no K measured faster than 8


def use_batched(device: torch.device | str, k: int, threads: int | None = None) -> bool:
    """Whether K cells of one shape should train in one stacked step on ``device`` (``threads``: the torch
    threads they would run on; None: this process's)."""
    if k < 2:
        return False
    if torch.device(device).type == "cuda":
        return True
    crossover = CPU_CROSSOVER.get(threads or torch.get_num_threads())
    return crossover is not None and k >= crossover


def link_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the plain model's forward reads, by the plain model's names: the model's parameters, or,
    for a model carrying SAM (``pipeline.sam``), each wrapped layer's ``effective_weight()`` (W0 + m ⊙ v with
    SAMLayer's own mask and straight-through gradient, its ``last_mask`` recorded) and its base bias."""
    from .sam import sam_layers
    layers = sam_layers(model)
    out = {}
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base") and owner[:-5] in layers:
            if leaf == "weight":
                out[f"{owner[:-5]}.weight"] = layers[owner[:-5]].effective_weight()
            else:
                out[f"{owner[:-5]}.{leaf}"] = p
        elif owner not in layers:
            out[name] = p
    return out


def plain_template(model: nn.Module) -> nn.Module:
    """A module of the plain model's structure for ``functional_call``: ``model`` itself, or a copy with every
    SAM layer replaced by its base layer."""
    from .sam import sam_layers
    layers = sam_layers(model)
    if not layers:
        return model
    template = copy.deepcopy(model)
    for name in layers:
        parent, _, last = name.rpartition(".")
        setattr(template.get_submodule(parent), last, template.get_submodule(f"{name}.base"))
    return template


def stacked_forward(models: list[SCModel], x: torch.Tensor, generators: list[torch.Generator],
                    template: nn.Module | None = None) -> torch.Tensor:
    """``models[k](x[k], generators[k])`` for every k, as one (K, batch, 3, 32, 32) tensor: encoder and decoder
    vmapped over the stacked ``link_tensors``, each cell's power normalisation and channel on its own slice.
    ``template``: ``plain_template(models[0])`` (computed when not given)."""
    template = template or plain_template(models[0])
    tensors = [link_tensors(m) for m in models]
    stacked = {n: torch.stack([t[n] for t in tensors]) for n in tensors[0]}
    part = lambda prefix: {n[len(prefix):]: v for n, v in stacked.items() if n.startswith(prefix)}
    enc, dec = template.encoder, template.decoder
    z = vmap(lambda p, xb: functional_call(enc, p, (xb,)))(part("encoder."), x)
    # unbind, not z[k]: one backward op for all slices (indexing's backward zero-fills the whole tensor per k)
    y = torch.stack([apply_channel(m.channel, power_normalize(zk), m.snr_db, g)
                     for zk, m, g in zip(z.unbind(0), models, generators, strict=True)])
    return vmap(lambda p, yb: functional_call(dec, p, (yb,)))(part("decoder."), y)


FIT_KEYS = {"module", "optimizer", "images", "epochs", "batch_size", "seed", "device", "checkpoint", "key", "desc",
            "on_epoch", "before_epoch"}  # fit's arguments that fit_cells takes (forward: the module's own)


def _check(runs: list[dict]) -> None:
    """One stacked step needs one architecture, one device and equal batch sizes in every step."""
    first = runs[0]
    shapes = [(n, tuple(p.shape)) for n, p in first["module"].named_parameters()]
    for r in runs:
        if unknown := sorted(set(r) - FIT_KEYS):
            raise TypeError(f"fit_cells: {r.get('desc')}: arguments {unknown} not supported (only {sorted(FIT_KEYS)})")
        if not isinstance(r["module"], SCModel):
            raise TypeError(f"fit_cells: {r['desc']}: trains SCModel modules (plain or carrying SAM), "
                            f"not {type(r['module']).__name__}")
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
    own forward, Tx -> channel -> Rx, is what is trained): ``module`` (an ``SCModel``, plain or carrying
    SAM), ``optimizer`` (its own: Adam, or sam's optimizers; stepped as ``fit`` steps it), ``images``,
    ``epochs``, ``batch_size``, ``seed``, ``device``, ``checkpoint``, ``key``, ``desc``, and optionally
    ``on_epoch`` / ``before_epoch`` (called per run as ``fit`` calls them). Epochs, batch size, device, the
    number of images and the model's shapes must be equal across runs; seeds, images, optimizers (their
    learning rates), hooks and checkpoints are each run's own.
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
            for i in group:
                if runs[i].get("before_epoch") is not None:
                    runs[i]["before_epoch"](epoch)
            losses = _epoch([runs[i] for i in group], epoch, precision)
            for i, loss in zip(group, losses):
                r = runs[i]
                row = {"epoch": epoch + 1, "train_loss": loss}
                if r.get("on_epoch") is not None:
                    row.update(r["on_epoch"](epoch + 1, loss))
                histories[i].append(row)
                _save_checkpoint(r["checkpoint"], {"key": r["key"], "precision": precision, "epoch": epoch + 1,
                                                   "module": r["module"].state_dict(),
                                                   "optimizer": r["optimizer"].state_dict(),
                                                   "history": histories[i]})
    return histories


def _epoch(runs: list[dict], epoch: int, precision: str) -> list[float]:
    """One epoch of every run (``train_one_epoch``'s draws per run), their mean train losses."""
    models = [r["module"].train() for r in runs]
    template = plain_template(models[0])
    device, batch_size, n = runs[0]["device"], runs[0]["batch_size"], len(runs[0]["images"])
    gens = [epoch_generator(r["seed"], epoch, device) for r in runs]
    orders = [torch.randperm(n, generator=torch.Generator().manual_seed(r["seed"] * 1_000_003 + epoch)) for r in runs]
    totals, seen, start = [0.0] * len(runs), 0, time.perf_counter()
    for i in range(0, n, batch_size):
        x = torch.stack([to_float(r["images"][o[i:i + batch_size]], device) for r, o in zip(runs, orders)])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = stacked_forward(models, x, gens, template)
            losses = [nn.functional.mse_loss(o.float(), xk) for o, xk in zip(out.unbind(0), x.unbind(0))]
        for r in runs:
            r["optimizer"].zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for r in runs:
            r["optimizer"].step()
        totals = [t + float(loss.detach()) * x.shape[1] for t, loss in zip(totals, losses)]
        seen += x.shape[1]
    train.LOOP_SECONDS["train"] += time.perf_counter() - start
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


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |a - b| per tensor of two state dicts (their keys must match)."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(set(a) ^ set(b))}")
    return {n: float((a[n].float() - b[n].float()).abs().max()) if a[n].numel() else 0.0 for n in a}
