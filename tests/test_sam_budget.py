"""Tests for pipeline.sam.budget: kept entries per layer."""
import pytest
from torch import nn

from pipeline.sam import ALLOCATIONS, allocate_budget, attach_sam, sam_layers, sam_state
from pipeline.sam.model import _layers

from .sam_helpers import N_ADAPT, make_base


def layer_dims(model):
    return {n: (m.weight.numel(), *nn.init._calculate_fan_in_and_fan_out(m.weight))
            for n, m in _layers(model).items()}


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize("gamma", [0.003, 0.01, 0.05, 0.3, 0.9, 1.0])
def test_budget_sums_exactly(allocation, gamma):
    base = make_base()
    budget = allocate_budget(layer_dims(base), gamma, allocation)
    assert sum(budget.values()) == round(gamma * N_ADAPT)
    model = attach_sam(base, gamma, allocation)
    for name, layer in sam_layers(model).items():
        assert layer.k == budget[name] <= layer.base.weight.numel()
        assert int(layer.mask().sum()) == budget[name]
    assert sam_state(model).kept() == round(gamma * N_ADAPT)


def test_budget_rules_and_capping():
    dims = layer_dims(make_base())
    lin, uni, prod = (allocate_budget(dims, 0.1, a) for a in ALLOCATIONS)
    assert lin != uni and lin != prod
    for name, (numel, _, _) in dims.items():  # uniform: the same ratio everywhere, up to rounding
        assert abs(uni[name] - 0.1 * numel) < 1
    # linear is proportional to d_in + d_out: mix (16+16) vs enc.2 (72+144), up to rounding
    assert abs(lin["enc.2"] / lin["mix"] - 216 / 32) < 0.5
    capped = allocate_budget({"big": (10000, 100, 100), "tiny": (4, 2, 2)}, 0.5, "linear")
    assert capped == {"big": 4998, "tiny": 4}
    full = allocate_budget(dims, 0.9, "linear")  # enc.0/dec.2 get shares above their numel
    assert full["enc.0"] == 216 and full["dec.2"] == 216 and sum(full.values()) == round(0.9 * N_ADAPT)
    with pytest.raises(ValueError):
        allocate_budget(dims, 1e-6, "linear")
    with pytest.raises(ValueError):
        allocate_budget(dims, 0.1, "random")

