"""Study ``severity`` (pipeline/studies/severity.py): sam, lora and full tuning against the shift's severity."""
from __future__ import annotations

import dataclasses

import pytest

from ..conftest import ADAPTED_SPARSITIES, cell, context

S = max(ADAPTED_SPARSITIES)


def _params(adapted, **ablate):
    """The adapted project's params with the severity study on; domains.names as the arrays on disk were cut
    with (the tiny quick profile's four), so that level 3's arrays are the data folder's."""
    from pipeline import profile
    from pipeline.config import parse
    tree = adapted.params.model_dump(mode="json")
    tree["domains"]["names"] = profile.render("quick")["domains"]["names"]
    tree["ablate"].update(studies=["severity"], sparsity=S, domains=["VH"], **ablate)
    return parse(tree)


def _level(ctx, d, level):
    from pipeline.data import cut_splits, domain_splits, to_tensor
    _, sources = cut_splits(ctx.params, ctx.paths)
    return {k: to_tensor(v) for k, v in domain_splits(d, sources[d], ctx.params.domains, level).items()}


def test_the_severity_stage_writes_its_table_figure_and_finding(adapted):
    import pandas as pd

    from pipeline.stages import ablate
    params = _params(adapted, severities=[1, 3], severity_seeds=2)
    ablate.main(params, adapted.paths, ["--study", "severity"])
    df = pd.read_csv(adapted.paths.ablations / "severity.csv")
    assert list(df[["level", "method"]].itertuples(index=False, name=None)) == [
        (1, "sam"), (1, "lora"), (1, "tuning_copy"), (3, "sam"), (3, "lora"), (3, "tuning_copy")]
    assert (df.domain == "VH").all() and (df.seeds == 2).all()
    assert (abs(df.gain_db - (df.psnr - df.pretrained_psnr)) < 1e-9).all()
    assert (abs(df.gain_pct - 100 * df.gain_db / df.pretrained_psnr) < 1e-9).all()
    assert (df.gain_db_lo < df.gain_db).all() and (df.gain_db < df.gain_db_hi).all()  # two seeds: intervals
    assert set(df.H) <= {"PASS", "FAIL", "INCONCLUSIVE"}
    assert df[df.level == 3].magnitude.iloc[0] == "|hue shift| in [0.15, 0.35]"
    pre = df.drop_duplicates("level").set_index("level").pretrained_psnr
    assert pre[1] != pre[3]  # another level: other arrays
    md = (adapted.paths.ablations / "severity.md").read_text()
    assert "**Finding.**" in md and "level 1: sam" in md and "level 3: sam" in md
    assert "full tuning" in md and "+29.7 %" in md
    assert (adapted.paths.figures / "ablation_severity.png").stat().st_size > 0


def test_level_3_is_the_main_cells_and_the_studys_recipe_reproduces_them(adapted, monkeypatch):
    """At the default level the study reads the main grid's cells; trained here instead, each method gives
    the same PSNR bit for bit (the same recipe, seeds and arrays); a second run reads the cell store."""
    from pipeline.methods import Context
    from pipeline.studies import severity as study
    params = _params(adapted, severities=[3], severity_seeds=1)
    ctx = dataclasses.replace(context(adapted), params=params, checkpoints=adapted.paths.checkpoints / "sev-test")
    arrays = _level(ctx, "VH", 3)
    assert all(v.equal(Context.split(ctx, k)) for k, v in arrays.items())
    chosen = {m: {} for m in ("sam", "lora", "tuning")}
    main = study.measure(ctx, "VH", 3, arrays, True, 0, chosen)
    expect = {"sam": cell(adapted.paths, "sam", "VH", S), "lora": cell(adapted.paths, "lora", "VH", S),
              "tuning_copy": cell(adapted.paths, "tuning", "VH")}
    assert {m: r["psnr"] for m, r in main.items()} == {m: c["domain_psnr"] for m, c in expect.items()}
    trained = study.measure(ctx, "VH", 3, arrays, False, 0, chosen)
    assert trained == main
    monkeypatch.setattr(study, "_train", lambda *a, **k: pytest.fail("trained again: the store was not read"))
    assert study.measure(ctx, "VH", 3, arrays, False, 0, chosen) == main


def test_the_severity_study_needs_its_methods_and_its_sparsity_in_the_main_grid(tiny_params):
    from pipeline.config import ConfigError, parse
    tiny_params["ablate"].update(studies=["severity"], sparsity=0.5)
    with pytest.raises(ConfigError, match="ablate.sparsity 0.5 must be one of adapt.sparsities"):
        parse(tiny_params)
    tiny_params["ablate"]["sparsity"] = tiny_params["adapt"]["sparsities"][0]
    parse(tiny_params)
    tiny_params["adapt"]["methods"] = ["sam", "tuning", "equalizer"]
    with pytest.raises(ConfigError, match=r"\['lora'\] must be among adapt.methods"):
        parse(tiny_params)
    tiny_params["adapt"]["methods"] = ["sam", "tuning", "lora"]
    tiny_params["ablate"]["severities"] = [0, 3]
    with pytest.raises(ConfigError, match="ablate.severities.0"):
        parse(tiny_params)


def test_the_ci_and_quick_ablations_run_severity_small_and_full_and_paper_run_every_level():
    from pipeline import profile
    for name in ("ci",):
        a = profile.render(name)["ablate"]
        assert "severity" in a["studies"] and a["severities"] == [3, 5] and a["severity_seeds"] == 1
        assert len(a["domains"]) == 1
    assert "severity" in profile.render("quick", ablations=True)["ablate"]["studies"]
    for name in ("full", "paper"):
        a = profile.render(name)["ablate"]
        assert "severity" in a["studies"] and a["severities"] == [1, 2, 3, 4, 5] and a["severity_seeds"] >= 2
