"""SPEC.md's metric definitions: PSNR and SSIM (cross-checked with skimage), the evaluation passes that
measure them, per-image values files, memory cost, ordered pairs."""
from __future__ import annotations

import re

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


# ------------------------------------------------------------------------------------------- SSIM
def _skimage_ssim(x: torch.Tensor, y: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """skimage's SSIM of each NCHW pair with SPEC's settings; ``pad``: reflect-pad both images first
    (numpy's 'reflect' is torch's: the edge pixel is not repeated)."""
    from skimage.metrics import structural_similarity
    out = []
    for a, b in zip(x.double().numpy(), y.double().numpy()):
        a, b = (np.pad(v, ((0, 0), (pad, pad), (pad, pad)), mode="reflect").transpose(1, 2, 0) for v in (a, b))
        out.append(structural_similarity(a, b, channel_axis=-1, data_range=1, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False))
    return torch.tensor(out, dtype=torch.float64)


def _distorted(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x blurred and noised more strongly from one image to the next: SSIM from about 1 down to < 0.5."""
    g = torch.Generator().manual_seed(seed)
    blur = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    w = torch.linspace(0.0, 1.0, len(x)).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g) * (0.002 + 0.4 * w)
    return (x + 0.5 * w * (blur - x) + noise).clamp(0, 1)


# How close ours (torchmetrics, fp32) and skimage (float64) must agree once both see the same pixels:
# each window statistic is an fp32 sum of 121 weighted values <= 1, so it carries an absolute rounding
# error of ~1e-7; a variance is a difference of such statistics (E[x^2] - mu^2) and SSIM divides by
# variances + C2 (C2 = (0.03)^2 = 9e-4), so in a flat window, where the variances are ~0, a pixel's SSIM
# can move by ~2e-7 / 9e-4 ~ 2e-4. Hence 2e-4 (measured: <= 5e-5 on nearly identical photos, where flat
# windows abound; ~3e-7 on random images). A real difference is far larger: a sigma of 1 instead of
# 1.5 moves a mid-quality image's SSIM by > 1e-2, the unpadded interior-only definition by > 1e-3.
SSIM_ATOL = 2e-4
SSIM_PAD = (metrics.SSIM_WINDOW - 1) // 2


@pytest.mark.parametrize("kind", ["random", "real"])
def test_ssim_per_image_matches_skimage(kind, tiny_splits):
    """The same number as skimage on reflect-padded images (skimage then averages exactly the original
    pixels, each window seeing the reflected border that torchmetrics pads with)."""
    if kind == "random":
        x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    else:  # photos of the embedded source (base test thumbnails)
        x = torch.from_numpy(tiny_splits["base_test"][:12]).float() / 255
        if x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
    y = _distorted(x, seed=2)
    ours = metrics.ssim_per_image(y, x)
    assert ours.shape == (12,) and ours.dtype == torch.float64
    ref = _skimage_ssim(y, x, pad=SSIM_PAD)
    assert (ours - ref).abs().max() < SSIM_ATOL, (ours - ref).abs().max()
    assert len(set(ours.tolist())) == 12 and ours.max() > 0.9 and ours.min() < 0.5  # really per image, a range
    # the plain (unpadded) skimage call averages only the 22 x 22 interior: the same definition on fewer
    # pixels, so the two differ, by the borders only (a wrong window or constant would differ everywhere)
    plain = _skimage_ssim(y, x)
    assert (ours - plain).abs().max() > 5 * SSIM_ATOL, (ours - plain).abs().max()
    # a wrong sigma is caught at this tolerance (on a mid-quality image: near SSIM 1 every window agrees)
    from skimage.metrics import structural_similarity
    a, b = (np.pad(v[6].double().numpy(), ((0, 0), (SSIM_PAD,) * 2, (SSIM_PAD,) * 2), mode="reflect").transpose(1, 2, 0)
            for v in (y, x))
    other = structural_similarity(a, b, channel_axis=-1, data_range=1, gaussian_weights=True, sigma=1.0,
                                  use_sample_covariance=False)
    assert abs(float(ours[6]) - other) > 50 * SSIM_ATOL, abs(float(ours[6]) - other)


def test_ssim_is_symmetric_one_for_identical_and_independent_of_batching():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(metrics.SSIM_CHUNK + 5, 3, 32, 32, generator=g)
    y = _distorted(x, seed=4)
    whole = metrics.ssim_per_image(y, x)
    assert torch.allclose(whole, metrics.ssim_per_image(x, y), rtol=0, atol=1e-6)
    assert torch.equal(whole[:7], metrics.ssim_per_image(y[:7], x[:7]))  # per image: the chunk does not matter
    assert torch.allclose(metrics.ssim_per_image(x, x.clone()), torch.ones(len(x), dtype=torch.float64), atol=1e-6)
    assert metrics.ssim_per_image(x[:0], x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="one shape"):
        metrics.ssim_per_image(x[:2], x[:3])


# ------------------------------------------------------------------- evaluation passes (train.py)
def _old_evaluate_psnr(decode, images, *, noise_seed, batch_size, device):
    """evaluate_psnr as it was before SSIM joined it (the committed PSNR numbers come from this)."""
    from pipeline.train import to_float
    gen = torch.Generator(device=device)
    gen.manual_seed(noise_seed)
    scores = []
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size], device)
            scores.append(metrics.psnr_per_image(decode(x, gen), x).cpu())
    return metrics.mean_psnr(torch.cat(scores))


def test_quality_pass_keeps_psnr_bit_for_bit_and_measures_ssim_on_the_same_reconstructions():
    from pipeline.model import apply_channel
    from pipeline.train import evaluate_psnr, evaluate_psnr_fanout, evaluate_quality, evaluate_quality_fanout
    torch.manual_seed(0)
    model = SCModel(width=4).eval()
    images = torch.randint(0, 256, (21, 3, 32, 32), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    ev = dict(noise_seed=7, batch_size=8, device=torch.device("cpu"))

    def decode(x, g):
        return model(x, g, snr_db=5.0, channel="awgn")
    psnr = evaluate_psnr(decode, images, **ev)
    assert psnr == _old_evaluate_psnr(decode, images, **ev)  # bit for bit
    q = evaluate_quality(decode, images, **ev)
    assert q.psnr.shape == q.ssim.shape == (21,) and q.psnr.dtype == q.ssim.dtype == torch.float64
    assert q.mean_psnr == psnr
    # SSIM of the very reconstructions PSNR was measured on (the same noise draws, batch by batch)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        recon = torch.cat([decode(images[i:i + 8].float() / 255, gen) for i in range(0, 21, 8)])
    assert torch.equal(q.ssim, metrics.ssim_per_image(recon, images.float() / 255))
    assert torch.equal(q.psnr, metrics.psnr_per_image(recon, images.float() / 255))
    assert evaluate_quality(decode, images, **ev, ssim=False).ssim is None
    # one Tx heard by several Rx: each receiver's numbers are its own evaluate_quality's
    rxs = [model.decoder, lambda y: model.decoder(y * 0.5)]
    tx = lambda x, g: apply_channel("awgn", model.transmit(x), 5.0, g)  # noqa: E731
    fan = evaluate_quality_fanout(tx, rxs, images, **ev)
    for rx, got in zip(rxs, fan):
        alone = evaluate_quality(lambda x, g: rx(tx(x, g)), images, **ev)
        assert torch.equal(got.psnr, alone.psnr) and torch.equal(got.ssim, alone.ssim)
    assert fan[0].mean_psnr != fan[1].mean_psnr
    assert evaluate_psnr_fanout(tx, rxs, images, **ev) == [f.mean_psnr for f in fan]
    with pytest.raises(ValueError, match="not measured"):
        evaluate_quality(decode, images, **ev, ssim=False).mean_ssim


# --------------------------------------------------------------------------------- per-image file
def test_per_image_file_round_trip(tmp_path):
    key = metrics.per_image_key("sam", 0.01, 0, "cross_psnr", "VA", "VA", "VH")
    assert key == "sam|0.01|0|cross_psnr|VA|VA|VH"
    assert metrics.parse_per_image_key(key) == {"method": "sam", "sparsity": "0.01", "seed": "0",
                                                "metric": "cross_psnr", "domain": "VA", "tx": "VA", "rx": "VH"}
    assert metrics.per_image_key("tuning_copy", "", 0, "domain_ssim", "VA", "VA", "VA").startswith("tuning_copy||0|")
    values = {key: torch.tensor([30.5, 31.25]), metrics.per_image_key("pretrained", None, 0, "domain_ssim", "VA",
                                                                        "VA", "VA"): torch.tensor([0.9], dtype=torch.float64)}
    path = tmp_path / "per_image.safetensors"
    metrics.write_per_image(path, values)
    got = metrics.read_per_image(path)
    assert set(got) == set(values)
    for k, v in values.items():
        assert got[k].dtype == np.float64 and np.array_equal(got[k], v.double().numpy())
    first = path.read_bytes()
    metrics.write_per_image(path, dict(reversed(values.items())))
    assert path.read_bytes() == first  # byte-reproducible (DVC sees no change)


def test_per_image_bad_keys_and_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=re.escape("contains '|'")):
        metrics.per_image_key("a|b", None, 0, "domain_psnr", "VA", "VA", "VA")
    with pytest.raises(ValueError, match=re.escape("7 '|'-separated fields")):
        metrics.parse_per_image_key("sam|0.01|domain_psnr")
    with pytest.raises(ValueError, match="1-d"):
        metrics.write_per_image(tmp_path / "x.safetensors", {"a|||domain_psnr|||": torch.zeros(2, 2)})
    from pipeline.storage import save_safetensors
    other = tmp_path / "model.safetensors"
    save_safetensors(other, {"encoder.w": torch.zeros(3)})
    truncated = tmp_path / "truncated.safetensors"
    metrics.write_per_image(truncated, {"m|||domain_psnr|||": torch.zeros(4)})
    truncated.write_bytes(truncated.read_bytes()[:-5])
    for path, expected in [(tmp_path / "missing.safetensors", "not found"), (other, "not a per-image values file"),
                           (truncated, "corrupt")]:
        with pytest.raises(metrics.PerImageFileError, match=expected) as err:
            metrics.read_per_image(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
