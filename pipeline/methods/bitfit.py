"""bitfit: only the biases (of every conv and transposed conv) and the PReLU slopes adapt.

Trained with Adam (``bitfit.lr``) for ``adapt.epochs`` with ``adapt.seed`` (sam's budget), every
weight frozen. Stored apart from W0 as the delta ``b - b0`` of each adapted tensor in fp16 (2 bytes
per value, as sam's values), in safetensors with metadata ``kind`` ``bitfit`` and the base
fingerprint; served as ``b0 + delta``. Switched off, each adapted tensor gets back a pristine copy
of its W0 values: the base model bit for bit. Its size does not depend on γ (``USES_SPARSITY`` False):
about 2 bytes per bias and slope (~460 values at width 16, about 1 KB with its header).
"""
from __future__ import annotations

import os
import time

import torch
from torch import nn
from pydantic import Field

from ..config import Block, InputError, LearningRate
from ..fingerprint import base_fingerprint
from ..metrics import fp32_bytes, memory_cost_pct
from ..storage import KIND_KEY, layout_problem, nonfinite, read_adapter, safetensors_bytes, write_atomic
from ..train import data_fingerprint, fingerprint, fit
from . import BASE_AGENT, Context, Variant

NAME = "bitfit"
USES_SPARSITY = False
SWITCH_OFF_EXACT = True  # switched off, every agent computes with W0 bit for bit (claim ZF checks it)
PARAMS = ("model", "train", "adapt.epochs", "adapt.seed", "bitfit", "evaluate.noise_seed", "evaluate.snr_db")


class Config(Block):
    """bitfit: biases and PReLU slopes only."""
    lr: LearningRate = Field(description="Adam learning rate of the biases and slopes (adapt.epochs, adapt.seed)")


class BitFitFileError(InputError):
    """A stored BitFit delta that must not be used (unreadable, another kind, for another base, or not finite)."""


def bitfit_names(model: nn.Module) -> list[str]:
    """Parameter names of every conv / transposed-conv bias and every PReLU slope, in model order."""
    out = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
            out.append(prefix + "bias")
        elif isinstance(m, nn.PReLU):
            out.append(prefix + "weight")
    return out


def save_bitfit(path, tuned: nn.Module, base: nn.Module, *, domain: str) -> None:
    """The fp16 deltas tuned - base of the BitFit tensors, with the base's fingerprint."""
    tp, bp = dict(tuned.named_parameters()), dict(base.named_parameters())
    tensors = {n: (tp[n].detach() - bp[n].detach()).cpu().to(torch.float16).contiguous() for n in bitfit_names(base)}
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise ValueError("BitFit deltas not finite in float16")
    meta = {KIND_KEY: NAME, "base_fingerprint": base_fingerprint(base), "domain": str(domain)}
    write_atomic(path, safetensors_bytes(tensors, meta))


def load_bitfit(path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The fp16 deltas of a stored BitFit, checked against the plain base ``model``; BitFitFileError.

    Refused, in one line naming the file and what is wrong: another kind of file, another base
    (``read_adapter``), a tensor missing, unexpected, of another shape or not fp16, a delta not finite.
    """
    def fail(msg: str) -> BitFitFileError:
        return BitFitFileError(f"{os.fspath(path)}: {msg}")

    tensors, _ = read_adapter(path, NAME, "BitFit", base_fingerprint(model), fail)
    params = dict(model.named_parameters())
    want_shapes = {n: tuple(params[n].shape) for n in bitfit_names(model)}
    if problem := layout_problem(tensors, want_shapes, torch.float16):
        raise fail(f"{problem} (one fp16 delta per bias and PReLU slope of the model)")
    if problem := nonfinite(tensors, "delta"):
        raise fail(problem)
    return tensors


class BitFitAgent:
    """A base copy whose BitFit tensors switch between ``b0 + delta`` (on) and pristine W0 copies (off)."""

    def __init__(self, model: nn.Module, deltas: dict[str, torch.Tensor]):
        self.model = model.requires_grad_(False).eval()
        params = dict(model.named_parameters())
        self._params = {n: params[n] for n in deltas}
        self._w0 = {n: p.detach().clone() for n, p in self._params.items()}
        self._on = {n: self._w0[n] + deltas[n].to(self._w0[n].device, self._w0[n].dtype) for n in deltas}
        self.enabled = None
        self.set_enabled(True)

    @torch.no_grad()
    def set_enabled(self, flag: bool) -> None:
        if self.enabled is bool(flag):
            return
        source = self._on if flag else self._w0
        for n, p in self._params.items():
            p.copy_(source[n])
        self.enabled = bool(flag)


def bitfit_path(ctx: Context, domain: str):
    return ctx.cell(NAME, domain).artifact()


def adapt(ctx: Context, domain: str, sparsity: None, out, tracker) -> dict:
    p = ctx.params
    model = ctx.pretrained()
    base = ctx.pretrained()
    model.requires_grad_(False)
    params = dict(model.named_parameters())
    trained = [params[n].requires_grad_(True) for n in bitfit_names(model)]
    train_x, test_x = ctx.split(f"{domain}_train"), ctx.split(f"{domain}_test")
    opt = torch.optim.Adam(trained, lr=p.bitfit.lr)
    key = fingerprint(NAME, domain, base_fingerprint(base), data_fingerprint(train_x, test_x),
                      p.model_dump(include={"adapt", "bitfit", "train", "model"}))
    start = time.perf_counter()
    curve = fit(model, opt, train_x, lambda x, g: model(x, g), epochs=p.adapt.epochs, batch_size=p.train.batch_size,
                seed=p.adapt.seed, device=ctx.device, checkpoint=ctx.checkpoint(out.name), key=key,
                desc=f"bitfit {out.name}")
    tracker.log_history(curve)
    path = out.artifact()
    save_bitfit(path, model, base, domain=domain)
    served = BitFitAgent(ctx.pretrained(), load_bitfit(path, ctx.pretrained()))  # evaluate what was stored
    nbytes = path.stat().st_size
    return {"method": NAME, "domain": domain, "sparsity": None,
            "domain_psnr": ctx.psnr(ctx.self_link(served.model), test_x),
            "memory_bytes": nbytes, "memory_cost_pct": memory_cost_pct(nbytes, fp32_bytes(base)),
            "details": {"val_psnr": ctx.psnr(ctx.self_link(served.model), ctx.split(f"{domain}_val")),
                        "trainable_parameters": sum(t.numel() for t in trained),
                        "train_seconds": time.perf_counter() - start, "curve": curve}}


def variants(ctx: Context, sparsity: None) -> list[Variant]:
    """Each agent a base copy with its deltas: on to serve its domain, off (W0) to talk."""
    agents = {d: BitFitAgent(ctx.pretrained(), load_bitfit(bitfit_path(ctx, d), ctx.pretrained()))
              for d in ctx.params.domains.names}
    base = ctx.pretrained()  # the unadapted agent holds no delta

    def model(agent: str, enabled: bool) -> nn.Module:
        if agent == BASE_AGENT:
            return base
        agents[agent].set_enabled(enabled)
        return agents[agent].model

    def transmit(a):
        return lambda x, g: ctx.channel(model(a, False))(x, g)

    def receive(a, b):
        return lambda y: model(b, False).decoder(y)

    return [Variant(NAME, None, lambda d: ctx.self_link(model(d, True)), None,
                    lambda d: bitfit_path(ctx, d).stat().st_size,
                    notes={"bytes": "fp16 deltas of every bias and PReLU slope (header included)"},
                    transmit=transmit, receive=receive)]
