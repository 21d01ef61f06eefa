"""The local domains (pipeline/domains.py): seeded per-image transforms within the configured magnitudes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import domains

from .conftest import make_params
from .test_data import smooth_images

DOMAINS = ("VA", "VP", "VC", "VH")


@pytest.fixture
def params(tiny_params):
    return make_params(tiny_params)


# --------------------------------------------------------------------------------------------- domains
@pytest.mark.parametrize("name", DOMAINS)
def test_domain_output_shape_dtype_and_change(name, params):
    base = smooth_images(16)
    kept = base.copy()
    out = domains.apply_domain(name, base, params.domains, seed=0)
    assert out.shape == (16, 32, 32, 3) and out.dtype == np.uint8
    assert out.min() >= 0 and out.max() <= 255
    assert np.array_equal(base, kept), "the input images were modified in place"
    diff = np.abs(out.astype(np.int16) - base.astype(np.int16)).mean(axis=(1, 2, 3))
    assert diff.mean() > 10.0, diff
    assert (diff > 1.0).all(), diff


@pytest.mark.parametrize("name", DOMAINS)
def test_domain_is_deterministic_for_a_seed(name, params):
    base = smooth_images(8)
    a = domains.apply_domain(name, base, params.domains, seed=3)
    b = domains.apply_domain(name, base, params.domains, seed=3)
    c = domains.apply_domain(name, base, params.domains, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", DOMAINS)
def test_domain_draws_its_parameters_per_image(name, params):
    base = np.repeat(smooth_images(1), 8, axis=0)
    out = domains.apply_domain(name, base, params.domains, seed=0)
    assert len({img.tobytes() for img in out}) >= 4


def test_domains_differ_from_each_other(params):
    base = smooth_images(8)
    outs = {n: domains.apply_domain(n, base, params.domains, seed=0) for n in DOMAINS}
    for a in DOMAINS:
        for b in DOMAINS:
            if a < b:
                assert not np.array_equal(outs[a], outs[b])


def test_unknown_domain_is_refused(params):
    with pytest.raises(ValueError):
        domains.apply_domain("VX", smooth_images(2), params.domains, seed=0)


def _white(n):
    return np.full((n, 32, 32, 3), 255, np.uint8)


def test_va_rotates_by_an_angle_within_the_configured_range(params):
    """Rotating a white image blackens the corners; the black area grows with |angle| up to 45 degrees."""
    from torchvision.transforms.v2 import functional as TF
    lo, hi = params.domains.rotation_degrees
    one = torch.from_numpy(_white(1)[0].transpose(2, 0, 1).copy())

    def black(angle):
        return float((TF.rotate(one, angle, interpolation=TF.InterpolationMode.BILINEAR) == 0).all(0).float().mean())
    out = domains.apply_domain("VA", _white(32), params.domains, seed=0)
    frac = (out == 0).all(-1).mean(axis=(1, 2))
    assert (out[:, 0, 0] == 0).all() and (out[:, 16, 16] == 255).all()
    assert ((frac >= black(lo - 0.5)) & (frac <= black(hi + 0.5))).all(), frac
    # both directions occur (random sign): mirror-image corners differ in which side is cut first
    left = (out[:, 0, 8] == 0).all(-1)
    assert 0 < left.sum() < len(out)


def test_vp_warps_the_border_and_keeps_the_centre(params):
    out = domains.apply_domain("VP", _white(32), params.domains, seed=0)
    assert (out[:, 10:22, 10:22] == 255).all()
    d = int(params.domains.perspective_distortion * 16)
    assert (out[:, d + 1:31 - d - 1, d + 1:31 - d - 1] == 255).all()
    assert ((out == 0).all(-1).any(axis=(1, 2))).mean() > 0.9


def test_vc_scales_contrast_by_a_factor_in_range(params):
    lo, hi = params.domains.contrast_factor
    base = smooth_images(32, seed=1)
    out = domains.apply_domain("VC", base, params.domains, seed=0)
    ratio = out.reshape(32, -1).std(1) / base.reshape(32, -1).std(1)
    assert ((ratio > lo - 0.03) & (ratio < hi + 0.03)).all(), ratio


def test_vh_shifts_hue_by_an_amount_in_range_both_ways(params):
    from skimage.color import rgb2hsv
    lo, hi = params.domains.hue_shift
    base = np.zeros((32, 32, 32, 3), np.uint8)
    base[..., 0] = 255  # pure red: hue 0, full saturation
    out = domains.apply_domain("VH", base, params.domains, seed=0)
    hue = rgb2hsv(out[:, 16, 16][:, None, :])[:, 0, 0]
    shift = (hue + 0.5) % 1.0 - 0.5
    assert ((np.abs(shift) > lo - 0.01) & (np.abs(shift) < hi + 0.01)).all(), shift
    assert (shift > 0).any() and (shift < 0).any()


def test_an_unknown_domain_name_in_params_is_refused_naming_the_known_ones(tiny_params):
    from pipeline.config import ConfigError
    tiny_params["domains"]["names"] = ["VA", "VX"]
    with pytest.raises(ConfigError, match=r"domains.names.*unknown domains \['VX'\]; known: \['VA', 'VP', 'VC', 'VH'\]"):
        make_params(tiny_params)


def test_the_domain_registry_keeps_the_generator_streams_of_the_four_domains():
    """A domain's generator stream is its index in DOMAINS: a new domain must go at the end."""
    assert list(domains.DOMAINS)[:4] == ["VA", "VP", "VC", "VH"]
