"""The SC system: power normalisation, AWGN and Rayleigh channels, encoder/decoder (cross-agent links:
tests/test_context.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.model import (CHANNELS, GDN, IMAGE_SHAPE, LATENT_HW, SCModel, apply_channel, awgn, latent_channels,
                            power_normalize, rayleigh)


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


# ------------------------------------------------------------------------------------ Rayleigh
def _fading(z: torch.Tensor, snr_db: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover the model's h per complex symbol: rayleigh's noise is AWGN's draw from the same seed,
    so n = awgn(z) - z and x_hat - x = n / h give h = n / (x_hat - x)."""
    n = torch.view_as_complex((awgn(z, snr_db, gen(seed)) - z).reshape(len(z), -1, 2).contiguous())
    e = torch.view_as_complex((rayleigh(z, snr_db, gen(seed)) - z).reshape(len(z), -1, 2).contiguous())
    return n / e, n


def test_rayleigh_is_seeded_and_deterministic():
    z = power_normalize(torch.randn(8, 8, 8, 8, generator=gen(0)))
    assert torch.equal(rayleigh(z, 10.0, gen(5)), rayleigh(z, 10.0, gen(5)))
    assert not torch.equal(rayleigh(z, 10.0, gen(5)), rayleigh(z, 10.0, gen(6)))
    assert not torch.equal(rayleigh(z, 10.0, gen(5)), awgn(z, 10.0, gen(5)))
    assert rayleigh(z, 10.0, gen(5)).shape == z.shape and rayleigh(z, 10.0, gen(5)).dtype == z.dtype
    # the documented draw order: the noise (AWGN's draw), then one (batch, 2) normal tensor for h
    g = gen(5)
    n = torch.view_as_complex((10 ** (-10.0 / 20) * torch.randn(z.shape, generator=g)).reshape(8, -1, 2))
    h = torch.view_as_complex(torch.randn((8, 1, 2), generator=g) * math.sqrt(0.5))
    x = torch.view_as_complex(z.reshape(8, -1, 2).contiguous())
    expected = torch.view_as_real((h * x + n) / h).reshape(z.shape)
    assert torch.equal(rayleigh(z, 10.0, gen(5)), expected)


def test_rayleigh_fading_is_one_cn01_coefficient_per_image():
    z = power_normalize(torch.randn(4000, 2, 8, 8, generator=gen(1)))  # 64 complex symbols per image
    h, _ = _fading(z, 10.0, seed=3)
    per_image = h[:, :1]
    assert torch.allclose(h, per_image.expand_as(h), rtol=1e-3, atol=1e-4), "h must be constant within an image"
    power = per_image.abs().pow(2).flatten()
    # |h|^2 ~ Exp(1): mean 1, variance 1, P(|h|^2 < 0.1) = 1 - exp(-0.1)
    assert abs(float(power.mean()) - 1.0) < 0.05 and abs(float(power.var()) - 1.0) < 0.12
    assert abs(float((power < 0.1).float().mean()) - (1 - math.exp(-0.1))) < 0.015
    assert abs(float(per_image.real.mean())) < 0.03 and abs(float(per_image.imag.mean())) < 0.03
    assert abs(float((per_image.real * per_image.imag).mean())) < 0.03  # circular: independent parts
    assert abs(float(per_image.real.var()) - 0.5) < 0.04 and abs(float(per_image.imag.var()) - 0.5) < 0.04
    assert len(set(per_image.flatten().tolist())) == len(z), "every image draws its own coefficient"


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_rayleigh_average_received_snr_is_the_set_snr(snr_db):
    z = power_normalize(torch.randn(4000, 2, 8, 8, generator=gen(2)))
    h, n = _fading(z, snr_db, seed=4)
    x = torch.view_as_complex(z.reshape(len(z), -1, 2).contiguous())
    received = (h * x).abs().pow(2).mean()  # E|h x|^2 = E|h|^2 E|x|^2 = 2 (two unit-power real symbols)
    assert abs(float(x.abs().pow(2).mean()) - 2.0) < 1e-4
    measured = 10 * math.log10(float(received) / float(n.abs().pow(2).mean()))
    assert abs(measured - snr_db) < 0.25, measured
    # after zero forcing, an image's noise power is sigma^2 / |h|^2 per real symbol
    e = rayleigh(z, snr_db, gen(4)) - z
    per_image = e.flatten(1).pow(2).mean(1) * h[:, 0].abs().pow(2)
    assert torch.allclose(per_image.mean(), torch.tensor(10 ** (-snr_db / 10)), rtol=0.05)


