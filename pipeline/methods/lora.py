"""lora: low-rank adapters on the conv and transposed-conv weights, at sam's stored bytes.

Per adapted layer ``y = base(x) + B(A(x))`` (scaling 1): A is a convolution with the layer's kernel,
stride and padding into ``r`` channels, B a 1x1 convolution from ``r`` to the layer's outputs, so the
layer's delta weight has rank ``r``; W0 is frozen, A starts Kaiming-uniform and B at zero (the delta
starts at 0), trained with Adam (``lora.lr``) for ``adapt.epochs`` with ``adapt.seed`` (sam's budget).
Switched off (``set_lora_enabled(model, False)``) every adapted layer returns its base layer's own
output: the base model bit for bit.

peft and the two layer types. The Conv2d layers use peft 0.21 (``LoraConfig`` + ``inject_adapter_in_model``,
per-layer ranks through ``rank_pattern``/``alpha_pattern``, switched by ``enable_adapters``). peft
0.21 has no LoRA for ConvTranspose2d: its ``dispatch_default`` knows Conv1d/2d/3d, Linear, Embedding
and MultiheadAttention only, and its ``_ConvNd`` would build A as ``type(base)(in, r, k, stride,
padding)``, losing a transposed conv's ``output_padding`` (wrong output size), while its delta-weight
formula assumes the (out, in, k, k) layout a ConvTranspose2d weight does not have (in, out, k, k).
So the decoder's two ConvTranspose2d get ``LoRAConvTranspose2d`` here: the same math and init, A a
ConvTranspose2d with the base's kernel, stride, padding and output_padding.

Equal bytes. sam keeps round(γN) entries at about 3 bytes each plus a header; rank 1 on a layer
costs ``(in·k² + out)`` fp16 values (2 bytes each, as sam's values) and even the cheapest layer
(the first conv: 3·25 + width values) may exceed sam's whole file at small γ. The ranks grow in a
fixed sequence (``rank_sequence``): layers ordered by their rank-1 cost (cheapest first, ties in
model order), rank 1 on each in turn, then rank 2 on each in turn, and so on (a layer stops at
``min(in·k², out)``, the largest useful rank). Every allocation of the sequence is sized exactly
(the bytes of its file, header included), and the cell keeps the one whose file is nearest the
bytes of sam's file for the same domain and γ (``NEEDS = ("sam",)``; ties: the smaller). Where
even the first rank-1 step is farther from sam's bytes than the empty adapter, the empty
allocation is kept: the file holds no tensor, the agent is the pretrained model, and the cell's
details say so (``fits: false``) -- the row is the pretrained model's, at the bytes it really stores.
The cell records the target, the achieved bytes and the two allocations around the target.

The file: safetensors, tensors ``<layer>.lora_A`` / ``<layer>.lora_B`` in fp16, metadata ``kind``
``lora``, the ranks, and the base fingerprint (``pipeline.fingerprint``); a file made for another
base, or of another kind, is refused with one line.
"""
from __future__ import annotations

import json
import math
import os
import re
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

NAME = "lora"
USES_SPARSITY = True  # the budget follows sam's file at each γ
SWITCH_OFF_EXACT = True  # switched off, every agent computes with W0 bit for bit (claim ZF checks it)
NEEDS = ("sam",)  # its cells read sam's file of the same domain and γ (the byte target)
PARAMS = ("model", "train", "adapt.epochs", "adapt.seed", "lora", "evaluate.noise_seed", "evaluate.snr_db")


class Config(Block):
    """lora: low-rank adapters on the conv and transposed-conv weights (ranks sized to sam's bytes)."""
    lr: LearningRate = Field(description="Adam learning rate of the adapters (adapt.epochs, adapt.seed)")
ADAPTER = "default"  # peft's adapter name


class LoRAFileError(InputError):
    """A stored LoRA that must not be used (unreadable, another kind, for another base, factors other than its
    ranks give, or not finite)."""


