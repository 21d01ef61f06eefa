"""SPEC.md's metric definitions, written once and imported everywhere.

- PSNR: images in [0, 1], peak 1, per image ``10 log10(1 / MSE)``, averaged over images
  (cross-checked against ``skimage.metrics.peak_signal_noise_ratio`` in the tests).
- SSIM: per image, torchmetrics' ``structural_similarity_index_measure`` (Gaussian window 11 x 11,
  sigma 1.5, K1 0.01, K2 0.03, data range 1; borders reflect-padded, so every pixel counts; mean over
  channels and pixels), averaged over images. Cross-checked in the tests against
  ``skimage.metrics.structural_similarity`` (same window and constants, population covariance), which
  gives the same number on reflect-padded images; on unpadded 32 x 32 images skimage averages only
  the 22 x 22 interior whose windows fit, and the two differ by what the border windows see.
- misalignment loss: PSNR(pretrained Tx -> pretrained Rx) - PSNR(agent A's Tx -> agent B's Rx), on
  base test images, after the method's alignment step, for agents adapted to different domains.
- cross traffic: PSNR and SSIM of agent A's own domain test images through A's deployed Tx, the
  channel and B's deployed Rx (after the method's alignment step), for every ordered pair.
- memory cost: bytes an agent stores beyond the shared pretrained model and actually needs, as % of
  the pretrained model's fp32 bytes (sam: its file; equalizer: its K - 1 equalizers; tuning_copy: the
  second copy).

Per-image values (for paired bootstrap intervals over test images) are kept in one safetensors file,
one float64 vector per measurement, keyed ``method|sparsity|seed|metric|domain|tx|rx``
(``per_image_key``, ``write_per_image``, ``read_per_image``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import InputError

MIN_MSE = 1e-10  # caps PSNR at 100 dB for a perfect reconstruction
# The columns of evaluation.csv: one row per measurement (written by evaluate, read by report).
FIELDS = ["method", "sparsity", "seed", "metric", "domain", "tx", "rx", "value", "unit"]
EXACT_IMAGES = 256  # base test images of the bit-for-bit switch-off check (evaluate runs it, claim ZF states it)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # torchmetrics' defaults (and skimage's with gaussian_weights, sigma 1.5)
SSIM_CHUNK = 64  # images per SSIM call: measured fastest on the CPU (per-image values do not depend on it)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair (peak 1), computed in float64."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp_min(MIN_MSE))


def mean_psnr(per_image: torch.Tensor) -> float:
    return float(per_image.mean())


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair (NCHW in [0, 1], data range 1) as float64, computed in fp32 by torchmetrics.

    Symmetric in x and y. torchmetrics is imported here, not at module level: it pulls in torchvision
    and more (seconds), which only the stages that measure SSIM should pay.
    """
    from torchmetrics.functional.image.ssim import structural_similarity_index_measure as ssim
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim_per_image: need two NCHW batches of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x, y = x.float(), y.float()
    out = [ssim(x[i:i + SSIM_CHUNK], y[i:i + SSIM_CHUNK], gaussian_kernel=True, sigma=SSIM_SIGMA,
                kernel_size=SSIM_WINDOW, data_range=1.0, k1=0.01, k2=0.03, reduction="none")
           for i in range(0, len(x), SSIM_CHUNK)]
    return torch.cat(out).double() if out else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class Quality:
    """Per-image quality of one link on one image set: float64 vectors in image order (ssim None when
    not measured)."""
    psnr: torch.Tensor
    ssim: torch.Tensor | None = None

    @property
    def mean_psnr(self) -> float:
        return mean_psnr(self.psnr)

    @property
    def mean_ssim(self) -> float:
        if self.ssim is None:
            raise ValueError("Quality.mean_ssim: SSIM was not measured")
        return float(self.ssim.mean())


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


# ------------------------------------------------------------------------------ per-image values
PER_IMAGE_KEY = ("method", "sparsity", "seed", "metric", "domain", "tx", "rx")  # "|"-joined, in this order
PER_IMAGE_FORMAT = "per_image/1"  # the file's metadata "format"


class PerImageFileError(InputError):
    """A per-image values file that is missing, corrupt or not what ``write_per_image`` writes."""


def _field(value) -> str:
    """A key field as evaluation.csv spells it: None -> '', a float sparsity as ``str`` (0.01 -> '0.01')."""
    return "" if value is None else str(value)


def per_image_key(method, sparsity, seed, metric, domain, tx, rx) -> str:
    """``method|sparsity|seed|metric|domain|tx|rx``, each field as in evaluation.csv's row of the
    measurement (sparsity '' where it does not apply, seed an int)."""
    fields = [_field(v) for v in (method, sparsity, seed, metric, domain, tx, rx)]
    if bad := [f for f in fields if "|" in f]:
        raise ValueError(f"per_image_key: a field contains '|': {bad}")
    return "|".join(fields)


def parse_per_image_key(key: str) -> dict[str, str]:
    """The fields of a ``per_image_key`` (strings, as written)."""
    parts = key.split("|")
    if len(parts) != len(PER_IMAGE_KEY):
        raise ValueError(f"per-image key {key!r}: expected {len(PER_IMAGE_KEY)} '|'-separated fields "
                         f"{'|'.join(PER_IMAGE_KEY)}")
    return dict(zip(PER_IMAGE_KEY, parts))


def write_per_image(path: str | Path, values: dict[str, torch.Tensor]) -> None:
    """Per-image values (key -> 1-d vector, stored float64), atomically and byte-reproducibly."""
    from .storage import save_safetensors
    for key, v in values.items():
        parse_per_image_key(key)
        if v.ndim != 1:
            raise ValueError(f"write_per_image: {key}: expected a 1-d vector, got shape {tuple(v.shape)}")
    save_safetensors(path, {k: v.detach().to(torch.float64).cpu().contiguous() for k, v in values.items()},
                     {"format": PER_IMAGE_FORMAT, "key": "|".join(PER_IMAGE_KEY)})


def read_per_image(path: str | Path) -> dict[str, np.ndarray]:
    """What ``write_per_image`` wrote: key (``method|sparsity|seed|metric|domain|tx|rx``) -> float64
    numpy vector, one value per test image in the split's order. Raises ``PerImageFileError`` (one line)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise PerImageFileError(f"{path}: per-image file not found (run the evaluate stage)")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            out = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise PerImageFileError(f"{path}: corrupt or not a safetensors file ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if meta.get("format") != PER_IMAGE_FORMAT:
        raise PerImageFileError(f"{path}: not a per-image values file (metadata format "
                                f"{meta.get('format')!r}, expected {PER_IMAGE_FORMAT!r})")
    for key, v in out.items():
        try:
            parse_per_image_key(key)
        except ValueError as err:
            raise PerImageFileError(f"{path}: {err}") from None
        if v.dtype != np.float64 or v.ndim != 1:
            raise PerImageFileError(f"{path}: {key} is {v.dtype} of shape {v.shape}, expected a float64 vector")
    return out
