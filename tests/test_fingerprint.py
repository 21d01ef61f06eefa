"""Tests for pipeline.fingerprint: the base model's hash, seen through any SAM on it."""
import copy
import subprocess
import sys

import torch
from torch import nn

from pipeline.fingerprint import base_fingerprint, base_tensors
from pipeline.sam import attach_sam, install_sam, sam_state

from .conftest import REPO
from .sam_helpers import adapted, make_base


def test_fingerprint_ignores_wrapper():
    base = make_base()
    fp = base_fingerprint(base)
    model = adapted(base, 0.1)
    assert base_fingerprint(model) == fp
    install_sam(model, sam_state(model))
    assert base_fingerprint(model) == fp
    assert sorted(base_tensors(model)) == sorted(dict(base.named_parameters()))
    assert base_fingerprint(make_base(seed=1)) != fp


def test_fingerprint_changes_when_a_weight_changes():
    base = make_base()
    fp = base_fingerprint(base)
    model = attach_sam(copy.deepcopy(base), 0.1)
    with torch.no_grad():  # one entry of W0, under the SAM wrapper
        model.dec[2].base.weight[0, 0, 0, 0] += 1e-3
    assert base_fingerprint(model) != fp
    bias = copy.deepcopy(base)
    with torch.no_grad():  # a bias is W0 too, though it never adapts
        bias.mix.bias[0] += 1e-3
    assert base_fingerprint(bias) != fp


class _Wrapper(nn.Module):
    """Any adapter that follows the protocol: ``wraps_base`` on the class, the wrapped layer as ``.base``."""
    wraps_base = True

    def __init__(self, base):
        super().__init__()
        self.base, self.extra = base, nn.Parameter(torch.ones(3))


def test_fingerprint_sees_through_any_wrapper_by_protocol():
    base = make_base()
    wrapped = copy.deepcopy(base)
    wrapped.mix = _Wrapper(wrapped.mix)
    assert base_fingerprint(wrapped) == base_fingerprint(base)
    assert "mix.extra" not in base_tensors(wrapped) and "mix.weight" in base_tensors(wrapped)


def test_hashing_a_model_does_not_import_the_tuner():
    code = ("import sys, pipeline.fingerprint, pipeline.methods.tuning, pipeline.methods.equalizer; "
            "print(sorted(m for m in sys.modules if m.startswith('pipeline.sam')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
