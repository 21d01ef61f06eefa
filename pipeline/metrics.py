"""SPEC.md's metric definitions, written once and imported everywhere.

- PSNR: images in [0, 1], peak 1, per image ``10 log10(1 / MSE)``, averaged over images
  (cross-checked against ``skimage.metrics.peak_signal_noise_ratio`` in the tests).
- misalignment loss: PSNR(pretrained Tx -> pretrained Rx) - PSNR(agent A's Tx -> agent B's Rx), on
  base test images, after the method's alignment step, for agents adapted to different domains.
- memory cost: bytes stored beyond the shared pretrained model, as % of its fp32 bytes.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

MIN_MSE = 1e-10  # caps PSNR at 100 dB for a perfect reconstruction
# The columns of evaluation.csv: one row per measurement (written by evaluate, read by report).
FIELDS = ["method", "sparsity", "seed", "metric", "domain", "tx", "rx", "value", "unit"]


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair (peak 1), computed in float64."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp_min(MIN_MSE))


def mean_psnr(per_image: torch.Tensor) -> float:
    return float(per_image.mean())


def misalignment(reference_psnr: float, pair_psnr: float) -> float:
    """Loss of PSNR (dB) of an A->B link against the pretrained link."""
    return reference_psnr - pair_psnr


def ordered_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Every ordered pair of distinct agents (A transmits, B receives)."""
    return [(a, b) for a, b in itertools.product(names, names) if a != b]


def tensor_bytes(tensors) -> int:
    """Real byte count of tensors (numel x element size)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters at fp32: the denominator of memory cost."""
    return sum(p.numel() * 4 for p in model.parameters())


def memory_cost_pct(stored_bytes: int, base_fp32_bytes: int) -> float:
    return 100.0 * stored_bytes / base_fp32_bytes
