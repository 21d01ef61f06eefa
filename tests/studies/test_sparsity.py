"""Study ``sparsity`` (pipeline/studies/sparsity.py): sam over a widened range of sparsities."""
from __future__ import annotations

import dataclasses

from ..conftest import cell, context


def test_the_sparsity_study_reads_the_main_cells_and_trains_the_other_sparsities(adapted):
    import matplotlib.pyplot as plt

    from pipeline.config import parse
    from pipeline.studies import sparsity
    tree = adapted.params.model_dump(mode="json")
    tree["ablate"].update(studies=["sparsity"], sparsities=[0.003, 0.01, 0.1])  # 0.01, 0.1: the main grid's
    params = parse(tree)
    ctx = dataclasses.replace(context(adapted), params=params, checkpoints=adapted.paths.checkpoints / "sparsity-test")
    df, finding, fig = sparsity.run(ctx)
    plt.close(fig)
    assert list(df.sparsity) == [0.003, 0.01, 0.1] and set(df["mask"]) == {"score"}
    for s in (0.01, 0.1):
        row, main = df.set_index("sparsity").loc[s], cell(adapted.paths, "sam", "VH", s)
        assert row.domain_psnr == main["domain_psnr"] and row.mask_moved == main["details"]["mask_moved_fraction"]
    trained = df.set_index("sparsity").loc[0.003]
    assert trained.mask_moved > 0 and trained.domain_psnr not in set(df.domain_psnr.iloc[1:])
    assert all(f"γ={s:g}: {v:.2f} dB" in finding for s, v in zip(df.sparsity, df.domain_psnr))  # one domain: the mean
