"""One adapted layer: a frozen base Conv2d, ConvTranspose2d or Linear plus its sparse delta m ⊙ v."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


VALUE_GRADS = ("dense", "masked")  # adapt.value_grad: the values' gradient in the backward of m ⊙ v


class _MaskedValues(torch.autograd.Function):
    """delta = mask ⊙ values, with a straight-through backward for the scores.

    grad_scores = g * values (the straight-through estimator of the top-k's derivative). The values'
    gradient is ``dense`` (straight-through as well: grad_values = g for every entry) or ``masked``
    (the exact gradient of W0 + m ⊙ v: grad_values = g * m). With the exact one, masked-out values
    stay 0 and so does their scores' gradient g * values: an entry outside the mask can enter it only
    when a kept one's score falls below it. The dense one lets every value learn, so the scores of
    masked-out entries move too (and values outside the mask change without ever being used).
    """

    @staticmethod
    def forward(ctx, scores: Tensor, values: Tensor, mask: Tensor, masked: bool = False) -> Tensor:
        if masked:
            ctx.save_for_backward(values, mask)
        else:
            ctx.save_for_backward(values)
        return values * mask

    @staticmethod
    def backward(ctx, g: Tensor):
        if len(ctx.saved_tensors) == 2:
            values, mask = ctx.saved_tensors
            return g * values, g * mask, None, None
        (values,) = ctx.saved_tensors
        return g * values, g, None, None


def _adaptable(m: nn.Module) -> bool:
    # MultiheadAttention's out_proj is a Linear subclass whose weight is read directly.
    return (isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
            and type(m).__name__ != "NonDynamicallyQuantizableLinear")


class SAMLayer(nn.Module):
    """One base layer plus its sparse delta. The base's parameters are never written.

    mode "train": trainable `scores` and `values` (weight-shaped); the mask is the
    top-k of the scores; `value_grad` ("dense" or "masked", see `_MaskedValues`) is the values'
    gradient; `last_mask` is the mask of the last forward pass that recorded gradients (None before
    one): the mask the values were last trained with. mode "stored": sorted int64 `indices` and their `values`
    (kept in the dtype they came in); the effective weight is a merged copy of W0,
    cached, so serving costs the same as the base. `enabled=False` runs the very
    `base.weight` tensor, i.e. the base model bit for bit.
    """

    # The wrapper protocol of pipeline.fingerprint: the wrapped layer is `.base` and only its
    # tensors are W0, so a model hashes the same with or without SAM on it.
    wraps_base = True

    def __init__(self, base: nn.Module, k: int | None = None, value_grad: str = "dense"):
        super().__init__()
        if not _adaptable(base):
            raise TypeError(f"SAM adapts Conv2d, ConvTranspose2d or Linear, not {type(base).__name__}")
        if value_grad not in VALUE_GRADS:
            raise ValueError(f"value_grad {value_grad!r} must be one of {list(VALUE_GRADS)}")
        self.base = base.requires_grad_(False)
        self.enabled = True
        self.value_grad = value_grad
        self.last_mask: Tensor | None = None
        self.register_buffer("indices", None, persistent=False)
        self._merged: Tensor | None = None
        self._merged_key: tuple | None = None
        w = base.weight.detach()
        if k is None:  # stored mode, empty delta until install()
            self.install(torch.zeros(0, dtype=torch.long), w.new_zeros(0))
            return
        if not 0 <= k <= w.numel():
            raise ValueError(f"k={k} outside [0, {w.numel()}]")
        self.mode, self.k = "train", int(k)
        # Scores start at |W0| over the layer's mean |W0|: the initial mask keeps the
        # largest base weights and scores of different layers live on one scale.
        a = w.abs()
        self.scores = nn.Parameter(a / a.mean().clamp_min(torch.finfo(a.dtype).tiny))
        self.values = nn.Parameter(torch.zeros_like(w))  # delta starts at 0: W = W0

    def _topk(self) -> Tensor:
        return self.scores.detach().flatten().topk(self.k, sorted=False).indices

    def mask(self) -> Tensor:
        """Boolean mask (weight-shaped) of the kept entries."""
        w = self.base.weight
        idx = self.indices if self.mode == "stored" else self._topk()
        flat = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        flat[idx] = True
        return flat.view(w.shape)

    def kept(self, values_dtype: torch.dtype | None = torch.float16) -> tuple[Tensor, Tensor]:
        """(sorted int64 flat indices, values there), values cast to `values_dtype` (None: keep)."""
        if self.mode == "stored":
            idx, val = self.indices, self.values
        else:
            idx = self._topk().sort().values
            val = self.values.detach().flatten()[idx]
        val = val.detach().clone() if values_dtype is None else val.detach().to(values_dtype, copy=True)
        return idx.clone(), val

    def install(self, indices: Tensor, values: Tensor) -> None:
        """Switch to a stored delta (copied), dropping scores/values or any previous state."""
        w = self.base.weight
        self._parameters.pop("values", None)
        self.register_parameter("scores", None)
        self.register_buffer("values", values.detach().to(w.device, copy=True), persistent=False)
        self.indices = indices.detach().to(w.device, torch.long, copy=True)
        self.mode, self.k = "stored", int(indices.numel())
        self.last_mask = None
        self._merged_key = None
        self._stored_weight()

    def _stored_weight(self) -> Tensor:
        """W0 + delta as one merged copy; rebuilt only if W0 moved or was changed in place."""
        w = self.base.weight
        if self.indices.numel() == 0:  # empty delta: no copy needed
            return w
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._merged_key != key:
            flat = w.detach().flatten().clone()
            flat.index_add_(0, self.indices, self.values.to(w.device, w.dtype))
            self._merged, self._merged_key = flat.view(w.shape), key
        return self._merged

    def effective_weight(self) -> Tensor:
        w = self.base.weight
        if not self.enabled:
            return w
        if self.mode == "stored":
            return self._stored_weight()
        mask = self.mask()
        if torch.is_grad_enabled():
            self.last_mask = mask
        return w + _MaskedValues.apply(self.scores, self.values, mask, self.value_grad == "masked")

    def forward(self, x: Tensor) -> Tensor:
        b, w = self.base, self.effective_weight()
        if isinstance(b, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, w, b.bias, b.stride, b.padding, b.output_padding, b.groups, b.dilation)
        if isinstance(b, nn.Conv2d):
            return b._conv_forward(x, w, b.bias)
        return F.linear(x, w, b.bias)

    def extra_repr(self) -> str:
        grad = f", value_grad={self.value_grad}" if self.mode == "train" else ""
        return f"mode={self.mode}, k={self.k}, enabled={self.enabled}{grad}"
