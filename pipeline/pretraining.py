"""Pretraining a base model (the aligned Tx/Rx pair): the recipe the ``pretrain`` stage runs and the
studies that pretrain other bases (``pipeline/studies/bases.py``, ``budget.py``) reuse."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .data import load_images, to_tensor
from .train import build_model, data_fingerprint, fingerprint, fit

if TYPE_CHECKING:
    from .config import Params
    from .paths import Paths

RECIPE_BLOCKS = {"data", "model", "train", "pretrain", "evaluate"}  # the params a base's checkpoint key holds


def load_split(paths: Paths, name: str) -> torch.Tensor:
    return to_tensor(load_images(paths.split(name)))


def self_link(model):
    """The agent's own encoder -> channel -> decoder, as a ``decode(x, generator)`` callable."""
    return lambda x, gen: model(x, gen)


def base_key(params: Params, what: tuple, *splits: torch.Tensor) -> str:
    """The checkpoint key of a pretrained base: what it is, its data and the pretrain recipe."""
    return fingerprint(*what, data_fingerprint(*splits), params.model_dump(include=RECIPE_BLOCKS))


def train_base(params: Params, train_x: torch.Tensor, *, seed: int, epochs: int, device, checkpoint, key: str,
               desc: str = "pretrain", on_epoch=None):
    """A base model pretrained with the params' recipe (Adam, ``pretrain.schedule`` over ``epochs``,
    ``pretrain.clip``, ``pretrain.batch_size``): ``seed`` draws the initial weights, the data order and
    the channel noise. Returns the model (in train mode) and the per-epoch history."""
    pre = params.pretrain
    torch.manual_seed(seed)
    model = build_model(params).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=pre.lr)
    steps = epochs * -(-len(train_x) // pre.batch_size)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pre.lr, total_steps=steps, pct_start=0.15)
             if pre.schedule == "onecycle" else None)
    history = fit(model, opt, train_x, lambda x, gen: model(x, gen), epochs=epochs,
                  batch_size=pre.batch_size, seed=seed, device=device, checkpoint=checkpoint, key=key, desc=desc,
                  on_epoch=None if on_epoch is None else (lambda epoch, loss: on_epoch(model, epoch, loss)),
                  scheduler=sched, clip=pre.clip)
    return model, history
