"""The semantic-communication (SC) system: conv encoder (Tx) -> power normalisation -> channel -> conv decoder (Rx).

DeepJSCC-style (Bourtsoulatze et al., 2019). For a 32x32x3 image the encoder emits a
``(c, 8, 8)`` latent whose ``c * 64`` real values are the channel symbols, so the bandwidth ratio
(channel symbols per source value, source = 32*32*3) fixes ``c``: ratio 1/6 gives c = 8.
The channel (``CHANNELS``) is AWGN or Rayleigh block fading with receiver CSI.
"""
from __future__ import annotations

import math

import torch
from torch import nn

IMAGE_SHAPE = (3, 32, 32)
LATENT_HW = 8  # two stride-2 convolutions: 32 -> 8


def latent_channels(bandwidth_ratio: float) -> int:
    """Channels of the (c, 8, 8) latent that realise ``bandwidth_ratio`` (rounded, at least 1)."""
    source = math.prod(IMAGE_SHAPE)
    return max(1, round(bandwidth_ratio * source / LATENT_HW**2))


def bandwidth_note(bandwidth_ratio: float) -> str:
    """The bandwidth in both conventions: real symbols per source value (k/n in real channel uses, as
    params give it) and k/n in complex channel uses (two real symbols each: the DeepJSCC papers')."""
    c = latent_channels(bandwidth_ratio)
    k, n = c * LATENT_HW**2, math.prod(IMAGE_SHAPE)
    g = math.gcd(k, n)
    g2 = math.gcd(k // 2, n) if k % 2 == 0 else 1
    complex_ratio = f"{k // 2 // g2}/{n // g2}" if k % 2 == 0 else f"{k}/{2 * n}"
    return (f"{k} real symbols per {n} source values ({c}x{LATENT_HW}x{LATENT_HW} latent): k/n = {k // g}/{n // g} "
            f"in real channel uses = {complex_ratio} in complex channel uses")


def power_normalize(z: torch.Tensor) -> torch.Tensor:
    """Scale each image's symbols to unit mean power (the transmitter's power constraint)."""
    flat = z.flatten(1)
    power = flat.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-12)
    return (flat / power.sqrt()).view_as(z)


def _noise(z: torch.Tensor, snr_db: float, generator: torch.Generator | None) -> torch.Tensor:
    """White Gaussian noise of variance 10^(-SNR/10) per real symbol (the symbols have unit power)."""
    sigma = 10 ** (-snr_db / 20)
    return sigma * torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


