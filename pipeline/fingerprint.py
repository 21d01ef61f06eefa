"""The fingerprint of a base model: a sha256 over its W0, the same with or without an adapter on it.

It lives apart from the tuner so that methods which never use SAM (tuning, equalizer) can hash a
model without importing it. Adapters are seen through by a duck-typed protocol rather than by
type: a module whose class sets ``wraps_base = True`` keeps the layer it wraps as ``.base``, and
only that base's tensors count as W0 (``pipeline.sam.SAMLayer`` is one such wrapper).
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch
from torch import Tensor, nn


def base_tensors(model: nn.Module, params_only: bool = False) -> dict[str, Tensor]:
    """W0 parameters (and buffers) by plain-model name, seen through any ``wraps_base`` wrapper."""
    out: dict[str, Tensor] = {}

    def walk(mod: nn.Module, prefix: str) -> None:
        if getattr(type(mod), "wraps_base", False):  # the adapter's own tensors are not W0
            return walk(mod.base, prefix)
        items = list(mod._parameters.items()) + ([] if params_only else list(mod._buffers.items()))
        out.update({prefix + n: t for n, t in items if t is not None})
        for n, child in mod._modules.items():
            if child is not None:
                walk(child, f"{prefix}{n}.")

    walk(model, "")
    return out


def hash_tensors(h, tensors: Mapping[str, Tensor]) -> None:
    """Feed the hashlib object ``h`` each tensor's name, dtype, shape and raw bytes, sorted by name."""
    for name, t in sorted(tensors.items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        # numpy has no bfloat16: a uint8 view gives the stored bytes of any dtype.
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over W0 (names, dtype, shape, bytes in sorted name order), same with or without SAM."""
    h = hashlib.sha256()
    hash_tensors(h, base_tensors(model))
    return h.hexdigest()
