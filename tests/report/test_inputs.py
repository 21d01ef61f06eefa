"""pipeline.report.inputs: evaluation.csv typed and checked; a bad table is refused in one line."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import parse
from pipeline.data import DataError
from pipeline.report.inputs import check_complete, read_bases, read_tidy

from ..synthetic import bases_table, through_csv, tidy


def test_a_csv_without_seeds_and_bad_seeds_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"lacks columns \['seed'\]; expected \[") as err:
        through_csv(tidy().drop(columns="seed"), tmp_path)
    assert len(str(err.value).splitlines()) == 1
    raw = tidy().astype({"seed": float})
    raw.loc[3, "seed"] = 1.5
    with pytest.raises(DataError, match="seeds must be integers"):
        through_csv(raw, tmp_path)


def test_typed_columns_and_the_method_order(full):
    assert full["seed"].dtype == "int64" and full["sparsity"].isna().any()
    assert list(dict.fromkeys(full["method"])) == ["pretrained", "sam", "lora", "delta_topk", "bitfit", "tuning_copy",
                                                   "tuning_retune", "no_alignment", "equalizer", "base_control"]
    assert "sam γ=1%" in set(full["variant"])


def test_a_missing_csv_names_the_stage_to_run(tmp_path):
    with pytest.raises(DataError, match="evaluation.csv not found; run the evaluate stage"):
        read_tidy(tmp_path / "evaluation.csv")


def test_incomplete_or_stale_tables_are_refused(tiny_params, tmp_path):
    params = parse(tiny_params)
    full = tidy(params.domains.names, params.adapt.sparsities, new=True)
    check_complete(through_csv(full, tmp_path), params, tmp_path)
    one_pair_less = full.drop(full.index[(full["method"] == "equalizer") & (full["metric"] == "pair_psnr")][:1])
    with pytest.raises(DataError, match="lacks pair_psnr of equalizer"):
        check_complete(through_csv(one_pair_less, tmp_path), params, tmp_path)
    stale = pd.concat([full, tidy(params.domains.names, [0.5], new=True).query("method == 'sam'")])
    with pytest.raises(DataError, match=r"sparsities \[0.5\]"):
        check_complete(through_csv(stale, tmp_path), params, tmp_path)
    no_equalizer = full[full["method"] != "equalizer"]
    with pytest.raises(DataError, match="lacks domain_psnr of equalizer"):
        check_complete(through_csv(no_equalizer, tmp_path), params, tmp_path)


def test_every_variant_has_every_metric_evaluate_writes(tiny_params, tmp_path):
    """SSIM, cross traffic and the paired-shift control are no longer optional: evaluate writes them."""
    params = parse(tiny_params)
    full = tidy(params.domains.names, params.adapt.sparsities, new=True)
    no_ssim = full[~((full["method"] == "bitfit") & (full["metric"] == "domain_ssim"))]
    with pytest.raises(DataError, match="lacks domain_ssim of bitfit"):
        check_complete(through_csv(no_ssim, tmp_path), params, tmp_path)
    no_cross = full[full["metric"] != "cross_psnr"]
    with pytest.raises(DataError, match="lacks cross_psnr of pretrained"):
        check_complete(through_csv(no_cross, tmp_path), params, tmp_path)
    no_control = full[full["metric"] != "source_psnr"]
    with pytest.raises(DataError, match="lacks source_psnr of pretrained"):
        check_complete(through_csv(no_control, tmp_path), params, tmp_path)


def test_methods_beyond_the_claims_are_optional_but_must_be_whole(tiny_params, tmp_path):
    params = parse(tiny_params)
    names, gammas = params.domains.names, params.adapt.sparsities
    full = tidy(names, gammas, seeds=(0, 1), new=True)
    check_complete(through_csv(full, tmp_path), params, tmp_path)
    check_complete(through_csv(full[~full["method"].isin(["lora", "bitfit"])], tmp_path), params, tmp_path)
    lora_row = full.index[(full["method"] == "lora") & (full["metric"] == "cross_ssim") & (full["seed"] == 1)][:1]
    with pytest.raises(DataError, match="lacks cross_ssim of lora γ=.* at seed 1"):
        check_complete(through_csv(full.drop(lora_row), tmp_path), params, tmp_path)
    stale = pd.concat([full, tidy(names, [0.5], new=True).query("method == 'delta_topk'")])
    with pytest.raises(DataError, match=r"delta_topk at sparsities \[0.5\]"):
        check_complete(through_csv(stale, tmp_path), params, tmp_path)
    one_seed_less = full.drop(full.index[(full["method"] == "lora") & (full["metric"] == "cross_ssim")
                                         & (full["seed"] == 1)])
    odd = r"lora γ=.*% are at different seeds: cross_ssim at \[0\], the others at \[0, 1\];"
    with pytest.raises(DataError, match=odd):
        check_complete(through_csv(one_seed_less, tmp_path), params, tmp_path)
    twice = pd.concat([full, full[(full["method"] == "bitfit") & (full["metric"] == "domain_psnr")]])
    with pytest.raises(DataError, match="lacks domain_psnr of bitfit at seed 0"):  # a duplicate is no coverage
        check_complete(through_csv(twice, tmp_path), params, tmp_path)


def test_the_bases_study_is_read_where_it_ran_and_refused_when_malformed(tmp_path):
    path = tmp_path / "bases.csv"
    assert read_bases(path) is None  # no bases study: one base
    bases = bases_table(tidy(), {"VA": [4.0, 4.5]})
    bases.to_csv(path, index=False)
    read = read_bases(path)
    assert list(read["base"].unique()) == ["main", "base 1", "base 2"] and read["gain"].dtype == float
    for bad, message in [(bases.drop(columns="gain"), r"lacks columns \['gain'\]"),
                         (bases.assign(gain="x"), "is not a number"),
                         (bases.assign(gain=float("inf")), "not finite"), (bases.iloc[:0], "is empty")]:
        bad.to_csv(path, index=False)
        with pytest.raises(DataError, match=message) as err:
            read_bases(path)
        assert len(str(err.value).splitlines()) == 1 and "bases.csv" in str(err.value)
