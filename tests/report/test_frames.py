"""pipeline.report.frames: per-seed values reduced over seeds (mean, Student-t half-width)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.report.frames import Frames, summarise, variant_rows
from pipeline.report.inputs import Inputs

from ..synthetic import DOMAINS, GAMMAS, domain_psnr, half_width, through_csv, tidy

SHIFTS = (-0.1, 0.0, 0.3)  # domain PSNR of every adapted method, per seed


def shift(method, seed):
    return 0.0 if method == "pretrained" else SHIFTS[seed]


def masks() -> pd.DataFrame:
    return pd.DataFrame([{"domain": d, "sparsity": g, "seed": 0, "metric": "mask_moved_fraction", "value": 0.25}
                         for g in GAMMAS for d in DOMAINS])


def frames(df, validation: pd.DataFrame | None = None) -> Frames:
    """The frames of a synthetic table (sam masks that moved a quarter of their entries)."""
    return summarise(Inputs(df, {}, np.zeros(0), masks(), None, validation), DOMAINS)


def test_domain_psnr_cells_over_seeds(tmp_path):
    f = frames(through_csv(tidy(seeds=(0, 1, 2), shift=shift, new=True), tmp_path))
    sam = variant_rows(f.domain_psnr.mean, "sam").loc[0.01]
    assert sam["VA"] == pytest.approx(domain_psnr("sam", 0.01, 0) + np.mean(SHIFTS))
    assert variant_rows(f.domain_psnr.ci, "sam").loc[0.01, "VA"] == pytest.approx(half_width(SHIFTS))
    assert sam["mean"] == pytest.approx(np.mean([domain_psnr("sam", 0.01, i) for i in range(3)]) + np.mean(SHIFTS))
    assert f.main.mean["seeds"].eq(3).all()


def test_the_gain_over_pretrained_is_paired_per_seed(tmp_path):
    """sam at 1 % is the pretrained model + 4 dB on every domain; the pretrained model is shifted per seed
    too here, so an unpaired interval would be wider than the paired one."""
    df = through_csv(tidy(seeds=(0, 1, 2), shift=lambda m, s: SHIFTS[s] * (2 if m == "sam" else 1), new=True),
                     tmp_path)
    gain = frames(df).domain_gain
    assert variant_rows(gain.mean, "sam").loc[0.01, "VP"] == pytest.approx(4.0 + np.mean(SHIFTS))
    assert variant_rows(gain.ci, "sam").loc[0.01, "VP"] == pytest.approx(half_width(SHIFTS))
    assert (variant_rows(gain.mean, "pretrained").to_numpy() == 0).all()
    assert list(gain.mean.columns) == [*DOMAINS, "mean"]


def test_the_gain_of_a_seed_the_pretrained_model_lacks_is_over_its_mean(tmp_path):
    """The pretrained model is one model: evaluated at seed 0 only, beside methods at three seeds."""
    raw = tidy(seeds=(0, 1, 2), shift=shift, new=True)
    raw = raw[(raw["method"] != "pretrained") | (raw["seed"] == 0)]
    gain = frames(through_csv(raw, tmp_path)).domain_gain.mean
    assert variant_rows(gain, "sam").loc[0.01, "VC"] == pytest.approx(4.0 + np.mean(SHIFTS))


def test_mask_movement_and_memory_per_domain(full):
    f = frames(full)
    assert (f.mask_movement.mean[DOMAINS] == 0.25).all().all()
    assert variant_rows(f.memory_per_domain.mean, "tuning_copy")["VA"].iloc[0] == 1_000_000
