"""The network view (pipeline/network.py, stage ``network``): every Tx -> Rx link of every method."""
from __future__ import annotations

from pipeline.methods import BASE_AGENT
from pipeline.metrics import ordered_pairs

from .conftest import ADAPTED_DOMAINS, ADAPTED_SPARSITIES, context

DOMAINS, SPARSITIES = ADAPTED_DOMAINS, ADAPTED_SPARSITIES


def test_network_view_sam_links_equal_the_pretrained_link(adapted):
    from pipeline.network import pair_table
    ctx = context(adapted)
    df = pair_table(ctx)
    agents = [BASE_AGENT, *DOMAINS]
    pre = ctx.pretrained()
    reference = ctx.psnr(ctx.link(pre, pre), ctx.split("base_test"))
    pretrained = df[df.method == "pretrained"]
    assert len(pretrained) == len(agents) ** 2 and (pretrained.pair_psnr == reference).all()
    sam = df[df.method == "sam"]
    assert sorted(set(sam.sparsity)) == SPARSITIES
    assert len(sam) == len(SPARSITIES) * len(agents) ** 2  # base agent and diagonal included
    assert {(r.tx, r.rx) for r in sam.itertuples()} == {(x, y) for x in agents for y in agents}
    assert (sam.pair_psnr == reference).all(), sam[sam.pair_psnr != reference]
    # and the network view does see the misalignment of the unaligned tuned agents
    raw = df[df.method == "no_alignment"].set_index(["tx", "rx"]).pair_psnr
    assert all(raw[(x, y)] != reference for x, y in ordered_pairs(DOMAINS))
