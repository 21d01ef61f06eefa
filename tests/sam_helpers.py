"""The tiny model and helpers that the SAM tests (tests/test_sam_*.py, test_fingerprint.py) share."""
import copy

import pytest
import torch
from torch import nn

from pipeline.sam import attach_sam, sam_parameters


class TinyAE(nn.Module):
    """Conv2d -> PReLU -> Conv2d/2 -> Linear (over channels) -> ConvTranspose2d -> PReLU -> Conv2d."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.mix = nn.Linear(16, 16)
        self.dec = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.PReLU(),
                                 nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        h = self.enc(x)
        return self.dec(self.mix(h.movedim(1, -1)).movedim(-1, 1))


LAYERS = ["enc.0", "enc.2", "mix", "dec.0", "dec.2"]
N_ADAPT = 216 + 1152 + 256 + 2048 + 216


def make_base(seed=0):
    torch.manual_seed(seed)
    return TinyAE()


@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def train(model, x, steps=5, target=None, lr_values=1e-3):
    target = x.flip(-1) if target is None else target
    scores, values = sam_parameters(model)
    opt = torch.optim.Adam([{"params": scores, "lr": 1.0}, {"params": values, "lr": lr_values}])
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()


def adapted(base, sparsity=0.1, steps=5, x=None, **kw):
    model = attach_sam(copy.deepcopy(base), sparsity, **kw)
    if steps:
        train(model, x if x is not None else torch.randn(2, 3, 8, 8), steps)
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def out(model, x):
    return model(x)

