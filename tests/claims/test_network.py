"""pipeline/claims/network.py: the memory of a network of K agents."""
from __future__ import annotations

import pytest

from pipeline import claims


def test_network_bytes_is_constant_per_agent_or_grows_as_k_minus_1():
    assert [claims.network_bytes("sam", 600, k, 4) for k in (2, 1024)] == [600, 600]
    assert [claims.network_bytes("equalizer", 300, k, 4) for k in (2, 4, 1024)] == [100, 300, 1023 * 100]
    with pytest.raises(ValueError, match="at least 2 domains"):
        claims.network_bytes("equalizer", 300, 8, 1)
