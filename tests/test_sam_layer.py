"""Tests for pipeline.sam.layer: one wrapped layer (zero forgetting, straight-through gradients)."""
import copy

import pytest
import torch
from torch import nn

from pipeline.sam import attach_sam, install_sam, sam_layers, sam_parameters, sam_state, set_sam_enabled

from .sam_helpers import LAYERS, adapted, make_base, out, train, x  # noqa: F401 - x is a fixture


@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.5])
def test_disabled_is_base_bit_for_bit(gamma, x):
    base = make_base()
    model = adapted(base, gamma, x=x)
    ref = out(base, x)
    for phase in ("trained", "installed"):
        set_sam_enabled(model, False)
        for name, layer in sam_layers(model).items():
            assert layer.effective_weight() is layer.base.weight
            assert torch.equal(layer.base.weight, base.get_submodule(name).weight)
        assert torch.equal(out(model, x), ref), phase
        set_sam_enabled(model, True)
        assert not torch.equal(out(model, x), ref), phase
        install_sam(model, sam_state(model))


def test_ste_gradients_reach_scores(x):
    model = attach_sam(make_base(), 0.1)
    nn.functional.mse_loss(model(x), x).backward()
    for layer in sam_layers(model).values():  # values = 0: scores get no signal yet, values all do
        assert layer.scores.grad.abs().sum() == 0
        assert (layer.values.grad[~layer.mask()] != 0).any()
    model.zero_grad()
    with torch.no_grad():
        for v in sam_parameters(model)[1]:
            v.normal_(0, 1e-2)
    nn.functional.mse_loss(model(x), x).backward()
    for layer in sam_layers(model).values():
        outside = ~layer.mask()
        assert (layer.scores.grad[outside] != 0).any() and (layer.values.grad[outside] != 0).any()
        assert torch.equal(layer.scores.grad, layer.values.grad * layer.values.detach())


def test_mask_moves_with_adam(x):
    model = attach_sam(make_base(), 0.05)
    before = {n: l.mask() for n, l in sam_layers(model).items()}
    train(model, x, steps=8, lr_values=1e-4)
    changed = kept = 0
    for name, layer in sam_layers(model).items():
        now = layer.mask()
        assert int(now.sum()) == layer.k
        changed += int((before[name] & ~now).sum())
        kept += layer.k
    assert changed / kept > 0


def test_reference_dense_weights(x):
    base = make_base()
    model = adapted(base, 0.2, x=x)
    ref = copy.deepcopy(base)
    with torch.no_grad():  # training mode: W0 + mask * values
        for name, layer in sam_layers(model).items():
            dense = base.get_submodule(name).weight + layer.mask() * layer.values
            ref.get_submodule(name).weight.copy_(dense)
    assert torch.allclose(out(model, x), out(ref, x), rtol=0, atol=1e-6)
    state = sam_state(model)
    install_sam(model, state)
    with torch.no_grad():  # stored: W0 + scatter(indices, values)
        for name, w in ((n, ref.get_submodule(n).weight) for n in LAYERS):
            w0 = base.get_submodule(name).weight
            delta = torch.zeros(w0.numel()).index_put_((state.indices[name],), state.values[name].float())
            w.copy_(w0 + delta.view_as(w0))
            assert torch.equal(sam_layers(model)[name].effective_weight(), w)
    assert torch.equal(out(model, x), out(ref, x))

