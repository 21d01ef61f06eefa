"""Study ``allocation`` (pipeline/studies/allocation.py): sam's budget spread over the layers three ways."""
from __future__ import annotations

import dataclasses

from ..conftest import cell, context


def test_the_allocation_study_reads_the_main_cell_and_trains_the_other_allocations(adapted):
    import matplotlib.pyplot as plt

    from pipeline.config import parse
    from pipeline.sam import layer_budgets
    from pipeline.studies import allocation
    tree = adapted.params.model_dump(mode="json")
    tree["ablate"].update(studies=["allocation"], sparsity=0.1)  # a sparsity of the main grid: linear is its cell
    params = parse(tree)
    ctx = dataclasses.replace(context(adapted), params=params, checkpoints=adapted.paths.checkpoints / "alloc-test")
    df, finding, fig = allocation.run(ctx)
    plt.close(fig)
    assert list(df.allocation) == ["linear", "uniform", "product"] and set(df.domain) == {"VH"}
    main = cell(adapted.paths, "sam", "VH", 0.1)
    linear = df.set_index("allocation").loc["linear"]
    assert linear.domain_psnr == main["domain_psnr"] and linear.mask_moved == main["details"]["mask_moved_fraction"]
    pre = ctx.pretrained()
    pretrained = ctx.psnr(ctx.self_link(pre), ctx.split("VH_test"))
    assert (df.gain_over_pretrained == df.domain_psnr - pretrained).all()
    assert "mean domain PSNR by allocation: linear: " in finding and ("best:" in finding or "tie at" in finding)
    same = layer_budgets(pre, 0.1, "uniform") == layer_budgets(pre, 0.1, "product")
    assert ("identical per-layer budgets" in finding) == same
