"""The SAM file: safetensors holding fp16 values and compact indices, checked against its base on load.

Per kept entry: 2 bytes for its fp16 value plus its index, in whichever of four
encodings is smallest for its layer: `u8gap` (1 byte per gap of fewer than 255
skipped entries, +1 byte per further 255 skipped), uint16 absolute (numel <= 65536),
uint16 gaps (every gap < 65536) or int32 absolute. The metadata holds the layer
table, the sparsity γ and the allocation rule the counts were drawn with, the base
model's fingerprint and a sha256 over metadata and payload.

The same format stores delta_topk's sparse deltas (`pipeline.methods.delta_topk`: the
top-k of |W_tuned - W0| under sam's budget): such a file is a SAM file, loads with
`load_sam` and passes the same checks; only its extra metadata (``method``) tells it apart.

`load_sam` refuses a file, in one line naming the file and what is wrong
(`SAMFileError`), unless every check passes, in this order: it is not another kind
of the pipeline's files; it parses; its format is ``sam/2``; the sha256 matches; it
was made for this base model; the layer table agrees with the payload (counts, byte
counts, encodings, no stream longer or shorter); its layers are the model's, with
the model's weight shapes; each layer's indices are in range for its weight and
strictly increasing (none repeated); every value is finite; the metadata sparsity is
a number in (0, 1] whose budget round(γN) is the file's kept count; and the metadata
allocation gives each layer the count it holds (`pipeline.sam.model.layer_budgets`).
`save_sam` refuses to write a state that would fail the last four.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping

import torch
from safetensors.torch import load as _st_load
from torch import Tensor, nn

from ..config import InputError
from ..fingerprint import base_fingerprint, base_tensors, hash_tensors
from ..storage import nonfinite, safetensors_bytes, write_atomic, wrong_kind
from .budget import ALLOCATIONS
from .model import SAMState, _index_problem, _layers, _state_problem, shape_budgets

FORMAT = "sam/2"
_RESERVED = ("format", "sparsity", "allocation", "base_fingerprint", "layers", "sha256")


class SAMFileError(InputError):
    """A stored SAM that must not be used (unreadable, altered, for another base, or holding what makes no sense)."""


def _payload_digest(meta: Mapping[str, str], tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the metadata (less this digest) and every tensor's name, dtype, shape, bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    hash_tensors(h, tensors)
    return h.hexdigest()


def _budget_problem(state: SAMState, sparsity: str, allocation: str) -> str | None:
    """Where the kept counts of ``state`` disagree with the metadata ``sparsity`` (as stored, a string)
    and ``allocation``: the total against round(γN), then each layer against the rule's count."""
    try:
        gamma = float(sparsity)
    except (TypeError, ValueError):
        gamma = float("nan")
    if not 0.0 < gamma <= 1.0:
        return f"metadata sparsity {sparsity!r} is not a number in (0, 1]"
    if allocation not in ALLOCATIONS:
        return f"metadata allocation {allocation!r} is not one of {', '.join(ALLOCATIONS)}"
    try:
        budget = shape_budgets(state.shapes, gamma, allocation)
    except ValueError as e:
        return f"metadata sparsity {sparsity}: {e}"
    counts = {n: int(state.indices[n].numel()) for n in budget}
    total, kept = sum(budget.values()), sum(counts.values())
    if kept != total:
        n_all = sum(int(torch.Size(shape).numel()) for shape in state.shapes.values())
        return (f"metadata sparsity {sparsity} gives a budget of round(γN) = {total} of N = {n_all} entries, "
                f"the file keeps {kept} (γ = {kept / n_all:.4g})")
    if wrong := [n for n in budget if counts[n] != budget[n]]:
        more = f" ({len(wrong)} layers differ)" if len(wrong) > 1 else ""
        return (f"metadata allocation {allocation!r} gives layer {wrong[0]} {budget[wrong[0]]} entries at "
                f"sparsity {sparsity}, the file keeps {counts[wrong[0]]}{more}")
    return None


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
    file is never replaced by garbage. A state `load_sam` would refuse is not written
    (ValueError): indices out of range or not strictly increasing, values not finite in
    float16, or kept counts other than the budget of `sparsity` and `allocation`.
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
    if problem := _budget_problem(state, repr(float(sparsity)), str(allocation)):
        raise ValueError(problem)
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

    if problem := wrong_kind(path, "sam"):
        raise fail(problem)
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
    problem = (_state_problem(state, _layers(model)) or nonfinite(state.values, "values of layer")
               or _budget_problem(state, meta.get("sparsity"), meta.get("allocation")))
    if problem:
        raise fail(problem)
    return state


def memory_cost(path: str | os.PathLike, model: nn.Module) -> dict[str, float]:
    """File bytes, and as a percentage of the base model's parameters held in fp32."""
    size = os.stat(path).st_size
    unique = {id(t): t for t in base_tensors(model, params_only=True).values()}
    fp32 = sum(t.numel() * 4 for t in unique.values())
    return {"bytes": size, "pct": 100.0 * size / fp32}
