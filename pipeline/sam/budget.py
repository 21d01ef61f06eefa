"""How many entries each layer keeps: the global budget round(γN) spread over the layers."""
from __future__ import annotations

from typing import Mapping

ALLOCATIONS = ("linear", "uniform", "product")


def _largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split `total` proportionally to integer `weights`; exact integer arithmetic, ties by order."""
    wsum = sum(weights.values())
    share = {n: total * w // wsum for n, w in weights.items()}
    order = sorted(weights, key=lambda n: -(total * weights[n] % wsum))  # stable sort: ties keep order
    for n in order[: total - sum(share.values())]:
        share[n] += 1
    return share


def allocate_budget(layers: Mapping[str, tuple[int, int, int]], sparsity: float,
                    allocation: str = "linear") -> dict[str, int]:
    """Kept entries per layer; `layers` maps name -> (numel, d_in, d_out).

    The total is round(sparsity * N) with N = sum of numel (Python's round, half to
    even), so the model-wide sparsity is exact. It is spread proportionally to
    d_in + d_out (`linear`, the paper's rule), numel (`uniform`: the same ratio in
    every layer) or d_in * d_out (`product`), rounded by the largest-remainder
    method. A layer whose share exceeds its numel is capped at numel and the excess
    is split among the other layers by the same rule, repeatedly.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if not 0.0 < sparsity <= 1.0:
        raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
    if any(numel <= 0 for numel, _, _ in layers.values()):
        raise ValueError("every layer needs numel > 0")
    total = round(sparsity * sum(numel for numel, _, _ in layers.values()))
    if total == 0:
        raise ValueError(f"sparsity {sparsity} keeps no entry of {len(layers)} layers")
    rule = {"linear": lambda n, i, o: i + o, "uniform": lambda n, i, o: n,
            "product": lambda n, i, o: i * o}[allocation]
    free = {name: int(rule(*dims)) for name, dims in layers.items()}
    budget: dict[str, int] = {}
    while free:
        share = _largest_remainder(total - sum(budget.values()), free)
        over = [n for n in free if share[n] > layers[n][0]]
        if not over:
            budget.update(share)
            break
        for n in over:
            budget[n] = layers[n][0]
            del free[n]
    return {n: budget[n] for n in layers}
