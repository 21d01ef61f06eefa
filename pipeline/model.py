"""The semantic-communication (SC) system: conv encoder (Tx) -> power normalisation -> AWGN -> conv decoder (Rx).

DeepJSCC-style (Bourtsoulatze et al., 2019). For a 32x32x3 image the encoder emits a
``(c, 8, 8)`` latent whose ``c * 64`` real values are the channel symbols, so the bandwidth ratio
(channel symbols per source value, source = 32*32*3) fixes ``c``: ratio 1/6 gives c = 8.
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


def power_normalize(z: torch.Tensor) -> torch.Tensor:
    """Scale each image's symbols to unit mean power (the transmitter's power constraint)."""
    flat = z.flatten(1)
    power = flat.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-12)
    return (flat / power.sqrt()).view_as(z)


def awgn(z: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise for unit-power symbols: noise variance 10^(-SNR/10)."""
    sigma = 10 ** (-snr_db / 20)
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return z + sigma * noise


class Encoder(nn.Module):
    """Tx: image in [0, 1] -> un-normalised latent (c, 8, 8)."""

    def __init__(self, width: int, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2), nn.PReLU(width),
            nn.Conv2d(width, 2 * width, 5, stride=2, padding=2), nn.PReLU(2 * width),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2), nn.PReLU(2 * width),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2), nn.PReLU(2 * width),
            nn.Conv2d(2 * width, channels, 5, padding=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Rx: received latent (c, 8, 8) -> image in [0, 1] (sigmoid output)."""

    def __init__(self, width: int, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 2 * width, 5, padding=2), nn.PReLU(2 * width),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2), nn.PReLU(2 * width),
            nn.Conv2d(2 * width, 2 * width, 5, padding=2), nn.PReLU(2 * width),
            nn.ConvTranspose2d(2 * width, width, 5, stride=2, padding=2, output_padding=1), nn.PReLU(width),
            nn.ConvTranspose2d(width, 3, 5, stride=2, padding=2, output_padding=1),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(y))


class SCModel(nn.Module):
    """One agent's SC system. ``forward`` is the full link Tx -> channel -> Rx."""

    def __init__(self, width: int = 16, bandwidth_ratio: float = 1 / 6, snr_db: float = 10.0):
        super().__init__()
        self.channels = latent_channels(bandwidth_ratio)
        self.snr_db = snr_db
        self.encoder = Encoder(width, self.channels)
        self.decoder = Decoder(width, self.channels)

    def transmit(self, x: torch.Tensor) -> torch.Tensor:
        """Channel symbols, unit mean power per image."""
        return power_normalize(self.encoder(x))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                snr_db: float | None = None) -> torch.Tensor:
        y = awgn(self.transmit(x), self.snr_db if snr_db is None else snr_db, generator)
        return self.decoder(y)
