"""Sparse additive modification (SAM): the "zero-forget" adapter (arXiv 2411.19385).

A frozen pretrained model keeps its weights W0. SAM adds a sparse delta,
W = W0 + m ⊙ v, where the binary mask m keeps exactly k entries per weight
tensor; "sparsity" γ is the kept fraction (the k's sum to round(γN)). Switched
off, the model computes with W0 bit for bit, so nothing the base model knew is
forgotten; the delta is stored apart from the base model as (indices, values),
about 3 bytes per kept entry plus a header under 1 KiB: below γ of the base
model's fp32 bytes once about a thousand entries are kept (γ = 1 % of a
144k-parameter model: 0.95 %), not for tiny γN.

Only the weights of Conv2d, ConvTranspose2d and Linear layers adapt. Biases and
every other parameter or buffer (PReLU slopes, norms) stay part of W0: they are
frozen and take no part in the budget, so "SAM off" is exactly the base model.

The package, in peft's shape: `budget` (kept entries per layer), `layer` (one
wrapped layer), `model` (wrap, switch, freeze and install on a whole model),
`storage` (the file). The base fingerprint lives in `pipeline.fingerprint`.
"""
from ..fingerprint import base_fingerprint
from .budget import ALLOCATIONS, allocate_budget
from .layer import SAMLayer
from .model import (SAMState, attach_sam, install_sam, layer_budgets, sam_disabled, sam_layers, sam_parameters,
                    sam_state, set_sam_enabled)
from .storage import FORMAT, SAMFileError, load_sam, memory_cost, save_sam

__all__ = ["ALLOCATIONS", "FORMAT", "SAMFileError", "SAMLayer", "SAMState", "allocate_budget", "attach_sam",
           "base_fingerprint", "install_sam", "layer_budgets", "load_sam", "memory_cost", "sam_disabled",
           "sam_layers", "sam_parameters", "sam_state", "save_sam", "set_sam_enabled"]