# ------------------------------------------------------------------------------------------ layers
class LoRAConvTranspose2d(nn.Module):
    """A frozen ConvTranspose2d plus ``B(A(x))``: peft's conv LoRA, for the layer peft 0.21 lacks."""

    wraps_base = True  # pipeline.fingerprint's wrapper protocol: only ``.base`` is W0

    def __init__(self, base: nn.ConvTranspose2d, r: int):
        super().__init__()
        if base.groups != 1 or tuple(base.dilation) != (1, 1):
            raise TypeError("LoRAConvTranspose2d adapts ConvTranspose2d with groups 1 and dilation 1 only")
        self.base = base.requires_grad_(False)
        self.lora_A = nn.ConvTranspose2d(base.in_channels, r, base.kernel_size, base.stride, base.padding,
                                         base.output_padding, bias=False)
        self.lora_B = nn.Conv2d(r, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's init, drawn on the CPU
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight.device, base.weight.dtype)
        self.lora_B.to(base.weight.device, base.weight.dtype)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.lora_B(self.lora_A(x)) if self.enabled else y


def adaptable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The plain model's Conv2d and ConvTranspose2d layers, in model order."""
    return {n: m for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.ConvTranspose2d)}


def _dims(m: nn.Module) -> tuple[int, int]:
    """(values of A per rank, values of B per rank) of a LoRA on layer ``m``."""
    k = math.prod(m.kernel_size)
    return m.in_channels * k, m.out_channels


def max_rank(m: nn.Module) -> int:
    a, b = _dims(m)
    return min(a, b)


