"""The memory of a network of K agents, from each method's measured bytes per agent (one agent per
domain): the report's ``memory_network`` table and claim C4 use this one model.

"agent": the same per agent whatever K (a SAM, adapter or bias file; tuning_copy's second full copy);
"partner": one equalizer per partner, (K - 1) of them, the measured bytes being D - 1 of them (D domains).
"""
from __future__ import annotations

PER_AGENT, PER_PARTNER = "agent", "partner"
NETWORK_SCALING = {"sam": PER_AGENT, "lora": PER_AGENT, "delta_topk": PER_AGENT, "bitfit": PER_AGENT,
                   "tuning_copy": PER_AGENT, "equalizer": PER_PARTNER}
NETWORK_AGENTS = tuple(2 ** i for i in range(1, 11))  # K = 2, 4, ..., 1024


def scaling(method: str) -> str | None:
    """How ``method``'s bytes grow with K: the table above, else the method file's ``NETWORK_SCALING``, else
    "agent" for a zero-forget method (``SWITCH_OFF_EXACT``: a file per agent that it switches off to talk);
    None for what stores nothing (the pretrained model, the controls, tuning_retune)."""
    if method in NETWORK_SCALING:
        return NETWORK_SCALING[method]
    from ..methods import registry
    module = registry().get(method)
    if module is None:
        return None
    return getattr(module, "NETWORK_SCALING", PER_AGENT if getattr(module, "SWITCH_OFF_EXACT", False) else None)


def network_bytes(method: str, measured_per_agent: float, agents: int, domains: int) -> float:
    """Bytes one agent stores beyond the shared model in a network of ``agents`` agents, from what it was
    measured to store with ``domains`` agents (the evaluation's network: one agent per domain)."""
    if scaling(method) == PER_AGENT:
        return float(measured_per_agent)
    if domains < 2:
        raise ValueError(f"network_bytes: {method} needs at least 2 domains to have partners, got {domains}")
    return (agents - 1) * measured_per_agent / (domains - 1)
