"""The local domains of SPEC.md: each a seeded transform of base images (torchvision.transforms.v2).

VA varied angle (rotation), VP varied perspective (perspective warp), VC varied contrast, VH varied
hue; magnitudes are params (``domains.*``). Adding a domain = one entry in ``DOMAINS`` (its
magnitude a constant here, or a new field of ``config.Domains``), one in ``LADDERS`` and its name in
``domains.names``.

Severity levels (as CIFAR-10-C / ImageNet-C define corruption severities): ``at_level(cfg, level)`` is
the block with every domain's magnitude at level 1..5. The ladder is one scale of the params' own
magnitudes, ``SCALE[level]`` (level 3 = 1: the params as given, the very same block, so the default
path's arrays are today's bit for bit), and one rule per domain (``LADDERS``) of how a magnitude scales:
rotation angles and the perspective distortion multiply; the contrast factor is multiplicative, so its
logarithm does (factor ** scale: severity grows as the factor falls towards 0, never reaching it); the hue
shift multiplies up to half the hue circle (0.5: the opposite hue, the farthest a shift that wraps can go).
A scale of the params, not a table of absolute values, so that a profile's magnitudes stay level 3 and
every level moves with them.
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


# Level -> multiple of the params' magnitudes. Linear in the level, level 3 the params: at 5/3 the
# params' magnitudes stay inside every transform's range (perspective 0.5 -> 0.83 of half the side).
SCALE: dict[int, float] = {1: 1 / 3, 2: 2 / 3, 3: 1.0, 4: 4 / 3, 5: 5 / 3}
DEFAULT_LEVEL = 3


def _scaled(pair, scale: float, top: float) -> tuple[float, float]:
    return tuple(min(top, v * scale) for v in pair)


# Per domain: (the block's magnitude key, its value at a scale, how it reads) -- the ladder's rules.
LADDERS: dict[str, tuple[str, Callable, Callable]] = {
    "VA": ("rotation_degrees", lambda c, s: _scaled(c.rotation_degrees, s, 180.0),
           lambda v: f"|angle| in [{v[0]:.3g}, {v[1]:.3g}] deg"),
    "VP": ("perspective_distortion", lambda c, s: min(1.0, c.perspective_distortion * s),
           lambda v: f"corner shift up to {v:.3g} of half the side"),
    "VC": ("contrast_factor", lambda c, s: tuple(f ** s for f in c.contrast_factor),
           lambda v: f"contrast factor in [{v[0]:.3g}, {v[1]:.3g}]"),
    "VH": ("hue_shift", lambda c, s: _scaled(c.hue_shift, s, 0.5),
           lambda v: f"|hue shift| in [{v[0]:.3g}, {v[1]:.3g}]"),
}


def at_level(cfg: Domains, level: int) -> Domains:
    """The domains block with every domain's magnitude at severity ``level`` (a key of ``SCALE``);
    ``DEFAULT_LEVEL``: ``cfg`` itself."""
    if level not in SCALE:
        raise ValueError(f"severity level {level!r} is not one of {list(SCALE)}")
    if level == DEFAULT_LEVEL:
        return cfg
    return cfg.model_copy(update={key: rule(cfg, SCALE[level]) for key, rule, _ in LADDERS.values()})


def magnitude(name: str, cfg: Domains, level: int = DEFAULT_LEVEL) -> str:
    """Domain ``name``'s magnitude at ``level``, in words (``VA``: "|angle| in [20, 40] deg")."""
    key, _, words = LADDERS[name]
    return words(getattr(at_level(cfg, level), key))


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
