"""Study ``mask`` (pipeline/studies/mask.py): the score mask against the random and Fisher fixed masks."""
from __future__ import annotations

import torch

from ..conftest import context


def test_the_mask_study_and_its_fixed_masks(adapted):
    import matplotlib.pyplot as plt
    from pipeline.methods.sam import train_sam
    from pipeline.sam import attach_sam, base_fingerprint, sam_layers
    from pipeline.studies import mask as study
    params = adapted.params
    ctx = context(adapted)
    a = params.ablate
    df, finding, fig = study.run(ctx)
    plt.close(fig)
    assert sorted(df["mask"]) == sorted(["score", "random", "fisher"] * len(a.domains))
    moved = df.set_index(["domain", "mask"]).mask_moved
    for d in a.domains:
        assert moved[(d, "random")] == 0.0 and moved[(d, "fisher")] == 0.0  # fixed masks
        assert moved[(d, "score")] > 0  # the score-based mask really moves
    assert df.domain_psnr.notna().all() and ("best:" in finding or "tie at" in finding)

    d, s = a.domains[0], a.sparsity
    pre_fp = base_fingerprint(ctx.pretrained())
    initial = {n: m.mask() for n, m in sam_layers(attach_sam(ctx.pretrained(), s, params.adapt.allocation)).items()}
    for mask in ("score", "random", "fisher"):
        trained = train_sam(ctx, d, s, allocation=params.adapt.allocation, mask=mask, tag=f"test-{mask}")
        model = trained["model"]
        # W0 bitwise unchanged, whatever the mask (fisher even back-propagates into W0 for its scores)
        assert trained["base_fingerprint"] == pre_fp
        assert base_fingerprint(model) == pre_fp, mask
        assert not any(m.base.weight.requires_grad for m in sam_layers(model).values()), mask
        layers = sam_layers(model)
        assert all(int(m.mask().sum()) == int(initial[n].sum()) for n, m in layers.items())  # same budget
        if mask == "fisher":
            assert trained["mask_moved"] == 0.0
            assert any(not torch.equal(m.mask(), initial[n]) for n, m in layers.items()), \
                "the Fisher mask is the |W0| top-k mask"
        if mask == "random":
            assert any(not torch.equal(m.mask(), initial[n]) for n, m in layers.items())