def test_scmodel_trains_and_evaluates_on_its_channel():
    torch.manual_seed(0)
    awgn_model = SCModel(width=4).eval()
    torch.manual_seed(0)
    fading_model = SCModel(width=4, channel="rayleigh").eval()
    x = images(3)
    with torch.no_grad():
        assert torch.equal(fading_model.transmit(x), awgn_model.transmit(x))  # same weights
        assert torch.equal(fading_model(x, gen(1)), fading_model.decoder(rayleigh(fading_model.transmit(x), 10.0, gen(1))))
        assert torch.equal(fading_model(x, gen(1), channel="awgn"), awgn_model(x, gen(1)))
        assert torch.equal(apply_channel("awgn", x, 5.0, gen(3)), awgn(x, 5.0, gen(3)))
    assert set(CHANNELS) == {"awgn", "rayleigh"}
    with pytest.raises(ValueError, match="rician"):
        SCModel(width=4, channel="rician")
    nn.functional.mse_loss(fading_model.train()(x, gen(0)), x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fading_model.parameters())


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


def test_bandwidth_is_stated_in_both_conventions():
    from pipeline.model import bandwidth_note, latent_channels
    assert bandwidth_note(1 / 6) == ("512 real symbols per 3072 source values (8x8x8 latent): k/n = 1/6 in real "
                                     "channel uses = 1/12 in complex channel uses")
    assert latent_channels(0.3333333) == 16 and "= 1/6 in complex channel uses" in bandwidth_note(0.3333333)


def test_the_default_model_keeps_the_layer_layout_of_every_stored_file():
    """norm none builds conv -> PReLU exactly as before GDN existed: the same state_dict keys, in order."""
    keys = list(SCModel(width=4).state_dict())
    want = [f"{part}.net.{i}.{p}" for part in ("encoder", "decoder") for i in range(9)
            for p in (("weight", "bias") if i % 2 == 0 else ("weight",))]
    assert keys == want


def test_gdn_divides_by_the_learned_norm_and_igdn_multiplies():
    gdn, igdn = GDN(2), GDN(2, inverse=True)
    x = torch.tensor([[[[1.0]], [[-2.0]]]])  # (1, 2, 1, 1)
    beta, gamma, off = 1.0 + 1e-6, 0.1, 1e-3  # the initialisation: beta 1, gamma 0.1 I, off-diagonal 1e-3
    norm = torch.tensor([beta + gamma * 1 + off * 4, beta + off * 1 + gamma * 4])
    assert torch.allclose(gdn(x).flatten(), x.flatten() / norm.sqrt(), atol=1e-6)
    assert torch.allclose(igdn(x).flatten(), x.flatten() * norm.sqrt(), atol=1e-6)
    gdn(x).sum().backward()
    assert gdn.gamma.grad[0, 1] != 0, "the off-diagonal weights learn (softplus, never a dead zero)"


def test_a_gdn_model_has_gdn_in_both_halves_and_trains():
    model = SCModel(width=4, norm="gdn")
    kinds = [type(m).__name__ for m in model.encoder.net] + [type(m).__name__ for m in model.decoder.net]
    assert kinds.count("GDN") == 8 and kinds.count("PReLU") == 8
    assert [m.inverse for m in model.decoder.net if isinstance(m, GDN)] == [True] * 4
    nn.functional.mse_loss(model(images(3), gen(0)), images(3)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="batchnorm"):
        SCModel(width=4, norm="batchnorm")
