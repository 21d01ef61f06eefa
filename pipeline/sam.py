"""Sparse additive modification (SAM): the "zero-forget" adapter (arXiv 2411.19385).

A frozen pretrained model keeps its weights W0. SAM adds a sparse delta,
W = W0 + m ⊙ v, where the binary mask m keeps exactly k entries per weight
tensor; "sparsity" γ is the kept fraction (the k's sum to round(γN)). Switched
off, the model computes with W0 bit for bit, so nothing the base model knew is
forgotten; the delta is stored apart from the base model as (indices, values).

Stored size: 2 bytes per kept entry for its fp16 value plus its index, in
whichever of four encodings is smallest for its layer (chosen per layer):
`u8gap` (1 byte per gap of fewer than 255 skipped entries, +1 byte per further
255 skipped), uint16 absolute (numel <= 65536), uint16 gaps (every gap < 65536)
or int32 absolute; so the index costs at most 2 bytes whenever the layer has at
most 65536 entries, and about 1 byte when the layer keeps more than ~1 % of it.
The file is then ~3 bytes per kept entry against γ's budget of 4 (fp32) per
parameter, plus a header under 1 KiB (layer table, two sha256s): it is below
γ of the base model's fp32 bytes once about a thousand entries are kept
(γ = 1 % of a 144k-parameter model: 0.95 %), not for tiny γN.

Only the weights of Conv2d, ConvTranspose2d and Linear layers adapt. Biases and
every other parameter or buffer (PReLU slopes, norms) stay part of W0: they are
frozen and take no part in the budget, so "SAM off" is exactly the base model.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load as _st_load
from torch import Tensor, nn

from .config import InputError
from .storage import safetensors_bytes, write_atomic

ALLOCATIONS = ("linear", "uniform", "product")
FORMAT = "sam/2"
_RESERVED = ("format", "sparsity", "allocation", "base_fingerprint", "layers", "sha256")


class SAMFileError(InputError):
    """A stored SAM that must not be used (unreadable, altered, or for another base)."""


# ----------------------------------------------------------------------------- budget
def _largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split `total` proportionally to integer `weights`; exact integer arithmetic, ties by order."""
    wsum = sum(weights.values())
    share = {n: total * w // wsum for n, w in weights.items()}
    order = sorted(weights, key=lambda n: -(total * weights[n] % wsum))  # stable sort: ties keep order
    for n in order[: total - sum(share.values())]:
        share[n] += 1
    return share


def allocate_budget(layers: Mapping[str, tuple[int, int, int]], sparsity: float,
                    allocation: str = "linear") -> dict[str, int]:
    """Kept entries per layer; `layers` maps name -> (numel, d_in, d_out).

    The total is round(sparsity * N) with N = sum of numel (Python's round, half to
    even), so the model-wide sparsity is exact. It is spread proportionally to
    d_in + d_out (`linear`, the paper's rule), numel (`uniform`: the same ratio in
    every layer) or d_in * d_out (`product`), rounded by the largest-remainder
    method. A layer whose share exceeds its numel is capped at numel and the excess
    is split among the other layers by the same rule, repeatedly.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if not 0.0 < sparsity <= 1.0:
        raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
    if any(numel <= 0 for numel, _, _ in layers.values()):
        raise ValueError("every layer needs numel > 0")
    total = round(sparsity * sum(numel for numel, _, _ in layers.values()))
    if total == 0:
        raise ValueError(f"sparsity {sparsity} keeps no entry of {len(layers)} layers")
    rule = {"linear": lambda n, i, o: i + o, "uniform": lambda n, i, o: n,
            "product": lambda n, i, o: i * o}[allocation]
    free = {name: int(rule(*dims)) for name, dims in layers.items()}
    budget: dict[str, int] = {}
    while free:
        share = _largest_remainder(total - sum(budget.values()), free)
        over = [n for n in free if share[n] > layers[n][0]]
        if not over:
            budget.update(share)
            break
        for n in over:
            budget[n] = layers[n][0]
            del free[n]
    return {n: budget[n] for n in layers}


# ----------------------------------------------------------------------------- layer
class _MaskedValues(torch.autograd.Function):
    """delta = mask ⊙ values, with a straight-through backward.

    The backward treats the mask as the identity for both inputs of the product:
    grad_scores = g * values, grad_values = g. With the exact grad_values = g * mask,
    masked-out values would stay 0 and so would their scores' gradient g * values:
    the mask could never grow. Letting every value learn makes the scores move.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(values)
        return values * mask

    @staticmethod
    def backward(ctx, g: Tensor):
        (values,) = ctx.saved_tensors
        return g * values, g, None


def _adaptable(m: nn.Module) -> bool:
    # MultiheadAttention's out_proj is a Linear subclass whose weight is read directly.
    return (isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
            and type(m).__name__ != "NonDynamicallyQuantizableLinear")


class SAMLayer(nn.Module):
    """One base layer plus its sparse delta. The base's parameters are never written.

    mode "train": trainable `scores` and `values` (weight-shaped); the mask is the
    top-k of the scores. mode "stored": sorted int64 `indices` and their `values`
    (kept in the dtype they came in); the effective weight is a merged copy of W0,
    cached, so serving costs the same as the base. `enabled=False` runs the very
    `base.weight` tensor, i.e. the base model bit for bit.
    """

    def __init__(self, base: nn.Module, k: int | None = None):
        super().__init__()
        if not _adaptable(base):
            raise TypeError(f"SAM adapts Conv2d, ConvTranspose2d or Linear, not {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.enabled = True
        self.register_buffer("indices", None, persistent=False)
        self._merged: Tensor | None = None
        self._merged_key: tuple | None = None
        w = base.weight.detach()
        if k is None:  # stored mode, empty delta until install()
            self.install(torch.zeros(0, dtype=torch.long), w.new_zeros(0))
            return
        if not 0 <= k <= w.numel():
            raise ValueError(f"k={k} outside [0, {w.numel()}]")
        self.mode, self.k = "train", int(k)
        # Scores start at |W0| over the layer's mean |W0|: the initial mask keeps the
        # largest base weights and scores of different layers live on one scale.
        a = w.abs()
        self.scores = nn.Parameter(a / a.mean().clamp_min(torch.finfo(a.dtype).tiny))
        self.values = nn.Parameter(torch.zeros_like(w))  # delta starts at 0: W = W0

    def _topk(self) -> Tensor:
        return self.scores.detach().flatten().topk(self.k, sorted=False).indices

    def mask(self) -> Tensor:
        """Boolean mask (weight-shaped) of the kept entries."""
        w = self.base.weight
        idx = self.indices if self.mode == "stored" else self._topk()
        flat = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        flat[idx] = True
        return flat.view(w.shape)

    def kept(self, values_dtype: torch.dtype | None = torch.float16) -> tuple[Tensor, Tensor]:
        """(sorted int64 flat indices, values there), values cast to `values_dtype` (None: keep)."""
        if self.mode == "stored":
            idx, val = self.indices, self.values
        else:
            idx = self._topk().sort().values
            val = self.values.detach().flatten()[idx]
        val = val.detach().clone() if values_dtype is None else val.detach().to(values_dtype, copy=True)
        return idx.clone(), val

    def install(self, indices: Tensor, values: Tensor) -> None:
        """Switch to a stored delta (copied), dropping scores/values or any previous state."""
        w = self.base.weight
        self._parameters.pop("values", None)
        self.register_parameter("scores", None)
        self.register_buffer("values", values.detach().to(w.device, copy=True), persistent=False)
        self.indices = indices.detach().to(w.device, torch.long, copy=True)
        self.mode, self.k = "stored", int(indices.numel())
        self._merged_key = None
        self._stored_weight()

    def _stored_weight(self) -> Tensor:
        """W0 + delta as one merged copy; rebuilt only if W0 moved or was changed in place."""
        w = self.base.weight
        if self.indices.numel() == 0:  # empty delta: no copy needed
            return w
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._merged_key != key:
            flat = w.detach().flatten().clone()
            flat.index_add_(0, self.indices, self.values.to(w.device, w.dtype))
            self._merged, self._merged_key = flat.view(w.shape), key
        return self._merged

    def effective_weight(self) -> Tensor:
        w = self.base.weight
        if not self.enabled:
            return w
        if self.mode == "stored":
            return self._stored_weight()
        return w + _MaskedValues.apply(self.scores, self.values, self.mask())

    def forward(self, x: Tensor) -> Tensor:
        b, w = self.base, self.effective_weight()
        if isinstance(b, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, w, b.bias, b.stride, b.padding, b.output_padding, b.groups, b.dilation)
        if isinstance(b, nn.Conv2d):
            return b._conv_forward(x, w, b.bias)
        return F.linear(x, w, b.bias)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, k={self.k}, enabled={self.enabled}"


# ----------------------------------------------------------------------------- model API
@dataclass
class SAMState:
    """A frozen SAM: per layer (plain-model name) sorted int64 indices, values, weight shape."""
    indices: dict[str, Tensor]
    values: dict[str, Tensor]
    shapes: dict[str, tuple[int, ...]]
    meta: dict[str, str] = field(default_factory=dict)

    def kept(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())


def _layers(model: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Adaptable layers (plain or already wrapped) by the names the plain model has."""
    out: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if isinstance(child, SAMLayer) or _adaptable(child):
            out[prefix + name] = child
        else:
            out.update(_layers(child, f"{prefix}{name}."))
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, last = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, last, new)


def sam_layers(model: nn.Module) -> dict[str, SAMLayer]:
    return {n: m for n, m in _layers(model).items() if isinstance(m, SAMLayer)}


def layer_budgets(model: nn.Module, sparsity: float, allocation: str = "linear") -> dict[str, int]:
    """Kept entries per adaptable layer of ``model`` (by plain-model name) for this budget rule."""
    weights = {n: (m.base if isinstance(m, SAMLayer) else m).weight for n, m in _layers(model).items()}
    dims = {n: (w.numel(), *nn.init._calculate_fan_in_and_fan_out(w))
            for n, w in weights.items()}  # ConvTranspose2d: torch's (in, out/groups, kh, kw) convention
    return allocate_budget(dims, sparsity, allocation)


def attach_sam(model: nn.Module, sparsity: float, allocation: str = "linear") -> nn.Module:
    """Wrap every adaptable layer in place (training mode), freeze all base parameters."""
    layers = _layers(model)
    if not layers or any(isinstance(m, SAMLayer) for m in layers.values()):
        raise ValueError("model has no adaptable layer or already carries SAM")
    model.requires_grad_(False)
    budget = layer_budgets(model, sparsity, allocation)
    for n, m in layers.items():
        _replace(model, n, SAMLayer(m, budget[n]))
    _remember_layers(model)
    return model


def sam_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(scores, values) of training-mode layers, for two optimizer groups (paper: lr 1 and 1e-4)."""
    train = [m for m in sam_layers(model).values() if m.mode == "train"]
    return [m.scores for m in train], [m.values for m in train]


def _remember_layers(model: nn.Module) -> None:
    """Keep the SAM layers of ``model`` as a plain tuple, so switching costs no module-tree walk."""
    model.__dict__["_sam_switch"] = tuple(sam_layers(model).values())


def set_sam_enabled(model: nn.Module, flag: bool) -> None:
    """Switch every SAM layer on or off: about a microsecond, W0 untouched.

    Uses the layers wrapped by the last ``attach_sam``/``install_sam`` on this model (a layer swapped
    in by hand afterwards is found by a fresh walk only if nothing was remembered)."""
    layers = model.__dict__.get("_sam_switch")
    if layers is None:
        _remember_layers(model)
        layers = model.__dict__["_sam_switch"]
    flag = bool(flag)
    for m in layers:
        m.__dict__["enabled"] = flag  # a plain attribute: skip nn.Module.__setattr__


def sam_state(model: nn.Module, values_dtype: torch.dtype | None = torch.float16) -> SAMState:
    """Freeze the current top-k. Values are rounded to fp16 by default, i.e. exactly what
    `save_sam` stores, so evaluating the installed state in-process equals the loaded one."""
    st = SAMState({}, {}, {})
    for n, m in sam_layers(model).items():
        st.indices[n], st.values[n] = m.kept(values_dtype)
        st.shapes[n] = tuple(m.base.weight.shape)
    return st


def _index_problem(idx: Tensor, val: Tensor, numel: int) -> str | None:
    if idx.dtype != torch.long or idx.dim() != 1 or val.dim() != 1 or len(idx) != len(val):
        return "indices must be 1-D int64 with one value each"
    if not val.is_floating_point():
        return "values must be floating point"
    if len(idx) and (idx.min() < 0 or idx.max() >= numel):
        return f"indices out of range [0, {numel})"
    if len(idx) > 1 and not bool((idx[1:] > idx[:-1]).all()):
        return "indices not strictly increasing"
    return None


def _state_problem(state: SAMState, layers: Mapping[str, nn.Module]) -> str | None:
    names = set(layers)
    if set(state.indices) != names or set(state.values) != names or set(state.shapes) != names:
        return (f"layer names differ from the model's (missing {sorted(names - set(state.indices))}, "
                f"unexpected {sorted(set(state.indices) - names)})")
    for n, m in layers.items():
        w = m.base.weight if isinstance(m, SAMLayer) else m.weight
        if tuple(state.shapes[n]) != tuple(w.shape):
            return f"layer {n}: shape {tuple(state.shapes[n])} != model's {tuple(w.shape)}"
        problem = _index_problem(state.indices[n], state.values[n], w.numel())
        if problem:
            return f"layer {n}: {problem}"
    return None


def install_sam(model: nn.Module, state: SAMState) -> nn.Module:
    """Switch the model to `state` (wrapping plain layers if needed); W0 is not touched,
    so several states can be held in memory and swapped at the cost of one merge each."""
    layers = _layers(model)
    problem = _state_problem(state, layers)
    if problem:
        raise ValueError(problem)
    for n, m in layers.items():
        if not isinstance(m, SAMLayer):
            m = SAMLayer(m)
            _replace(model, n, m)
        m.install(state.indices[n], state.values[n])
    _remember_layers(model)
    return model


def _base_tensors(model: nn.Module, params_only: bool = False) -> dict[str, Tensor]:
    """W0 parameters (and buffers) by plain-model name, seen through any SAMLayer."""
    out: dict[str, Tensor] = {}

    def walk(mod: nn.Module, prefix: str) -> None:
        if isinstance(mod, SAMLayer):
            return walk(mod.base, prefix)
        items = list(mod._parameters.items()) + ([] if params_only else list(mod._buffers.items()))
        out.update({prefix + n: t for n, t in items if t is not None})
        for n, child in mod._modules.items():
            if child is not None:
                walk(child, f"{prefix}{n}.")

    walk(model, "")
    return out


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over W0 (names, dtype, shape, bytes in sorted name order), same with or without SAM."""
    h = hashlib.sha256()
    for name, t in sorted(_base_tensors(model).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


# ----------------------------------------------------------------------------- storage
def _payload_digest(meta: Mapping[str, str], tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the metadata (less this digest) and every tensor's name, dtype, shape, bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name, t in sorted(tensors.items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


_U8_ESC = 255  # u8gap continuation byte: "255 more skipped entries, keep reading"


def _u8gap_gaps(idx: Tensor) -> Tensor:
    """d_0 = i_0, d_j = i_j - i_{j-1} - 1: entries skipped before each kept one (>= 0)."""
    return torch.diff(idx, prepend=idx.new_full((1,), -1)) - 1


def _u8gap_size(idx: Tensor) -> int:
    """Bytes of the u8gap stream of sorted `idx`: one terminator per entry + one 255 per 255 skipped."""
    return int((_u8gap_gaps(idx) // _U8_ESC).sum()) + len(idx)


def _u8gap_encode(idx: Tensor) -> Tensor:
    """Strictly increasing int64 `idx` -> uint8 stream: each gap d as (d // 255) bytes 255, then d % 255."""
    d = _u8gap_gaps(idx.to(torch.long))
    q, r = d // _U8_ESC, d % _U8_ESC
    ends = (q + 1).cumsum(0) - 1  # terminator positions
    out = torch.full((int(ends[-1]) + 1 if len(ends) else 0,), _U8_ESC, dtype=torch.uint8)
    out[ends] = r.to(torch.uint8)
    return out


def _u8gap_decode(stream: Tensor, count: int) -> Tensor:
    """Inverse of `_u8gap_encode`, vectorised; ValueError unless `stream` holds exactly `count` gaps."""
    b = stream.to(torch.long)
    ends = (b < _U8_ESC).nonzero().squeeze(1)
    if len(ends) != count or (len(b) and int(b[-1]) == _U8_ESC):
        tail = ", ends inside a gap (trailing 255)" if len(b) and int(b[-1]) == _U8_ESC else ""
        raise ValueError(f"malformed or truncated u8gap index stream: {len(b)} bytes hold "
                         f"{len(ends)} gaps for {count} entries{tail}")
    csum = b.cumsum(0)
    d = torch.diff(csum[ends], prepend=csum.new_zeros(1))
    return (d + 1).cumsum(0) - 1


def _encode(idx: Tensor, numel: int) -> tuple[str, Tensor]:
    """The smallest index stream for sorted int64 `idx` of a layer with `numel` entries.

    'g': u8gap bytes; 'a': uint16 absolute (numel <= 65536); 'd': uint16 gaps (every
    gap < 65536); 'i': int32 absolute (numel < 2**31). Ties go to the earlier one.
    """
    k = len(idx)
    sizes = {"g": _u8gap_size(idx)}
    if numel <= 1 << 16:
        sizes["a"] = 2 * k
    gaps = torch.diff(idx, prepend=idx.new_zeros(1))
    if k == 0 or int(gaps.max()) < 1 << 16:
        sizes["d"] = 2 * k
    if numel <= 2**31 - 1:
        sizes["i"] = 4 * k
    enc = min(sizes, key=sizes.__getitem__)  # dicts keep order: ties go to the earlier
    if enc == "g":
        return enc, _u8gap_encode(idx)
    return enc, idx.to(torch.int32) if enc == "i" else (idx if enc == "a" else gaps).to(torch.uint16)


# encoding -> safetensors stream holding its indices (all layers' streams concatenated)
_STREAMS = {"g": "indices_u8", "a": "indices_u16", "d": "indices_u16", "i": "indices_i32"}
_DTYPES = {"indices_u8": torch.uint8, "indices_u16": torch.uint16, "indices_i32": torch.int32,
           "values": torch.float16}


def save_sam(path: str | os.PathLike, state: SAMState, *, sparsity: float, allocation: str,
             base_fingerprint: str, extra_meta: Mapping[str, str] | None = None) -> None:
    """Write `state` as safetensors: fp16 values, compact indices, one tensor per stream.

    Per kept entry: 2 bytes of value + the index in its layer's smallest encoding
    (`_encode`): about 1 byte for u8gap, 2 for uint16, 4 for int32; never more than 2
    for a layer of <= 65536 entries. The metadata holds the layer table as compact
    JSON, one [name, count, encoding, shape] per layer, plus the stream's byte count
    for u8gap layers. Written to a temporary file and renamed, so an existing good
    file is never replaced by garbage.
    """
    streams: dict[str, list[Tensor]] = {k: [] for k in _DTYPES}
    layers = []
    for n, idx in state.indices.items():
        shape, val = tuple(state.shapes[n]), state.values[n].detach().cpu().to(torch.float16)
        numel = int(torch.Size(shape).numel())
        problem = _index_problem(idx, val, numel)
        if problem or not bool(torch.isfinite(val).all()):
            raise ValueError(f"layer {n}: {problem or 'values not finite in float16'}")
        enc, raw = _encode(idx.detach().cpu(), numel)
        streams[_STREAMS[enc]].append(raw)
        streams["values"].append(val)
        layers.append([n, len(idx), enc, list(shape)] + ([len(raw)] if enc == "g" else []))
    tensors = {k: torch.cat(v) for k, v in streams.items() if sum(len(t) for t in v)}
    meta = {"format": FORMAT, "sparsity": repr(float(sparsity)), "allocation": str(allocation),
            "base_fingerprint": base_fingerprint, "layers": json.dumps(layers, separators=(",", ":"))}
    extra = {str(k): str(v) for k, v in (extra_meta or {}).items()}
    if set(extra) & set(_RESERVED):
        raise ValueError(f"extra_meta may not use reserved keys {sorted(set(extra) & set(_RESERVED))}")
    meta.update(extra)
    meta["sha256"] = _payload_digest(meta, tensors)
    write_atomic(path, safetensors_bytes(tensors, meta))


def load_sam(path: str | os.PathLike, model: nn.Module) -> SAMState:
    """Read and check a stored SAM against `model` (plain or with SAM); raise SAMFileError."""
    def fail(msg: str) -> SAMFileError:
        return SAMFileError(f"{os.fspath(path)}: {msg}")

    try:
        with open(path, "rb") as f:
            data = f.read()
        tensors = _st_load(data)
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
        layers = json.loads(meta["layers"])
    except Exception as e:  # noqa: BLE001 - any parse failure means an unusable file
        why = (str(e).splitlines() or [""])[0]
        raise fail(f"truncated or unreadable SAM file ({type(e).__name__}: {why})") from None
    if meta.get("format") != FORMAT:
        raise fail(f"format {meta.get('format')!r} is not {FORMAT!r}")
    if _payload_digest(meta, tensors) != meta.get("sha256"):
        raise fail("altered file: sha256 of metadata and payload does not match")
    fp, want = base_fingerprint(model), str(meta.get("base_fingerprint"))
    if fp != want:
        raise fail(f"wrong base model: SAM was made for base {want[:12]}, this model is {fp[:12]}")
    try:
        if set(tensors) - set(_DTYPES):
            raise ValueError(f"unexpected tensors {sorted(set(tensors) - set(_DTYPES))}")
        tensors = {k: tensors.get(k, torch.zeros(0, dtype=dt)) for k, dt in _DTYPES.items()}
        for k, t in tensors.items():
            if t.dtype != _DTYPES[k] or t.dim() != 1:
                raise ValueError(f"tensor {k} is {t.dtype} {tuple(t.shape)}, not 1-D {_DTYPES[k]}")
        streams = dict.fromkeys(_DTYPES, 0)  # read position in each stream
        state = SAMState({}, {}, {}, dict(meta))
        for row in layers:
            name, count, enc, shape, *rest = row
            if enc not in _STREAMS:
                raise ValueError(f"layer {name}: unknown encoding {enc!r}")
            if enc == "g":
                (size,) = rest  # the layer's byte count in indices_u8
            elif rest:
                raise ValueError(f"layer {name}: unexpected fields {rest}")
            else:
                size = count
            if not (type(count) is int and count >= 0 and type(size) is int and size >= 0):
                raise ValueError(f"layer {name}: bad count or byte count in {row}")
            key = _STREAMS[enc]
            raw = tensors[key][streams[key]:streams[key] + size]
            vals = tensors["values"][streams["values"]:streams["values"] + count]
            if len(raw) != size or len(vals) != count:
                raise ValueError(f"layer {name}: payload shorter than its count")
            streams[key] += size
            streams["values"] += count
            if enc == "g":
                try:
                    state.indices[name] = _u8gap_decode(raw, count)
                except ValueError as e:
                    raise SAMFileError(f"{os.fspath(path)}: layer {name}: {e}") from None
            else:
                raw = raw.to(torch.long)
                state.indices[name] = raw.cumsum(0) if enc == "d" else raw
            state.values[name], state.shapes[name] = vals.clone(), tuple(shape)
        if any(streams[k] != len(tensors[k]) for k in streams):
            raise ValueError("payload longer than the layers' counts")
    except SAMFileError:
        raise
    except (ValueError, TypeError) as e:
        raise fail(f"inconsistent layer table: {e}") from None
    problem = _state_problem(state, _layers(model))
    if problem:
        raise fail(problem)
    return state


def memory_cost(path: str | os.PathLike, model: nn.Module) -> dict[str, float]:
    """File bytes, and as a percentage of the base model's parameters held in fp32."""
    size = os.stat(path).st_size
    unique = {id(t): t for t in _base_tensors(model, params_only=True).values()}
    fp32 = sum(t.numel() * 4 for t in unique.values())
    return {"bytes": size, "pct": 100.0 * size / fp32}
