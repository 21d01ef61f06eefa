"""Study ``strength`` (pipeline/studies/strength.py): gain against base strength, its line fit, and the
reuse of the budget study's bases and of the main cells."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from ..conftest import cell


def test_the_fit_gives_the_known_slope_and_its_interval_covers_it_at_the_stated_rate():
    """An exact line is recovered exactly; with noise, the 95 % intervals of the slope and of the line at a
    new x cover the truth in about 95 % of 400 seeded draws with 4 points (a normal quantile instead of
    Student-t with 2 df would cover about 83 %)."""
    from pipeline.studies.strength import fit_line
    x = np.array([23.5, 25.0, 26.3, 26.7])
    exact = fit_line(x, 3.0 - 0.1 * x)
    assert exact.slope.mean == pytest.approx(-0.1, abs=1e-12) and exact.at(27.0).mean == pytest.approx(0.3)
    rng = np.random.default_rng(0)
    covered_slope = covered_line = 0
    for _ in range(400):
        f = fit_line(x, 3.0 - 0.1 * x + rng.normal(0, 0.05, x.size))
        covered_slope += f.slope.lo <= -0.1 <= f.slope.hi
        at = f.at(27.16)
        covered_line += at.lo <= 3.0 - 0.1 * 27.16 <= at.hi
    assert 0.92 <= covered_slope / 400 <= 0.98 and 0.92 <= covered_line / 400 <= 0.98
    with pytest.raises(ValueError, match="at least 3"):
        fit_line([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="same base test PSNR"):
        fit_line([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def _table(slopes: dict[str, float], gap_main: float = 0.3) -> pd.DataFrame:
    """Synthetic study rows: 4 bases, 2 domains, each method's gain on an exact line of the base PSNR."""
    rows = []
    for epochs, x in zip((15, 37, 75, 150), (24.0, 25.5, 26.3, 26.7)):
        for d in ("VA", "VH"):
            sam = 0.2 + slopes["sam"] * (x - 26.7)
            tuning = 0.2 + gap_main + slopes["tuning"] * (x - 26.7)
            for m, g in (("sam", sam), ("tuning", tuning)):
                rows.append({"pretrain_epochs": epochs, "base_test_psnr": x, "domain": d, "method": m, "gain": g,
                             "source": "main cell" if epochs == 150 else "trained here"})
    return pd.DataFrame(rows)


def test_the_finding_says_how_c3_and_c5_move_on_a_stronger_base():
    from pipeline.studies.strength import strength_finding
    # sam's gain falls 0.5 dB per dB of base, tuning's does not: 0.42 dB further the gap grows past 0.5 dB
    # and sam's gain (+0.2 at the main base) drops to -0.01
    text = strength_finding(_table({"sam": -0.5, "tuning": 0.0}), 26.7, 0.42, 0.01)
    assert "sam -0.50 dB [95 % CI -0.50, -0.50] per dB" in text and "tuning +0.00 dB" in text
    assert "predicted +0.51 dB [95 % CI +0.51, +0.51] on the stronger base: FAIL" in text
    assert "(on the main base, seed 0: PASS; PASS → FAIL)" in text
    assert "VA -0.01 dB" in text and "C5 (sam improves on pretrained on every domain)" in text
    steady = strength_finding(_table({"sam": 0.0, "tuning": 0.0}), 26.7, 0.42, 0.01)
    assert steady.count("unchanged") == 2


def test_the_strength_study_reuses_the_budget_base_and_the_main_cells_and_writes_its_outputs(adapted, monkeypatch):
    """Budgets [1, main, 3] with the budget study's 1 run first: only the 3-epoch base is pretrained here,
    sam and tuning are trained on the two other bases only (the main base's rows are its cells)."""
    from pipeline.stages import ablate
    from pipeline.studies import _adapted
    main = adapted.params.pretrain.epochs
    raw = copy.deepcopy(adapted.raw)
    raw["ablate"].update(studies=["budget", "strength"], sparsity=0.1, budget_epochs=[1],
                         strength_epochs=[1, main, main + 1])
    adapted.write_params(raw)
    params, paths = adapted.params, adapted.paths
    ablate.main(params, paths, ["--study", "budget"])
    pretrained, adapted_on = [], []
    real_train_base, real_sam, real_tune = _adapted.train_base, _adapted.train_sam, _adapted.finetune
    monkeypatch.setattr(_adapted, "train_base", lambda *a, **kw: pretrained.append(kw["epochs"]) or real_train_base(*a, **kw))
    monkeypatch.setattr(_adapted, "train_sam", lambda c, *a, **kw: adapted_on.append(("sam", c.base)) or real_sam(c, *a, **kw))
    monkeypatch.setattr(_adapted, "finetune", lambda c, *a, **kw: adapted_on.append(("tuning", c.base)) or real_tune(c, *a, **kw))
    ablate.main(params, paths, ["--study", "strength"])
    assert pretrained == [main + 1]  # 1: the budget study's, main: the pipeline's base
    assert sorted(m for m, _ in adapted_on) == ["sam", "sam", "tuning", "tuning"]
    assert all(base is not None and base.name.startswith(("seed0-1ep-", f"seed0-{main + 1}ep-")) for _, base in adapted_on)

    df = pd.read_csv(paths.ablations / "strength.csv")
    assert list(df.pretrain_epochs.unique()) == [1, main, main + 1] and set(df.domain) == {"VH"}
    own = df[df.pretrain_epochs == main].set_index("method")
    assert set(own.source) == {"main cell"} and set(df[df.pretrain_epochs != main].source) == {"trained here"}
    assert own.loc["sam", "adapted_psnr"] == pytest.approx(cell(paths, "sam", "VH", 0.1)["domain_psnr"], abs=0)
    assert own.loc["tuning", "adapted_psnr"] == pytest.approx(cell(paths, "tuning", "VH")["domain_psnr"], abs=0)
    budget = pd.read_csv(paths.ablations / "budget.csv").set_index("pretrain_epochs")
    assert df[df.pretrain_epochs == 1].base_test_psnr.iloc[0] == budget.loc[1, "base_test_psnr"]
    assert df.base_test_psnr.nunique() == 3 and (df.gain == df.adapted_psnr - df.pretrained_psnr).all()
    text = (paths.ablations / "strength.md").read_text()
    assert "**Finding.** 3 bases of the main seed" in text and "C3 (sam within 0.5 dB of tuning)" in text
    assert "C5 (sam improves on pretrained on every domain)" in text and "+0.42 dB more base" in text
    assert (paths.figures / "ablation_strength.png").stat().st_size > 0


def test_the_strength_study_needs_sam_and_tuning_and_three_bases(tiny_params):
    from pipeline.config import ConfigError, parse
    tiny_params["ablate"].update(studies=["strength"], sparsity=tiny_params["adapt"]["sparsities"][0])
    parse(tiny_params)
    tiny_params["adapt"]["methods"] = ["sam", "bitfit"]
    with pytest.raises(ConfigError, match=r"strength study adapts sam and tuning: \['tuning'\]"):
        parse(tiny_params)
    tiny_params["ablate"]["strength_epochs"] = [1, 2]
    with pytest.raises(ConfigError, match="strength_epochs"):
        parse(tiny_params)
