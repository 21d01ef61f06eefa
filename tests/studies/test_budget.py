"""Study ``budget`` (pipeline/studies/budget.py): the doubling test."""
from __future__ import annotations

import pandas as pd

from ..conftest import context


def test_the_budget_study_retrains_the_main_seed_at_each_budget(adapted):
    """At the main budget the study's base is the pipeline's own (same PSNR to the bit); at another
    budget it is another model, and the finding names the step up to the main budget."""
    import dataclasses

    import matplotlib.pyplot as plt

    from pipeline.config import parse
    from pipeline.studies import budget as study
    from pipeline.studies.budget import budget_finding
    tree = adapted.params.model_dump(mode="json")
    main = adapted.params.pretrain.epochs
    tree["ablate"].update(studies=["budget"], budget_epochs=[1, main])
    params = parse(tree)
    ctx = dataclasses.replace(context(adapted), params=params, checkpoints=adapted.paths.checkpoints / "budget-test")
    df, finding, fig = study.run(ctx)
    plt.close(fig)
    assert list(df.pretrain_epochs) == [1, main, main]
    own, again = df.iloc[1], df.iloc[2]
    assert own.model == "the pipeline's base"
    assert again.base_test_psnr == own.base_test_psnr and again.VH_test_psnr == own.VH_test_psnr
    assert df.iloc[0].base_test_psnr != own.base_test_psnr
    assert f"Going from 1 to {main} epochs" in finding
    halves = pd.DataFrame({"pretrain_epochs": [75, 150], "base_test_psnr": [24.0, 24.2]})
    assert "adds +0.20 dB: under the 0.3 dB" in budget_finding(halves, 150)
    halves["base_test_psnr"] = [24.0, 24.5]
    assert "adds +0.50 dB: not under the 0.3 dB" in budget_finding(halves, 150)
