"""pipeline.report.tables: the numbers each table holds and how they are written."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.report.frames import CONTROL_ROWS, SHIFT_ROW
from pipeline.report.tables import (choice_counts, flat_table, plot_data, render_table, table_specs,
                                    validation_summary, write_tables)

from ..synthetic import (BASE_BYTES, DOMAINS, EQUALIZER_BYTES, GAMMAS, PAIR, cross_psnr, domain_psnr, half_width,
                         memory_bytes, through_csv, tidy)
from .test_frames import SHIFTS, frames, shift


def flat_tables(df, validation=None) -> dict[str, pd.DataFrame]:
    return {name: flat_table(cells, fmt) for name, (cells, fmt) in table_specs(frames(df, validation)).items()}


def test_tables_hold_the_expected_numbers(full):
    tables = flat_tables(full)
    main = tables["main"].set_index("method")
    assert list(main.index) == ["pretrained", "sam", "sam", "lora", "lora", "delta_topk", "delta_topk", "bitfit",
                                "tuning_copy", "tuning_retune", "no_alignment", "equalizer", "base_control"]
    sam = tables["main"][tables["main"]["method"] == "sam"].set_index("sparsity_pct")
    assert sam.loc[1.0, "domain_psnr_db"] == 25.0 and sam.loc[0.1, "memory_cost_pct"] == 0.06
    assert main.loc["tuning_copy", "domain_psnr_db"] == pytest.approx(25.27)  # mean 25.2667, 2 decimals
    assert main.loc["equalizer", "misalignment_db"] == 2.0 and main.loc["tuning_copy", "memory_cost_pct"] == 100.0
    assert (main["seeds"] == 1).all() and main["domain_psnr_db_ci95"].isna().all()  # one seed: no interval
    assert tables["domain_psnr"].set_index("method").loc["tuning_retune", "VP"] == 20.0
    assert tables["misalignment"].set_index("method").loc["no_alignment", "misalignment_max_db"] == 10.0
    memory = tables["memory"].set_index("method")
    assert memory.loc["equalizer", "memory_bytes_max"] == (len(DOMAINS) - 1) * EQUALIZER_BYTES
    assert memory.loc["equalizer", "memory_cost_pct_mean"] == 100 * (len(DOMAINS) - 1) * EQUALIZER_BYTES / BASE_BYTES
    assert tables["pair_psnr"].set_index(["method", "tx"]).loc[("tuning_retune", "VA"), "VP"] == 29.0
    assert [c for c in tables["mask_movement"].columns if not c.endswith("_ci95")] == ["sparsity_pct", *DOMAINS, "mean"]
    assert "validation" not in tables  # no method searched a grid


def test_table_text_formats(full):
    frame, fmt = table_specs(frames(full))["main"]
    csv, md, tex = render_table(flat_table(frame, fmt), fmt, "PROVENANCE")
    assert md.startswith("PROVENANCE\n") and tex.startswith("% PROVENANCE\n")
    assert "25.27" in md and "100.000" in md and "nan" not in md and "±" not in md
    assert "tuning\\_copy" in tex and "25.27" in tex
    assert csv.splitlines()[0] == ("method,sparsity_pct,domain_psnr_db,domain_psnr_db_ci95,domain_ssim,"
                                   "domain_ssim_ci95,misalignment_db,misalignment_db_ci95,memory_cost_pct,memory_cost_pct_ci95,seeds")


def test_cells_over_seeds_are_the_mean_and_student_t_half_width(tmp_path):
    df = through_csv(tidy(seeds=(0, 1, 2), shift=shift, new=True), tmp_path)
    tables = flat_tables(df)
    main = tables["main"][tables["main"]["method"] == "sam"].set_index("sparsity_pct")
    mean = np.mean([domain_psnr("sam", 0.01, i) for i in range(3)])
    assert main.loc[1.0, "domain_psnr_db"] == pytest.approx(round(mean + np.mean(SHIFTS), 2))
    assert main.loc[1.0, "domain_psnr_db_ci95"] == pytest.approx(round(half_width(SHIFTS), 2))
    assert main.loc[1.0, "seeds"] == 3 and main.loc[1.0, "memory_cost_pct_ci95"] == 0.0
    pretrained = tables["domain_psnr"].set_index("method").loc["pretrained"]
    assert pretrained["VA_ci95"] == 0.0 and pretrained["VA"] == 20.0  # the same at every seed
    frame, fmt = table_specs(frames(df))["domain_psnr"]
    md = render_table(flat_table(frame, fmt), fmt, "H")[1]
    assert f"{24.0 + np.mean(SHIFTS):.2f} ± {half_width(SHIFTS):.2f}" in md  # sam at 1 %, VA


def test_ssim_cross_traffic_and_controls_tables(full):
    tables = flat_tables(full)
    main = tables["main"]
    assert list(main.columns).index("domain_ssim") == list(main.columns).index("domain_psnr_db_ci95") + 1
    lora = main[(main["method"] == "lora") & (main["sparsity_pct"] == 1.0)].iloc[0]
    assert lora["domain_psnr_db"] == pytest.approx(round(np.mean([domain_psnr("lora", 0.01, i) for i in range(3)]), 2))
    assert lora["domain_ssim"] == pytest.approx(round(lora["domain_psnr_db"] / 40, 4), abs=1e-4)
    assert tables["domain_ssim"].set_index("method").loc["bitfit", "VP"] == pytest.approx(22.0 / 40, abs=1e-4)
    cross = tables["cross_traffic"].set_index("method")
    assert list(cross.columns[1::2]) == ["cross_psnr_db", "cross_ssim", "pair_psnr_db", "pair_ssim", "misalignment_db"]
    # mean over the 6 ordered pairs: A = each domain twice
    assert cross.loc["equalizer", "cross_psnr_db"] == pytest.approx(np.mean([cross_psnr("equalizer", i)
                                                                             for i in range(3)]))
    assert cross.loc["no_alignment", "pair_psnr_db"] == PAIR["no_alignment"]
    controls = tables["controls"].set_index("method")
    assert list(controls.index) == [*CONTROL_ROWS, SHIFT_ROW]
    for i, d in enumerate(DOMAINS):
        assert controls.loc["pretrained, untransformed test images", d] == pytest.approx(
            domain_psnr("pretrained", None, i) + 3.0)
        assert controls.loc[SHIFT_ROW, d] == pytest.approx(3.0)
        assert controls.loc["base_control (tuning budget on base images)", d] == pytest.approx(
            domain_psnr("base_control", None, i))


def test_the_validation_table_shows_the_grid_and_the_choice(full):
    validation = pd.DataFrame([
        {"method": "tuning", "domain": "VA", "sparsity": "", "point": h, "setting": f'{{"tuning.lr": {lr}}}',
         "val_psnr": v, "seeds": 2, "chosen": h == 1, "origin": origin, "choice": "capped (max_extend)" if h == 1 else ""}
        for h, (lr, v, origin) in enumerate([(0.001, 20.5, "grid"), (0.01, 21.25, "extension")])])
    flat = flat_tables(full, validation)["validation"]
    assert list(flat.columns) == ["method", "sparsity_pct", "domain", "point", "setting", "val_psnr", "seeds",
                                  "chosen", "origin", "choice"]
    assert flat["chosen"].tolist() == ["", "chosen"] and flat["val_psnr"].tolist() == [20.5, 21.25]
    assert flat["origin"].tolist() == ["grid", "extension"]


def test_the_validation_summary_counts_each_methods_choices_by_status():
    flat = pd.DataFrame({"method": ["sam", "sam", "sam", "tuning", "tuning", "equalizer"],
                         "choice": ["interior", "", "capped (range)",
                                    "tuning.lr: interior; tuning.retune_epochs: edge-unsearched", "", ""]})
    assert choice_counts(flat) == {
        "sam": {"interior": 1, "capped (max_extend)": 0, "capped (range)": 1, "edge-unsearched": 0},
        "tuning": {"interior": 1, "capped (max_extend)": 0, "capped (range)": 0, "edge-unsearched": 1}}
    assert validation_summary(flat) == (
        "Choices (domain × sparsity × searched key) by status: sam: 1 interior, 0 capped (max_extend), "
        "1 capped (range), 0 edge-unsearched; tuning: 1 interior, 0 capped (max_extend), 0 capped (range), "
        "1 edge-unsearched.")
    assert validation_summary(flat.assign(choice="")) == ""


def test_the_validation_markdown_ends_with_the_summary(full, tmp_path):
    validation = pd.DataFrame([{"method": "tuning", "domain": "VA", "sparsity": "", "point": 0,
                                "setting": '{"tuning.lr": 0.001}', "val_psnr": 20.5, "seeds": 1, "chosen": True,
                                "origin": "grid", "choice": "edge-unsearched"}])
    write_tables(frames(full, validation), tmp_path, "H")
    text = (tmp_path / "validation.md").read_text()
    assert text.endswith("\n\nChoices (domain × sparsity × searched key) by status: tuning: 0 interior, "
                         "0 capped (max_extend), 0 capped (range), 1 edge-unsearched.\n")
    assert "% Choices (domain" in (tmp_path / "validation.tex").read_text()
    assert "Choices" not in (tmp_path / "validation.csv").read_text()
    assert "Choices" not in (tmp_path / "main.md").read_text()


def test_memory_network_from_the_measured_bytes(full):
    net = flat_tables(full)["memory_network"]
    assert set(net["method"]) == {"sam", "lora", "delta_topk", "bitfit", "tuning_copy", "equalizer"}
    assert sorted(set(net["agents"])) == [2 ** i for i in range(1, 11)]
    eq = net[net["method"] == "equalizer"].set_index("agents")
    measured = memory_bytes("equalizer", None, len(DOMAINS))
    assert eq.loc[len(DOMAINS) + 1, "per_agent_bytes"] == measured * len(DOMAINS) / (len(DOMAINS) - 1)
    assert eq.loc[1024, "per_agent_bytes"] == round(1023 * measured / (len(DOMAINS) - 1))
    assert eq.loc[1024, "total_bytes"] == round(1024 * 1023 * measured / (len(DOMAINS) - 1))
    copy = net[net["method"] == "tuning_copy"].set_index("agents")
    assert (copy["per_agent_bytes"] == BASE_BYTES).all() and copy.loc[8, "total_bytes"] == 8 * BASE_BYTES
    assert copy.loc[8, "per_agent_cost_pct"] == 100.0


def test_write_tables_removes_what_this_run_did_not_write(full, tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "dropped_table.md").write_text("a table older code wrote\n")
    written = write_tables(frames(full), folder, "H")
    assert {p.name for p in folder.iterdir()} == {p.name for p in written}
    assert {p.stem for p in written} == set(table_specs(frames(full)))


def test_plot_data_is_sam_per_gamma(full):
    plots = plot_data(frames(full), DOMAINS)
    assert list(plots["psnr_vs_sparsity"].columns) == ["sparsity", *DOMAINS]
    assert plots["psnr_vs_sparsity"]["sparsity"].tolist() == GAMMAS
    assert plots["memory_vs_sparsity"]["memory_cost_pct_max"].tolist() == pytest.approx([0.06, 0.6])
