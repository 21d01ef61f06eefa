"""pipeline/claims/gains.py: the main gains over seeds and, from the bases study, over seeds and bases."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import claims, stats

from ..synthetic import bases_table, half_width, through_csv, tidy

SEEDS = (0, 1, 2)
OTHER = {"VA": [4.5, 4.8, 5.4], "VP": [4.1, 4.2, 3.9], "VC": [3.0, 3.5, 3.3]}


@pytest.fixture
def table(tmp_path):
    """3 seeds, every method: sam at 1 % is 4 dB above the pretrained model, +-0.1 per seed."""
    return through_csv(tidy(seeds=SEEDS, new=True, shift=lambda m, s: (s - 1) * 0.1 if m == "sam" else 0.0), tmp_path)


def test_over_seeds_for_every_baseline_and_over_bases_for_the_pretrained_model(table):
    gains = claims.main_gains(table, None, bases_table(table, OTHER))
    assert list(gains["vs"]) == ["pretrained", "lora", "tuning_copy"] and gains["sparsity"] == "0.01"
    va = gains["vs"]["pretrained"]["VA"]
    per_seed = [4.0 + (s - 1) * 0.1 for s in SEEDS]
    assert va["seeds"]["mean"] == pytest.approx(4.0) and va["seeds"]["ci95"][1] == pytest.approx(
        4.0 + half_width(per_seed), abs=1e-4)
    expected = stats.random_effects_ci(per_seed, OTHER["VA"])
    assert va["bases"]["ci95"] == pytest.approx([expected.lo, expected.hi], abs=1e-4)
    assert va["bases"]["mean"] == pytest.approx(4.0) and va["bases"]["other_bases_mean"] == pytest.approx(4.9)
    assert va["bases"]["ci95"][0] < va["seeds"]["ci95"][0]  # wider: it covers the base
    # lora at the same γ: 20 + i + 400γ against 20.5 + i + 300γ at 1 %: +0.5 dB; nothing over bases
    lora = gains["vs"]["lora"]["VP"]
    assert lora["seeds"]["mean"] == pytest.approx(0.5) and lora["bases"] is None
    assert gains["vs"]["tuning_copy"]["VA"]["seeds"]["mean"] == pytest.approx(-0.5)
    record = gains["bases"]
    assert record["combined"] and record["other_bases"] == 3 and record["other_pretrain_epochs"] == [10]


def test_one_base_only_is_said_plainly(table, tmp_path):
    gains = claims.main_gains(table, None, None)
    assert gains["bases"] == {"combined": False,
                              "reason": "one base only: the run has no bases study (ablations/bases.csv)"}
    assert all(r["bases"] is None for by in gains["vs"].values() for r in by.values())
    text = "\n".join(claims.gains_lines(gains))
    assert "none, one base only" in text and "| sam − pretrained | VA | +4.00 dB [" in text and "not measured" in text
    assert "lora" not in claims.main_gains(through_csv(tidy(seeds=SEEDS), tmp_path))["vs"]  # a run without LoRA


def test_a_bases_study_of_another_table_is_not_combined(table):
    bases = bases_table(table, OTHER)
    bases.loc[bases["base"] == "main", "sam_psnr"] += 0.5  # not this table's sam at 1 %
    gains = claims.main_gains(table, None, bases)
    assert not gains["bases"]["combined"] and "is not evaluation.csv's sam at γ = 0.01" in gains["bases"]["reason"]
    one = bases_table(table, {d: g[:1] for d, g in OTHER.items()})
    assert "1 other base(s)" in claims.main_gains(table, None, one)["bases"]["reason"]
    with pytest.raises(ValueError, match="lacks columns"):
        claims.main_gains(table, None, bases.drop(columns=["gain"]))


def test_a_domain_the_bases_study_left_out_stays_over_seeds(table):
    gains = claims.main_gains(table, None, bases_table(table, {"VA": OTHER["VA"], "VP": OTHER["VP"]}))
    assert gains["vs"]["pretrained"]["VC"]["bases"] is None and gains["vs"]["pretrained"]["VP"]["bases"] is not None
    text = "\n".join(claims.gains_lines(gains))
    assert "3 other bases (pretrained 10 epochs" in text and "Only sam − pretrained has it" in text
    assert np.isfinite(gains["vs"]["pretrained"]["VP"]["bases"]["ci95"]).all()