def shapes(m: nn.Module, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Weight shapes of A and B at rank ``r`` (peft's Conv2d: A (r, in, k, k); ours: A (in, r, k, k))."""
    kh, kw = m.kernel_size
    a = (r, m.in_channels, kh, kw) if type(m) is nn.Conv2d else (m.in_channels, r, kh, kw)
    return a, (m.out_channels, r, 1, 1)


def rank_sequence(model: nn.Module):
    """Allocations {layer: rank} of growing size: empty, then one rank more at each step (module docstring)."""
    layers = adaptable_layers(model)
    order = sorted(layers, key=lambda n: (sum(_dims(layers[n])), list(layers).index(n)))
    ranks = dict.fromkeys(layers, 0)
    yield dict(ranks)
    level = 1
    while True:
        grew = False
        for n in order:
            if ranks[n] == level - 1 and ranks[n] < max_rank(layers[n]):
                ranks[n] += 1
                grew = True
                yield dict(ranks)
        if not grew:
            return
        level += 1


def attach_lora(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Wrap the layers with a rank > 0 (draws A from torch's global generator: seed before), freeze W0."""
    layers = adaptable_layers(model)
    if unknown := sorted(set(ranks) - set(layers)):
        raise ValueError(f"no adaptable layer named {unknown}")
    model.requires_grad_(False)
    convs = {n: r for n, r in ranks.items() if r > 0 and type(layers[n]) is nn.Conv2d}
    if convs:
        from peft import LoraConfig, inject_adapter_in_model
        pattern = {re.escape(n): r for n, r in convs.items()}
        config = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=list(convs),
                            rank_pattern=pattern, alpha_pattern=dict(pattern))  # alpha = r: scaling 1
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for n, r in ranks.items():
        if r > 0 and type(layers[n]) is nn.ConvTranspose2d:
            parent, _, last = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, last, LoRAConvTranspose2d(layers[n], r))
    for layer in lora_layers(model).values():
        for p in _factors(layer):
            p.requires_grad_(True)
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapted layers (peft's or ours) by plain-model name."""
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in model.named_modules() if isinstance(m, (LoraLayer, LoRAConvTranspose2d))}


def _factors(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    if isinstance(layer, LoRAConvTranspose2d):
        return layer.lora_A.weight, layer.lora_B.weight
    return layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight


def set_lora_enabled(model: nn.Module, flag: bool) -> None:
    """Switch every adapter on or off; off, each layer returns its base layer's output (W0 bit for bit)."""
    for layer in lora_layers(model).values():
        if isinstance(layer, LoRAConvTranspose2d):
            layer.enabled = bool(flag)
        else:
            layer.enable_adapters(bool(flag))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for layer in lora_layers(model).values() for p in _factors(layer)]


# ------------------------------------------------------------------------------------------ file
def _meta(ranks: dict[str, int], base_fp: str, sparsity: float, domain: str) -> dict[str, str]:
    kept = {n: r for n, r in ranks.items() if r > 0}
    return {KIND_KEY: NAME, "base_fingerprint": base_fp, "ranks": json.dumps(kept, separators=(",", ":")),
            "sparsity": repr(float(sparsity)), "domain": str(domain)}


def file_bytes(model: nn.Module, ranks: dict[str, int], meta: dict[str, str]) -> bytes:
    """The file of an allocation with zero factors: its length is the stored file's, exactly."""
    layers = adaptable_layers(model)
    tensors = {}
    for n, r in ranks.items():
        if r > 0:
            a, b = shapes(layers[n], r)
            tensors[f"{n}.lora_A"] = torch.zeros(a, dtype=torch.float16)
            tensors[f"{n}.lora_B"] = torch.zeros(b, dtype=torch.float16)
    return safetensors_bytes(tensors, meta)


def choose_ranks(model: nn.Module, target: int, base_fp: str, sparsity: float, domain: str) -> dict:
    """The allocation of ``rank_sequence`` whose file is nearest ``target`` bytes (ties: the smaller),
    with the sizes of the allocations just below and above the target."""
    below = above = None
    for ranks in rank_sequence(model):
        size = len(file_bytes(model, ranks, _meta(ranks, base_fp, sparsity, domain)))
        if size <= target:
            below = (ranks, size)
        else:
            above = (ranks, size)
            break
    if below is None:  # even the empty adapter's file is larger than the target
        chosen = above
    elif above is None or target - below[1] <= above[1] - target:
        chosen = below
    else:
        chosen = above
    return {"ranks": chosen[0], "bytes": chosen[1], "bytes_below": below[1] if below else None,
            "bytes_above": above[1] if above else None}


def save_lora(path, model: nn.Module, ranks: dict[str, int], *, base_fp: str, sparsity: float, domain: str) -> None:
    tensors = {}
    for n, layer in lora_layers(model).items():
        a, b = _factors(layer)
        tensors[f"{n}.lora_A"] = a.detach().cpu().to(torch.float16).contiguous()
        tensors[f"{n}.lora_B"] = b.detach().cpu().to(torch.float16).contiguous()
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise ValueError("LoRA factors not finite in float16")
    write_atomic(path, safetensors_bytes(tensors, _meta(ranks, base_fp, sparsity, domain)))


def load_lora(path, model: nn.Module) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """(ranks, fp16 factors) of a stored LoRA, checked against the plain base ``model``; LoRAFileError.

    Refused, in one line naming the file and what is wrong: another kind of file, another base
    (``read_adapter``), unreadable ranks, a rank for a layer the model lacks or outside [1, max rank],
    a factor missing, unexpected, of another shape than its rank gives or not fp16, a factor not finite.
    """
    def fail(msg: str) -> LoRAFileError:
        return LoRAFileError(f"{os.fspath(path)}: {msg}")

    tensors, meta = read_adapter(path, NAME, "LoRA", base_fingerprint(model), fail)
    try:
        ranks = {str(n): int(r) for n, r in json.loads(meta["ranks"]).items()}
    except Exception as e:  # noqa: BLE001 - any parse failure means an unusable file
        raise fail(f"truncated or unreadable LoRA file ({type(e).__name__})") from None
    layers = adaptable_layers(model)
    if unknown := sorted(set(ranks) - set(layers)):
        raise fail(f"layers {unknown} are not in this model")
    want_shapes = {}
    for n, r in ranks.items():
        if not 0 < r <= max_rank(layers[n]):
            raise fail(f"layer {n}: rank {r} outside [1, {max_rank(layers[n])}]")
        a, b = shapes(layers[n], r)
        want_shapes.update({f"{n}.lora_A": a, f"{n}.lora_B": b})
    if problem := layout_problem(tensors, want_shapes, torch.float16):
        raise fail(f"{problem} (the fp16 factors of the metadata's ranks)")
    if problem := nonfinite(tensors, "factor"):
        raise fail(problem)
    return {n: ranks.get(n, 0) for n in layers}, tensors


def install_lora(model: nn.Module, ranks: dict[str, int], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Wrap the plain ``model`` with ``ranks`` and load the stored factors (fp16 values, exactly as stored)."""
    attach_lora(model, ranks)
    with torch.no_grad():
        for n, layer in lora_layers(model).items():
            a, b = _factors(layer)
            a.copy_(tensors[f"{n}.lora_A"])
            b.copy_(tensors[f"{n}.lora_B"])
    return model.requires_grad_(False).eval()


# ------------------------------------------------------------------------------------------ method
def lora_path(ctx: Context, domain: str, sparsity: float):
    return ctx.cell(NAME, domain, sparsity).artifact()


def sam_bytes(ctx: Context, domain: str, sparsity: float) -> int:
    """The byte target: sam's stored file of the same agent and γ."""
    path = ctx.cell("sam", domain, sparsity).artifact()
    if not path.is_file():
        raise InputError(f"{path}: sam's file is missing; lora sizes its ranks to it (run adapt_sam first)")
    return path.stat().st_size


def adapt(ctx: Context, domain: str, sparsity: float, out, tracker) -> dict:
    p = ctx.params
    target = sam_bytes(ctx, domain, sparsity)
    model = ctx.pretrained()
    base_fp = base_fingerprint(model)
    choice = choose_ranks(model, target, base_fp, sparsity, domain)
    ranks = choice["ranks"]
    torch.manual_seed(p.adapt.seed)  # A's initial draw
    attach_lora(model, ranks)
    params = lora_parameters(model)
    train_x, test_x = ctx.split(f"{domain}_train"), ctx.split(f"{domain}_test")
    start, curve = time.perf_counter(), []
    if params:  # the empty allocation trains nothing: the agent is the pretrained model
        opt = torch.optim.Adam(params, lr=p.lora.lr)
        key = fingerprint(NAME, domain, sparsity, ranks, base_fp, data_fingerprint(train_x, test_x),
                          p.model_dump(include={"adapt", "lora", "train", "model"}))
        curve = fit(model, opt, train_x, lambda x, g: model(x, g), epochs=p.adapt.epochs,
                    batch_size=p.train.batch_size, seed=p.adapt.seed, device=ctx.device,
                    checkpoint=ctx.checkpoint(out.name), key=key, desc=f"lora {out.name}")
        tracker.log_history(curve)
    path = out.artifact()
    save_lora(path, model, ranks, base_fp=base_fp, sparsity=sparsity, domain=domain)
    served = install_lora(ctx.pretrained(), *load_lora(path, ctx.pretrained()))  # evaluate what was stored
    nbytes = path.stat().st_size
    assert nbytes == choice["bytes"], (nbytes, choice)
    return {"method": NAME, "domain": domain, "sparsity": sparsity,
            "domain_psnr": ctx.psnr(ctx.self_link(served), test_x),
            "memory_bytes": nbytes, "memory_cost_pct": memory_cost_pct(nbytes, fp32_bytes(ctx.pretrained())),
            "details": {"val_psnr": ctx.psnr(ctx.self_link(served), ctx.split(f"{domain}_val")), "ranks": {n: r for n, r in ranks.items() if r > 0}, "fits": any(ranks.values()),
                        "trainable_parameters": sum(t.numel() for t in params),
                        "target_bytes": target, "achieved_bytes": nbytes, "bytes_ratio": nbytes / target,
                        "bytes_below": choice["bytes_below"], "bytes_above": choice["bytes_above"],
                        "train_seconds": time.perf_counter() - start, "curve": curve}}


def variants(ctx: Context, sparsity: float) -> list[Variant]:
    """Each agent its own base copy with its adapters (ranks differ by domain): on to serve, off to talk."""
    agents = {}
    for d in ctx.params.domains.names:
        agents[d] = install_lora(ctx.pretrained(), *load_lora(lora_path(ctx, d, sparsity), ctx.pretrained()))
    agents[BASE_AGENT] = ctx.pretrained()  # the unadapted agent holds no adapter

    def local(d):
        set_lora_enabled(agents[d], True)
        return ctx.self_link(agents[d])

    def transmit(a):
        def encode(x, g):
            set_lora_enabled(agents[a], False)
            return ctx.channel(agents[a])(x, g)
        return encode

    def receive(a, b):
        def decode(y):
            set_lora_enabled(agents[b], False)
            return agents[b].decoder(y)
        return decode

    return [Variant(NAME, sparsity, local, None, lambda d: lora_path(ctx, d, sparsity).stat().st_size,
                    notes={"bytes": "the adapter file (fp16 factors, header included), sized to sam's file"},
                    transmit=transmit, receive=receive)]