def awgn(z: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise for unit-power symbols: noise variance 10^(-SNR/10)."""
    return z + _noise(z, snr_db, generator)


def rayleigh(z: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rayleigh block fading per image, with the coefficient known at the receiver (as in DeepJSCC).

    The model, exactly:
    1. the real symbols of each image, flattened in order, are paired into complex symbols
       ``x_k = z[2k] + j z[2k+1]`` (512 real symbols -> 256 complex channel uses; E|x_k|^2 = 2);
    2. the noise is drawn first, and it is AWGN's draw: ``n = sigma (e_0 + j e_1)`` with e the same
       standard normals ``awgn`` draws for ``z`` from the same generator, sigma^2 = 10^(-SNR/10) per
       real dimension, so the average SNR E|h x|^2 / E|n|^2 is the given SNR;
    3. then one coefficient per image, ``h ~ CN(0, 1)`` (real and imaginary parts N(0, 1/2), drawn
       as a (batch, 2) normal tensor), the same for all the image's symbols (block fading);
    4. the channel: ``y_k = h x_k + n_k``;
    5. the receiver knows h and equalizes (zero forcing): ``x_hat_k = y_k / h = x_k + n_k / h``;
       the decoder gets ``x_hat`` unpaired back to real symbols, in the shape of ``z``.
    So an image sees an AWGN channel whose SNR is |h|^2 times the given one (|h|^2 ~ Exp(1)).
    Computed in float32 complex arithmetic, returned in ``z``'s dtype.
    """
    b = z.shape[0]
    noise = _noise(z, snr_db, generator)
    h = torch.randn((b, 1, 2), generator=generator, device=z.device, dtype=torch.float32) * math.sqrt(0.5)
    h = torch.view_as_complex(h)
    x = torch.view_as_complex(z.float().reshape(b, -1, 2).contiguous())
    n = torch.view_as_complex(noise.float().reshape(b, -1, 2).contiguous())
    x_hat = (h * x + n) / h
    return torch.view_as_real(x_hat).reshape(z.shape).to(z.dtype)


CHANNELS = {"awgn": awgn, "rayleigh": rayleigh}


def apply_channel(kind: str, z: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The symbols the receiver's decoder gets from channel ``kind`` (``CHANNELS``) at ``snr_db``."""
    return CHANNELS[kind](z, snr_db, generator)


NORMS = ("none", "gdn")


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al., 2016), as in DeepJSCC-f (Kurka & Gündüz):
    ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``, or with ``inverse`` its approximate inverse
    ``x_i * sqrt(...)`` (IGDN, the decoder's). ``beta`` and ``gamma`` are kept positive by a softplus of
    free parameters, initialised to beta = 1 and gamma = 0.1 I (off-diagonal 1e-3)."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        inv = lambda v: math.log(math.expm1(v))  # softplus^-1
        self.beta = nn.Parameter(torch.full((channels,), inv(1.0)))
        self.gamma = nn.Parameter(torch.full((channels, channels), inv(1e-3)).fill_diagonal_(inv(0.1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        gamma = nn.functional.softplus(self.gamma).view(c, c, 1, 1)
        norm = nn.functional.conv2d(x * x, gamma, nn.functional.softplus(self.beta) + 1e-6)
        return x * norm.sqrt() if self.inverse else x * norm.rsqrt()


def _stack(convs: list[nn.Module], norm: str, inverse: bool) -> nn.Sequential:
    """conv [-> GDN] -> PReLU for every conv but the last. With ``norm`` none the layer indices are the
    ones every stored file has (``encoder.net.0`` ... ``encoder.net.8``)."""
    layers: list[nn.Module] = []
    for conv in convs[:-1]:
        layers.append(conv)
        if norm == "gdn":
            layers.append(GDN(conv.out_channels, inverse=inverse))
        layers.append(nn.PReLU(conv.out_channels))
    return nn.Sequential(*layers, convs[-1])


class Encoder(nn.Module):
    """Tx: image in [0, 1] -> un-normalised latent (c, 8, 8)."""

    def __init__(self, width: int, channels: int, norm: str = "none"):
        super().__init__()
        self.net = _stack([
            nn.Conv2d(3, width, 5, stride=2, padding=2),
            nn.Conv2d(width, 2 * width, 5, stride=2, padding=2),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2),
            nn.Conv2d(2 * width, channels, 5, padding=2),
        ], norm, inverse=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Rx: received latent (c, 8, 8) -> image in [0, 1] (sigmoid output)."""

    def __init__(self, width: int, channels: int, norm: str = "none"):
        super().__init__()
        self.net = _stack([
            nn.Conv2d(channels, 2 * width, 5, padding=2),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2),
            nn.ConvTranspose2d(2 * width, width, 5, stride=2, padding=2, output_padding=1),
            nn.ConvTranspose2d(width, 3, 5, stride=2, padding=2, output_padding=1),
        ], norm, inverse=True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(y))


class SCModel(nn.Module):
    """One agent's SC system. ``forward`` is the full link Tx -> channel -> Rx."""

    def __init__(self, width: int = 16, bandwidth_ratio: float = 1 / 6, snr_db: float = 10.0, channel: str = "awgn",
                 norm: str = "none"):
        super().__init__()
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; known: {sorted(CHANNELS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; known: {list(NORMS)}")
        self.channels = latent_channels(bandwidth_ratio)
        self.snr_db, self.channel = snr_db, channel  # what the agent trains on (``forward``'s defaults)
        self.encoder = Encoder(width, self.channels, norm)
        self.decoder = Decoder(width, self.channels, norm)

    def transmit(self, x: torch.Tensor) -> torch.Tensor:
        """Channel symbols, unit mean power per image."""
        return power_normalize(self.encoder(x))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                snr_db: float | None = None, channel: str | None = None) -> torch.Tensor:
        y = apply_channel(channel or self.channel, self.transmit(x), self.snr_db if snr_db is None else snr_db,
                          generator)
        return self.decoder(y)
