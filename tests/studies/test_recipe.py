"""Study ``recipe`` (pipeline/studies/recipe.py): sam's training recipes beside the fixed masks, chosen on
validation PSNR; the params' own recipe is read from its adapt cell."""
from __future__ import annotations

import copy

import torch


def test_the_recipe_study_runs_on_tiny_params_and_chooses_on_validation(adapted):
    import matplotlib.pyplot as plt
    from pipeline.methods import Context
    from pipeline.stages import write_table
    from pipeline.studies import recipe as study
    from pipeline.studies.recipe import recipe_label, recipes
    from pipeline.train import setup_runtime
    raw = copy.deepcopy(adapted.raw)
    raw["adapt"]["epochs"] = 2  # room for one frozen epoch
    raw["ablate"].update(studies=["recipe"], recipe_score_lrs={"adam": [1.0], "sgd": [100.0]})
    adapted.write_params(raw)
    params = adapted.params
    setup_runtime(params)
    ctx = Context(params, adapted.paths, torch.device("cpu"), checkpoints=adapted.root / "ckpt")
    df, finding, fig = study.run(ctx)
    plt.close(fig)
    grid = recipes(params)
    assert len(grid) == 2 * 2 * 2  # value_grad x (adam 1, sgd 100) x freeze 0/1; the params' own recipe among them
    labels = [recipe_label({**r, "mask": "score"}) for r in grid]
    assert list(df.recipe) == labels + ["random", "fisher"]
    assert df.val_psnr.notna().all() and df.domain_psnr.notna().all()
    assert (df[df.freeze_epochs == 1].stored_mask_used == "yes").all()
    assert (df[df["mask"] != "score"].mask_moved == 0).all()
    assert (df[df["mask"] != "score"].stored_mask_used == "yes").all()
    assert set(df.stored_mask_used) <= {"yes", "no"}
    score = df[df["mask"] == "score"]
    chosen = score.loc[score.val_psnr.idxmax(), "recipe"]  # one domain: the row with the best val PSNR
    assert f"chosen on validation PSNR: {chosen} " in finding
    me = score[score.recipe == chosen].iloc[0]
    fixed = df[df["mask"] != "score"]
    expect = "beats" if (me.val_psnr > fixed.val_psnr.max() and me.domain_psnr > fixed.domain_psnr.max()) else \
        "does not beat"
    assert f"It {expect} both fixed masks" in finding
    assert f"random {fixed[fixed.recipe == 'random'].val_psnr.iloc[0]:.2f}" in finding
    write_table(df, "recipe", params, adapted.paths, None, finding)
    text = (adapted.paths.ablations / "recipe.md").read_text()
    assert finding in text and "stored_mask_used" in text


def test_the_recipe_study_reads_the_params_own_recipe_from_the_adapt_cell_and_it_matches_a_retraining(adapted):
    import json
    from pipeline.methods import Context
    from pipeline.studies.recipe import RECIPE_KEYS, recipe_row
    from pipeline.train import setup_runtime
    params = adapted.params
    setup_runtime(params)
    ctx = Context(params, adapted.paths, torch.device("cpu"), checkpoints=adapted.root / "ckpt")
    own = {k: getattr(params.adapt, k) for k in RECIPE_KEYS}
    s = max(params.adapt.sparsities)
    cell = adapted.paths.cell("sam", "VH", s).metrics
    done = json.loads(cell.read_text())
    read = recipe_row(ctx, "VH", s, "score", own)
    assert read["val_psnr"] == done["details"]["val_psnr"] and read["domain_psnr"] == done["domain_psnr"]
    assert read["stored_mask_unseen"] == done["details"]["stored_mask_unseen_fraction"] is not None
    cell.unlink()  # no cell: trained here, and the same deterministic run gives the same numbers
    trained = recipe_row(ctx, "VH", s, "score", own)
    assert trained == read
