"""The SC system: power normalisation, AWGN channel, encoder/decoder (cross-agent links: tests/test_context.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.model import IMAGE_SHAPE, LATENT_HW, SCModel, awgn, latent_channels, power_normalize


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *IMAGE_SHAPE, generator=gen(seed))


def test_power_normalize_gives_unit_mean_power_per_image():
    z = torch.randn(16, 8, 8, 8, generator=gen(0)) * torch.linspace(0.01, 100, 16).view(-1, 1, 1, 1) + 3.0
    out = power_normalize(z)
    assert out.shape == z.shape
    power = out.pow(2).flatten(1).mean(1)
    assert torch.allclose(power, torch.ones(16), atol=1e-5)
    # a per-image scale, not a per-batch one: the direction of each image's symbols is kept
    assert torch.allclose(out[3] / out[3].norm(), z[3] / z[3].norm(), atol=1e-6)


def test_power_normalize_survives_an_all_zero_latent():
    out = power_normalize(torch.zeros(2, 8, 8, 8))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_awgn_realises_the_set_snr(snr_db):
    z = power_normalize(torch.randn(256, 8, 8, 8, generator=gen(1)))
    y = awgn(z, snr_db, gen(2))
    noise = y - z
    measured = 10 * math.log10(float(z.pow(2).mean()) / float(noise.pow(2).mean()))
    assert abs(measured - snr_db) < 0.2, measured
    assert abs(float(noise.mean())) < 0.02 * 10 ** (-snr_db / 20)  # zero-mean noise


def test_awgn_is_reproducible_with_a_generator():
    z = power_normalize(torch.randn(4, 8, 8, 8, generator=gen(0)))
    assert torch.equal(awgn(z, 10.0, gen(5)), awgn(z, 10.0, gen(5)))
    assert not torch.equal(awgn(z, 10.0, gen(5)), awgn(z, 10.0, gen(6)))


def test_latent_channels_realise_the_bandwidth_ratio():
    assert latent_channels(1 / 6) == 8
    assert latent_channels(0.1666667) == 8  # the value written in params.yaml
    assert latent_channels(1 / 12) == 4
    assert latent_channels(1e-6) == 1
    for ratio in (1 / 6, 1 / 12, 1 / 3):
        c = latent_channels(ratio)
        assert abs(c * LATENT_HW**2 / math.prod(IMAGE_SHAPE) - ratio) < 1e-6


@pytest.mark.parametrize("width,ratio", [(4, 1 / 6), (8, 1 / 12)])
def test_scmodel_shapes_and_output_range(width, ratio):
    torch.manual_seed(0)
    model = SCModel(width=width, bandwidth_ratio=ratio, snr_db=10.0).eval()
    x = images(5)
    with torch.no_grad():
        z = model.transmit(x)
        out = model(x, gen(0))
    assert tuple(z.shape) == (5, latent_channels(ratio), LATENT_HW, LATENT_HW)
    assert torch.allclose(z.pow(2).flatten(1).mean(1), torch.ones(5), atol=1e-5)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert (out > 0).all() and (out < 1).all()


def test_scmodel_noise_depends_on_snr_and_generator():
    torch.manual_seed(0)
    model = SCModel(width=4).eval()
    x = images(3)
    with torch.no_grad():
        assert torch.equal(model(x, gen(1)), model(x, gen(1)))
        assert not torch.equal(model(x, gen(1)), model(x, gen(2)))
        assert not torch.equal(model(x, gen(1)), model(x, gen(1), snr_db=0.0))
        assert torch.equal(model(x, gen(1), snr_db=model.snr_db), model(x, gen(1)))


def test_model_trains_end_to_end():
    """Gradients reach both encoder and decoder through the channel (no detach in the link)."""
    torch.manual_seed(0)
    model = SCModel(width=4)
    x = images(2)
    nn.functional.mse_loss(model(x, gen(0)), x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
