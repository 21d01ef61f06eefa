"""SPEC.md's metric definitions: PSNR (cross-checked with skimage), memory cost, ordered pairs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio
from torch import nn

from pipeline import metrics
from pipeline.model import SCModel


def test_psnr_per_image_matches_skimage():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    noise = torch.randn(8, 3, 32, 32, generator=g) * torch.linspace(0.001, 0.3, 8).view(-1, 1, 1, 1)
    y = (x + noise).clamp(0, 1)
    ours = metrics.psnr_per_image(y, x)
    assert ours.shape == (8,) and ours.dtype == torch.float64
    ref = torch.tensor([peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1.0) for i in range(8)],
                       dtype=torch.float64)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-6)
    assert len(set(ours.tolist())) == 8  # really per image


def test_psnr_is_symmetric_and_float64_inside():
    x = torch.full((1, 3, 4, 4), 0.5)
    y = x + 1e-4  # an MSE of 1e-8: fp32 squaring would lose digits
    assert torch.allclose(metrics.psnr_per_image(x, y), torch.tensor([80.0], dtype=torch.float64), atol=1e-3)
    assert torch.equal(metrics.psnr_per_image(x, y), metrics.psnr_per_image(y, x))


def test_psnr_of_identical_images_is_capped():
    x = torch.rand(3, 3, 8, 8)
    p = metrics.psnr_per_image(x, x.clone())
    assert torch.isfinite(p).all()
    assert torch.allclose(p, torch.full((3,), 10 * np.log10(1 / metrics.MIN_MSE), dtype=torch.float64))


def test_mean_psnr_and_misalignment():
    assert metrics.mean_psnr(torch.tensor([10.0, 20.0, 30.0])) == pytest.approx(20.0)
    assert isinstance(metrics.mean_psnr(torch.tensor([1.0])), float)
    assert metrics.misalignment(25.0, 21.5) == pytest.approx(3.5)
    assert metrics.misalignment(25.0, 25.0) == 0.0


def test_fp32_bytes_counts_real_parameters():
    model = SCModel(width=4)
    manual = sum(p.numel() for _, p in model.named_parameters()) * 4
    assert metrics.fp32_bytes(model) == manual
    prelus = sum(p.numel() for m in model.modules() if isinstance(m, nn.PReLU) for p in m.parameters())
    assert prelus > 0  # PReLU slopes are parameters too and are included above
    assert metrics.fp32_bytes(model.half()) == manual  # the denominator is fp32, whatever the storage


def test_fp32_bytes_counts_shared_parameters_once():
    lin = nn.Linear(10, 10)
    tied = nn.Sequential(lin, nn.ReLU(), lin)
    assert metrics.fp32_bytes(tied) == (100 + 10) * 4


def test_tensor_bytes_uses_the_real_element_size():
    ts = [torch.zeros(10, dtype=torch.float16), torch.zeros(3, dtype=torch.int64), torch.zeros(2, 2)]
    assert metrics.tensor_bytes(ts) == 20 + 24 + 16


def test_memory_cost_pct():
    assert metrics.memory_cost_pct(50, 1000) == pytest.approx(5.0)
    assert metrics.memory_cost_pct(1000, 1000) == pytest.approx(100.0)


def test_ordered_pairs_of_four_agents():
    names = ["VA", "VP", "VC", "VH"]
    pairs = metrics.ordered_pairs(names)
    assert len(pairs) == 12 and len(set(pairs)) == 12
    assert all(a != b for a, b in pairs)
    assert all((b, a) in pairs for a, b in pairs)
    assert {a for a, _ in pairs} == set(names) and {b for _, b in pairs} == set(names)
