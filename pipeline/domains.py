"""The local domains of SPEC.md: each a seeded transform of base images (torchvision.transforms.v2).

VA varied angle (rotation), VP varied perspective (perspective warp), VC varied contrast, VH varied
hue; magnitudes are params (``domains.*``). Adding a domain = one entry in ``DOMAINS`` (its
magnitude a constant here, or a new field of ``config.Domains``) and its name in ``domains.names``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # config validates names against DOMAINS: nothing heavy is imported at the top
    from .config import Domains

THUMB = 32  # image side in pixels


def _uniform_signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi) * rng.choice((-1.0, 1.0)))


def _perspective_points(rng: np.random.Generator, distortion: float) -> tuple[list, list]:
    """Corner displacements as in torchvision's RandomPerspective, drawn from our own generator."""
    half = THUMB // 2
    d = int(distortion * half)
    tl = [int(rng.integers(0, d + 1)), int(rng.integers(0, d + 1))]
    tr = [THUMB - 1 - int(rng.integers(0, d + 1)), int(rng.integers(0, d + 1))]
    br = [THUMB - 1 - int(rng.integers(0, d + 1)), THUMB - 1 - int(rng.integers(0, d + 1))]
    bl = [int(rng.integers(0, d + 1)), THUMB - 1 - int(rng.integers(0, d + 1))]
    start = [[0, 0], [THUMB - 1, 0], [THUMB - 1, THUMB - 1], [0, THUMB - 1]]
    return start, [tl, tr, br, bl]


def _rotation(cfg: Domains, rng: np.random.Generator):
    angle = _uniform_signed(rng, *cfg.rotation_degrees)
    return lambda img, TF, mode: TF.rotate(img, angle, interpolation=mode)


def _perspective(cfg: Domains, rng: np.random.Generator):
    start, end = _perspective_points(rng, cfg.perspective_distortion)
    return lambda img, TF, mode: TF.perspective(img, start, end, interpolation=mode)


def _contrast(cfg: Domains, rng: np.random.Generator):
    factor = float(rng.uniform(*cfg.contrast_factor))
    return lambda img, TF, mode: TF.adjust_contrast(img, factor)


def _hue(cfg: Domains, rng: np.random.Generator):
    shift = _uniform_signed(rng, *cfg.hue_shift)
    return lambda img, TF, mode: TF.adjust_hue(img, shift)


# Every local domain: name -> (what it is, the transform of one image with parameters drawn from a
# seeded generator). The order is part of the data: a domain's generator stream is its index here, so
# a new domain goes at the end (the names params.yaml may use are these keys: pipeline/config.py).
DOMAINS: dict[str, tuple[str, Callable]] = {
    "VA": ("varied angle: rotation by ±domains.rotation_degrees", _rotation),
    "VP": ("varied perspective: corner warp of domains.perspective_distortion", _perspective),
    "VC": ("varied contrast: contrast factor in domains.contrast_factor", _contrast),
    "VH": ("varied hue: hue shift by ±domains.hue_shift", _hue),
}


def domain_transform(name: str, cfg: Domains, rng: np.random.Generator):
    """One image's transform for domain ``name`` (a key of ``DOMAINS``), parameters drawn from ``rng``."""
    # torchvision is imported here, not at the top: importing it costs ~1.5 s (it loads torch's
    # compiler stack), paid by every stage process otherwise.
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}")
    transform = DOMAINS[name][1](cfg, rng)
    return lambda img: transform(img, TF, v2.InterpolationMode.BILINEAR)


def apply_domain(name: str, images: np.ndarray, cfg: Domains, seed: int) -> np.ndarray:
    """Transform every image (uint8 NHWC) into domain ``name``; deterministic for a given seed."""
    import torch
    rng = np.random.default_rng([seed, list(DOMAINS).index(name)])
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    out = torch.stack([domain_transform(name, cfg, rng)(img) for img in chw])
    return out.permute(0, 2, 3, 1).contiguous().numpy()
