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


def network_bytes(method: str, measured_per_agent: float, agents: int, domains: int) -> float:
    """Bytes one agent stores beyond the shared model in a network of ``agents`` agents, from what it was
    measured to store with ``domains`` agents (the evaluation's network: one agent per domain)."""
    if NETWORK_SCALING[method] == PER_AGENT:
        return float(measured_per_agent)
    if domains < 2:
        raise ValueError(f"network_bytes: {method} needs at least 2 domains to have partners, got {domains}")
    return (agents - 1) * measured_per_agent / (domains - 1)
