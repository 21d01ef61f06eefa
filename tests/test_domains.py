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


# ------------------------------------------------------------------------------------- severity ladders
# sha256 of apply_domain on fixed images with the quick profile's magnitudes, and of the tiny build_splits
# (every array, in split order, name then bytes), computed with the code before the ladders existed: the
# default level must keep today's arrays bit for bit (every committed number keeps its meaning).
PINNED = {"VA": "fc0e8daaab8ec26a8d2e5ce3db782bc76a3bfba4e27fa3727631639e569d8bab",
          "VP": "76c6308b33a6f442ac714041cec9e285dc8168159d8d0f98b3b98a2cb5bf980c",
          "VC": "729245f8c0f65efe9ead00b8cffa80326f3680688e9b94769ff2c90d52c386b1",
          "VH": "e29b6b58bc8a0d35bc2737ebaa91af17d2af7b2e97c729101b57a74563a9cec9"}
PINNED_TINY_SPLITS = "b898fd015633151d30fd24889a6ba3474dce5caef5516202349973744e5c6176"


def _quick_domains():
    from pipeline import profile
    return make_params(profile.render("quick")).domains


@pytest.mark.parametrize("name", DOMAINS)
def test_the_default_level_is_the_params_and_todays_arrays_bit_for_bit(name):
    import hashlib
    cfg = _quick_domains()
    assert domains.at_level(cfg, domains.DEFAULT_LEVEL) is cfg and domains.SCALE[domains.DEFAULT_LEVEL] == 1.0
    images = np.random.default_rng(7).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    out = domains.apply_domain(name, images, domains.at_level(cfg, domains.DEFAULT_LEVEL), 5)
    assert hashlib.sha256(out.tobytes()).hexdigest() == PINNED[name]


def test_the_default_level_splits_are_todays_bit_for_bit(tiny_splits):
    import hashlib
    h = hashlib.sha256()
    for name, arr in tiny_splits.items():
        h.update(name.encode())
        h.update(arr.tobytes())
    assert h.hexdigest() == PINNED_TINY_SPLITS


def test_a_levels_splits_come_from_the_same_base_images(tiny_params):
    """data.domain_splits at another level transforms the same base images with the same seeds: the
    default level is build_splits' arrays, the others differ from them but not in shape."""
    from pipeline.data import build_splits, cut_splits, domain_splits
    from pipeline.paths import Paths
    params = make_params(tiny_params)
    paths = Paths.of(params)
    splits, (base, sources) = build_splits(params, paths), cut_splits(params, paths)
    assert all(np.array_equal(base[k], splits[k]) for k in base)
    for d, blocks in sources.items():
        assert np.array_equal(blocks[2], splits[f"{d}_test_source"])
        default = domain_splits(d, blocks, params.domains)
        assert all(np.array_equal(v, splits[k]) for k, v in default.items())
        other = domain_splits(d, blocks, params.domains, 5)
        assert all(v.shape == splits[k].shape and not np.array_equal(v, splits[k]) for k, v in other.items())


def test_every_domain_has_a_ladder_and_a_level_outside_it_is_refused():
    assert set(domains.LADDERS) == set(domains.DOMAINS)
    assert list(domains.SCALE) == [1, 2, 3, 4, 5] and sorted(domains.SCALE.values()) == list(domains.SCALE.values())
    with pytest.raises(ValueError, match=r"severity level 6 is not one of \[1, 2, 3, 4, 5\]"):
        domains.at_level(_quick_domains(), 6)


def test_each_ladders_parameter_moves_away_from_the_identity_with_the_level():
    """Rotation, perspective and hue grow with the level (hue up to half the circle: it wraps), the contrast
    factor falls towards 0 (never reaching it); every level is a valid domains block."""
    from pipeline.config import Domains
    cfg = _quick_domains()
    at = {lv: domains.at_level(cfg, lv) for lv in domains.SCALE}
    for lv, c in at.items():
        Domains.model_validate(c.model_dump())  # in range
    seq = [at[lv] for lv in sorted(at)]
    for a, b in zip(seq, seq[1:]):
        assert b.rotation_degrees[0] > a.rotation_degrees[0] and b.rotation_degrees[1] > a.rotation_degrees[1]
        assert b.perspective_distortion > a.perspective_distortion
        assert b.contrast_factor[0] < a.contrast_factor[0] and b.contrast_factor[1] < a.contrast_factor[1]
        assert b.hue_shift[0] > a.hue_shift[0] and b.hue_shift[1] >= a.hue_shift[1]
    assert seq[-1].hue_shift[1] == 0.5 and seq[-1].contrast_factor[0] > 0
    assert domains.magnitude("VA", cfg) == "|angle| in [20, 40] deg"
    assert domains.magnitude("VC", cfg, 1) != domains.magnitude("VC", cfg)


@pytest.mark.parametrize("name", DOMAINS)
def test_the_images_move_further_from_the_originals_as_the_level_rises(name):
    cfg = _quick_domains()
    base = smooth_images(32, seed=2)
    dist = [float(np.abs(domains.apply_domain(name, base, domains.at_level(cfg, lv), 0).astype(np.int16)
                         - base.astype(np.int16)).mean()) for lv in sorted(domains.SCALE)]
    assert all(b >= a for a, b in zip(dist, dist[1:])) and dist[-1] > 1.2 * dist[0], dist
