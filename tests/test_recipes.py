"""benchmarks.recipes: the pretraining recipe search, chosen on base validation images."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import recipes

TWO = {"profile": ({}, "the profile's own"), "batch8": ({"pretrain": {"batch_size": 8}}, "a smaller batch")}


def test_every_recipe_trains_its_params_and_the_choice_is_the_best_validation_psnr(prepared, monkeypatch):
    df = recipes.run(prepared.raw, 2, prepared.root, TWO)
    assert sorted(df.recipe.unique()) == ["batch8", "profile"] and len(df) == 4
    assert df.set_index("recipe").loc["batch8", "batch_size"].tolist() == [8, 8]
    assert (df.groupby("recipe").train_seconds.diff().dropna() > 0).all()  # cumulative, per recipe
    last = df[df.epoch == 2].set_index("recipe").val_psnr
    assert last["batch8"] != last["profile"], "another batch size is another training"
    text = (prepared.paths.ablations / "pretrain_recipes.md").read_text()
    assert f"Chosen on validation: **{last.idxmax()}** ({last.max():.3f} dB" in text
    assert "no test image is read" in text
    # measured recipes are kept; a new one is the only one trained
    trained = []
    real = recipes.train_base
    monkeypatch.setattr(recipes, "train_base", lambda params, *a, **k: trained.append(params.pretrain.lr)
                        or real(params, *a, **k))
    more = {**TWO, "lr3e-4": ({"pretrain": {"lr": 3e-4}}, "a lower lr")}
    again = recipes.run(prepared.raw, 2, prepared.root, more)
    assert trained == [3e-4] and len(again) == 6
    pd.testing.assert_frame_equal(again[again.recipe != "lr3e-4"].reset_index(drop=True), df.reset_index(drop=True),
                                  check_dtype=False)


def test_a_recipe_measured_with_other_settings_is_trained_again():
    rows = pd.DataFrame([{"recipe": "a", "epoch": e, "lr": 1e-3, "batch_size": 128, "clip": 1.0} for e in (1, 2)])
    said = {"lr": 1e-3, "batch_size": 128, "clip": 1.0, "schedule": "onecycle", "norm": "none", "n_train": 10}
    assert recipes.measured(rows, "a", 2, said)
    assert not recipes.measured(rows, "a", 3, said)  # other epochs
    assert not recipes.measured(rows, "a", 2, {**said, "lr": 2e-3})
    assert not recipes.measured(rows, "a", 2, {**said, "norm": "gdn"})  # a column the rows lack: its default
    assert not recipes.measured(rows, "b", 2, said)


def test_the_search_needs_the_domains_stage_first(project):
    with pytest.raises(SystemExit, match="dvc repro domains"):
        recipes.run(project.raw, 1, project.root, TWO)


def test_the_committed_recipes_do_not_follow_the_profiles_current_recipe():
    """The search's rows stay the trainings they measured when the profile's recipe changes (it did:
    batch 128 -> 32): every recipe resolves to the same settings on top of any pretrain block."""
    from pipeline import profile
    from pipeline.profile import merge
    full = profile.render("full")
    other = merge(full, {"pretrain": {"lr": 0.0003, "batch_size": 16, "clip": 0.0, "schedule": "constant"},
                         "model": {"norm": "gdn"}})
    for name, (overrides, _why) in recipes.RECIPES.items():
        a, b = (recipes.recipe_params(raw, overrides, 30) for raw in (full, other))
        assert (a.pretrain, a.model.norm) == (b.pretrain, b.model.norm), name
    start = recipes.recipe_params(full, recipes.RECIPES["profile"][0], 30).pretrain
    assert (start.lr, start.batch_size, start.clip, start.schedule) == (0.001, 128, 1.0, "onecycle")
