"""Tests for pipeline.sam.model: wrapping a whole model, training, switching and swapping states."""
import copy

import pytest
import torch

from pipeline.fingerprint import base_fingerprint, base_tensors
from pipeline.sam import (attach_sam, install_sam, sam_disabled, sam_layers, sam_parameters, sam_state,
                          set_sam_enabled)

from .sam_helpers import LAYERS, adapted, make_base, out, train, x  # noqa: F401 - x is a fixture


def test_training_changes_only_scores_and_values(x):
    base = make_base()
    model = attach_sam(copy.deepcopy(base), 0.1)
    scores0 = [p.clone() for p in sam_parameters(model)[0]]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in LAYERS for k in ("scores", "values")}
    train(model, x, steps=6)
    for name, t in base_tensors(model).items():
        assert torch.equal(t, base_tensors(base)[name]), name
    assert all(not torch.equal(a, b) for a, b in zip(scores0, sam_parameters(model)[0]))
    assert all(v.abs().sum() > 0 for v in sam_parameters(model)[1])
    assert base_fingerprint(model) == base_fingerprint(base)


def test_swap_states(x):
    base = make_base()
    model = attach_sam(copy.deepcopy(base), 0.1)
    train(model, x, 5, target=x.flip(-1))
    a = sam_state(model)
    train(model, x, 5, target=-x)
    b = sam_state(model)
    server = copy.deepcopy(base)
    w0 = dict(base_tensors(server))
    install_sam(server, a)
    out_a = out(server, x)
    install_sam(server, b)
    out_b = out(server, x)
    assert not torch.equal(out_a, out_b)
    for state, expected in ((a, out_a), (b, out_b), (a, out_a)):
        install_sam(server, state)
        assert torch.equal(out(server, x), expected)
    now = base_tensors(server)
    assert all(now[n] is t and torch.equal(t, base_tensors(base)[n]) for n, t in w0.items())
    set_sam_enabled(server, False)
    assert torch.equal(out(server, x), out(base, x))



# ----------------------------------------------------------------------------- sam_disabled
def enabled(model):
    return {n: m.enabled for n, m in sam_layers(model).items()}


def test_sam_disabled_runs_the_base_bit_for_bit(x):
    base = make_base()
    model = adapted(base, 0.1, x=x)
    adapted_out = out(model, x)
    for phase in ("trained", "installed"):
        with sam_disabled(model) as inside:
            assert inside is model and not any(enabled(model).values())
            assert torch.equal(out(model, x), out(base, x)), phase
        assert all(enabled(model).values()) and torch.equal(out(model, x), adapted_out), phase
        install_sam(model, sam_state(model))
        adapted_out = out(model, x)


def test_sam_disabled_restores_after_an_exception(x):
    model = adapted(make_base(), 0.1, x=x)
    with pytest.raises(RuntimeError, match="inside"):
        with sam_disabled(model):
            raise RuntimeError("inside")
    assert all(enabled(model).values())


def test_sam_disabled_gives_back_a_mixed_state(x):
    model = adapted(make_base(), 0.1, x=x)
    layers = sam_layers(model)
    layers["enc.2"].enabled = layers["dec.0"].enabled = False
    before = enabled(model)
    assert sorted(n for n, on in before.items() if not on) == ["dec.0", "enc.2"]
    with sam_disabled(model):
        assert not any(enabled(model).values())
    assert enabled(model) == before
    with pytest.raises(KeyError):
        with sam_disabled(model):
            raise KeyError("x")
    assert enabled(model) == before


def test_sam_disabled_nests(x):
    base = make_base()
    model = adapted(base, 0.1, x=x)
    with sam_disabled(model):
        with sam_disabled(model):
            assert torch.equal(out(model, x), out(base, x))
        assert not any(enabled(model).values())  # the outer block still holds
        assert torch.equal(out(model, x), out(base, x))
    assert all(enabled(model).values())
    set_sam_enabled(model, False)  # off before entering: stays off after
    with sam_disabled(model):
        pass
    assert not any(enabled(model).values())
