"""The model API: wrap a model's adaptable layers, switch them, freeze and install SAM states."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from .budget import allocate_budget
from .layer import SAMLayer, _adaptable


@dataclass
class SAMState:
    """A frozen SAM: per layer (plain-model name) sorted int64 indices, values, weight shape."""
    indices: dict[str, Tensor]
    values: dict[str, Tensor]
    shapes: dict[str, tuple[int, ...]]
    meta: dict[str, str] = field(default_factory=dict)

    def kept(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())


def _layers(model: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Adaptable layers (plain or already wrapped) by the names the plain model has."""
    out: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if isinstance(child, SAMLayer) or _adaptable(child):
            out[prefix + name] = child
        else:
            out.update(_layers(child, f"{prefix}{name}."))
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, last = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, last, new)


def sam_layers(model: nn.Module) -> dict[str, SAMLayer]:
    return {n: m for n, m in _layers(model).items() if isinstance(m, SAMLayer)}


def layer_budgets(model: nn.Module, sparsity: float, allocation: str = "linear") -> dict[str, int]:
    """Kept entries per adaptable layer of ``model`` (by plain-model name) for this budget rule."""
    weights = {n: (m.base if isinstance(m, SAMLayer) else m).weight for n, m in _layers(model).items()}
    return shape_budgets({n: tuple(w.shape) for n, w in weights.items()}, sparsity, allocation)


def shape_budgets(shapes: Mapping[str, tuple[int, ...]], sparsity: float, allocation: str = "linear") -> dict[str, int]:
    """``layer_budgets`` from the layers' weight shapes alone (what a stored SAM records)."""
    meta = {n: torch.empty(shape, device="meta") for n, shape in shapes.items()}
    dims = {n: (w.numel(), *nn.init._calculate_fan_in_and_fan_out(w))
            for n, w in meta.items()}  # ConvTranspose2d: torch's (in, out/groups, kh, kw) convention
    return allocate_budget(dims, sparsity, allocation)


def attach_sam(model: nn.Module, sparsity: float, allocation: str = "linear", value_grad: str = "dense") -> nn.Module:
    """Wrap every adaptable layer in place (training mode), freeze all base parameters; ``value_grad``:
    the values' gradient, straight-through ``dense`` or the exact ``masked`` (``SAMLayer``)."""
    layers = _layers(model)
    if not layers or any(isinstance(m, SAMLayer) for m in layers.values()):
        raise ValueError("model has no adaptable layer or already carries SAM")
    model.requires_grad_(False)
    budget = layer_budgets(model, sparsity, allocation)
    for n, m in layers.items():
        _replace(model, n, SAMLayer(m, budget[n], value_grad))
    _remember_layers(model)
    return model


def sam_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(scores, values) of training-mode layers, for two optimizer groups (paper: lr 1 and 1e-4)."""
    train = [m for m in sam_layers(model).values() if m.mode == "train"]
    return [m.scores for m in train], [m.values for m in train]


def _remember_layers(model: nn.Module) -> None:
    """Keep the SAM layers of ``model`` as a plain tuple, so switching costs no module-tree walk."""
    model.__dict__["_sam_switch"] = tuple(sam_layers(model).values())


def _switch_layers(model: nn.Module) -> tuple[SAMLayer, ...]:
    """The SAM layers wrapped by the last ``attach_sam``/``install_sam`` on this model (a layer swapped
    in by hand afterwards is found by a fresh walk only if nothing was remembered)."""
    layers = model.__dict__.get("_sam_switch")
    if layers is None:
        _remember_layers(model)
        layers = model.__dict__["_sam_switch"]
    return layers


def set_sam_enabled(model: nn.Module, flag: bool) -> None:
    """Switch every SAM layer on or off: about a microsecond, W0 untouched."""
    flag = bool(flag)
    for m in _switch_layers(model):
        m.__dict__["enabled"] = flag  # a plain attribute: skip nn.Module.__setattr__


@contextmanager
def sam_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``with sam_disabled(model):`` computes with W0 bit for bit inside the block.

    On any exit, an exception included, each SAM layer gets back the ``enabled`` state it had on
    entry (not simply "on"), so blocks nest and a model with some layers already off keeps them off.
    """
    layers = _switch_layers(model)
    before = [m.enabled for m in layers]
    try:
        for m in layers:
            m.__dict__["enabled"] = False
        yield model
    finally:
        for m, flag in zip(layers, before):
            m.__dict__["enabled"] = flag


def sam_state(model: nn.Module, values_dtype: torch.dtype | None = torch.float16) -> SAMState:
    """Freeze the current top-k. Values are rounded to fp16 by default, i.e. exactly what
    `save_sam` stores, so evaluating the installed state in-process equals the loaded one."""
    st = SAMState({}, {}, {})
    for n, m in sam_layers(model).items():
        st.indices[n], st.values[n] = m.kept(values_dtype)
        st.shapes[n] = tuple(m.base.weight.shape)
    return st


def _index_problem(idx: Tensor, val: Tensor, numel: int) -> str | None:
    if idx.dtype != torch.long or idx.dim() != 1 or val.dim() != 1 or len(idx) != len(val):
        return "indices must be 1-D int64 with one value each"
    if not val.is_floating_point():
        return "values must be floating point"
    if len(idx) and (idx.min() < 0 or idx.max() >= numel):
        bad = int(idx[(idx < 0) | (idx >= numel)][0])
        return f"indices out of range [0, {numel}) of the layer's weight (index {bad})"
    if len(idx) > 1 and not bool((idx[1:] > idx[:-1]).all()):
        seen, counts = torch.unique(idx, return_counts=True)
        if bool((counts > 1).any()):
            first = int((counts > 1).nonzero()[0])
            return f"indices repeated (index {int(seen[first])} kept {int(counts[first])} times)"
        return "indices not strictly increasing"
    return None


def _state_problem(state: SAMState, layers: Mapping[str, nn.Module]) -> str | None:
    names = set(layers)
    if set(state.indices) != names or set(state.values) != names or set(state.shapes) != names:
        return (f"layer names differ from the model's (missing {sorted(names - set(state.indices))}, "
                f"unexpected {sorted(set(state.indices) - names)})")
    for n, m in layers.items():
        w = m.base.weight if isinstance(m, SAMLayer) else m.weight
        if tuple(state.shapes[n]) != tuple(w.shape):
            return f"layer {n}: shape {tuple(state.shapes[n])} != model's {tuple(w.shape)}"
        problem = _index_problem(state.indices[n], state.values[n], w.numel())
        if problem:
            return f"layer {n}: {problem}"
    return None


def install_sam(model: nn.Module, state: SAMState) -> nn.Module:
    """Switch the model to `state` (wrapping plain layers if needed); W0 is not touched,
    so several states can be held in memory and swapped at the cost of one merge each."""
    layers = _layers(model)
    problem = _state_problem(state, layers)
    if problem:
        raise ValueError(problem)
    for n, m in layers.items():
        if not isinstance(m, SAMLayer):
            m = SAMLayer(m)
            _replace(model, n, m)
        m.install(state.indices[n], state.values[n])
    _remember_layers(model)
    return model
