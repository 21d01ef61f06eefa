"""The report stage and the claims: a small tidy evaluation table with known numbers, built here."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline import claims
from pipeline.metrics import FIELDS, ordered_pairs
from pipeline.stages import EXIT_BAD_INPUT, run, write_json, write_npy
from pipeline.stages import report

from .synthetic import (BASE_BYTES, BASELINES, DOMAINS, EQUALIZER_BYTES, GAMMAS, PAIR, REFERENCE, TUNED_GAP,  # noqa: F401
                        ZERO_FORGET, cross_psnr, domain_psnr, entry, half_width, memory_bytes, sam_rows,
                        through_csv, tidy, write)


# ------------------------------------------------------------------------------------------ claims
def test_claims_on_known_numbers(df):
    entries = claims.check_all(df, {})
    assert [e["id"] for e in entries] == ["C1", "C2", "C3", "C4", "C5", "H"]
    assert {e["id"]: e["kind"] for e in entries} == {"C1": "guarantee", "C2": "guarantee", "C3": "finding",
                                                     "C4": "guarantee", "C5": "finding", "H": "finding"}
    for e in entries:
        assert set(e) >= {"id", "statement", "definition", "measured", "status", "kind"}
    c1 = entry(entries, "C1")
    assert c1["status"] == "PASS" and c1["measured"]["max_abs_misalignment_db"] == {"0.001": 0.0, "0.01": 0.0}
    c2 = entry(entries, "C2")
    assert c2["status"] == "PASS"
    assert c2["measured"]["max_memory_cost_pct"] == pytest.approx({"0.001": 0.06, "0.01": 0.6})
    c3 = entry(entries, "C3")
    assert c3["measured"]["sparsity"] == "0.01"
    assert c3["measured"]["gap_db"] == pytest.approx({"VA": 0.5, "VP": 0.2, "VC": 0.1})
    assert c3["measured"]["mean_gap_db"] == pytest.approx(0.8 / 3) and c3["status"] == "PASS"
    c5 = entry(entries, "C5")
    assert c5["measured"]["delta_db"] == pytest.approx({"VA": 4.0, "VP": 4.0, "VC": 4.0}) and c5["status"] == "PASS"


def test_c1_fails_on_a_misalignment_of_1e_9(tmp_path):
    raw = tidy()
    raw.loc[sam_rows(raw, "misalignment", 0.01).idxmax(), "value"] = 1e-9
    c1 = claims.c1_zero_misalignment(through_csv(raw, tmp_path), {})
    assert c1["status"] == "FAIL"
    assert c1["measured"]["max_abs_misalignment_db"] == {"0.001": 0.0, "0.01": 1e-9}


def test_c1_also_checks_the_unrounded_maximum_of_evaluate_json(df):
    """The CSV has 6 decimals; evaluate.json's max_abs_misalignment is exact."""
    summary = {"sam_gamma_0.001": {"max_abs_misalignment": 0.0}, "sam_gamma_0.01": {"max_abs_misalignment": 3e-8}}
    assert claims.c1_zero_misalignment(df, summary)["status"] == "FAIL"
    summary["sam_gamma_0.01"]["max_abs_misalignment"] = 0.0
    assert claims.c1_zero_misalignment(df, summary)["status"] == "PASS"


def test_c2_fails_when_one_domain_costs_1_2_percent_at_gamma_one_percent(tmp_path):
    raw = tidy()
    raw.loc[sam_rows(raw, "memory_cost", 0.01).idxmax(), "value"] = 1.2
    c2 = claims.c2_memory_below_one_percent(through_csv(raw, tmp_path), {})
    assert c2["status"] == "FAIL" and c2["measured"]["max_memory_cost_pct"]["0.01"] == 1.2


def test_c4_needs_misalignment_or_a_full_copy_on_every_route(tmp_path, df):
    c4 = claims.c4_alignment_is_paid(df, {})
    assert c4["status"] == "PASS"
    copy = c4["measured"]["tuning_copy"]
    assert (copy["mean_misalignment_db"], copy["memory_cost_pct"], copy["pays"]) == (0.0, 100.0, True)
    assert c4["measured"]["tuning_retune"]["mean_misalignment_db"] == pytest.approx(1.0)
    assert c4["measured"]["tuning_retune"]["forgetting_db"] == pytest.approx({"VA": 5.5, "VP": 5.2, "VC": 5.1})
    # Re-tuning that keeps its agents aligned for free would break the guarantee.
    raw = tidy()
    retune = (raw["method"] == "tuning_retune") & (raw["metric"] == "misalignment")
    raw.loc[retune, "value"] = 0.0
    assert claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})["status"] == "FAIL"
    # ... as would a copy that costs less than the model ...
    raw = tidy()
    raw.loc[(raw["method"] == "tuning_copy") & (raw["metric"] == "memory_cost"), "value"] = 99.9
    assert claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})["status"] == "FAIL"
    # ... or an equalizer that stores nothing and leaves no misalignment.
    raw = tidy()
    eq = raw["method"] == "equalizer"
    raw.loc[eq & raw["metric"].isin(["memory_bytes", "memory_cost", "misalignment"]), "value"] = 0.0
    assert claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})["status"] == "FAIL"


def test_c4_states_the_equalizers_honest_cost_and_its_growth_with_k(tmp_path, df):
    """D = 3 domains: each agent stores 2 equalizers (0.25 % each), 0.5 % in all; K - 1 of them at K agents."""
    eq = claims.c4_alignment_is_paid(df, {})["measured"]["equalizer"]
    per_partner = 100 * EQUALIZER_BYTES / BASE_BYTES
    assert eq["agents"] == len(DOMAINS) and eq["memory_cost_pct"] == pytest.approx((len(DOMAINS) - 1) * per_partner)
    assert eq["per_partner_cost_pct"] == pytest.approx(per_partner)
    assert eq["cost_pct_at_1024_agents"] == pytest.approx(1023 * per_partner)
    k_copy = eq["agents_to_reach_a_full_copy"]
    assert (k_copy - 1) * per_partner >= 100 > (k_copy - 2) * per_partner
    sam_pct = 100 * memory_bytes("sam", 0.01, len(DOMAINS)) / BASE_BYTES
    k_sam = eq["agents_to_exceed_sam_pct"]
    assert (k_sam - 1) * per_partner > sam_pct >= (k_sam - 2) * per_partner
    c4 = claims.c4_alignment_is_paid(df, {})
    assert "less than a full copy" in c4["summary"] and f"from K = {k_copy} agents" in c4["summary"]
    assert "holds for tuning_copy only" in c4["definition"]
    # An equalizer that costs more than the model: the text says so instead.
    raw = tidy()
    rows = (raw["method"] == "equalizer") & (raw["metric"] == "memory_cost")
    raw.loc[rows, "value"] = 120.0
    c4 = claims.c4_alignment_is_paid(through_csv(raw, tmp_path), {})
    assert "at least a full copy already at K = 3" in c4["summary"] and "tuning_copy only" not in c4["summary"]


def test_network_bytes_is_constant_per_agent_or_grows_as_k_minus_1():
    assert [claims.network_bytes("sam", 600, k, 4) for k in (2, 1024)] == [600, 600]
    assert [claims.network_bytes("equalizer", 300, k, 4) for k in (2, 4, 1024)] == [100, 300, 1023 * 100]
    with pytest.raises(ValueError, match="at least 2 domains"):
        claims.network_bytes("equalizer", 300, 8, 1)


def test_headline_is_the_largest_relative_gain_over_both_baselines(df):
    h = claims.headline_improvement(df, {})
    # sam at 1 %: VA 24; tuning_retune VA 19: 100 * 5 / 19 = 26.3 %, the largest of the six ratios.
    assert h["measured"]["max_improvement_pct"] == pytest.approx(100 * 5 / 19)
    assert (h["measured"]["argmax_domain"], h["measured"]["argmax_baseline"]) == ("VA", "tuning_retune")
    assert h["measured"]["improvement_pct"]["pretrained"]["VC"] == pytest.approx(100 * 4 / 22)
    assert h["measured"]["paper_pct"] == 29.7 and h["status"] == "FAIL" and h["kind"] == "finding"


def test_one_percent_claims_say_which_gamma_they_used_when_one_percent_is_missing(tmp_path):
    raw = tidy()
    c3 = claims.c3_close_to_tuning(through_csv(raw[~np.isclose(raw["sparsity"], 0.01)], tmp_path), {})
    assert c3["measured"]["sparsity"] == "0.001" and "0.1 %" in c3["measured"]["sparsity_note"]


# --------------------------------------------------------------------------------------- check CLI
def test_check_exits_1_only_when_a_guarantee_fails(tmp_path, df, capsys):
    entries = claims.check_all(df, {})
    assert entry(entries, "H")["status"] == "FAIL"  # a failed finding ...
    assert claims.main(["check", write(tmp_path, entries)]) == 0  # ... does not fail the check
    assert "H   finding   FAIL" in capsys.readouterr().out
    entry(entries, "C2")["status"] = "FAIL"
    assert claims.main(["check", write(tmp_path, entries)]) == 1
    assert "FAILED C2" in capsys.readouterr().out


def test_check_exits_2_on_an_unreadable_file(tmp_path, capsys):
    assert claims.main(["check", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert claims.main(["check", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "shape.json").write_text(json.dumps({"claims": [{"id": "C1", "status": "OK"}]}))
    assert claims.main(["check", str(tmp_path / "shape.json")]) == 2
    assert capsys.readouterr().err.count("error:") == 3


def test_check_command_exit_status(tmp_path, df):
    entries = claims.check_all(df, {})
    entry(entries, "C1")["status"] = "FAIL"
    done = subprocess.run([sys.executable, "-m", "pipeline.claims", "check", write(tmp_path, entries)],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr


def test_claims_files(tmp_path, df):
    write(tmp_path, claims.check_all(df, {}))
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert doc["provenance"]["mlflow_run_id"] == "r1" and len(doc["claims"]) == 6
    md = (tmp_path / "claims.md").read_text()
    assert "`abc`" in md.split("|")[0]  # provenance before the table
    assert "| C1 | guarantee |" in md and "## H:" in md and "argmax_baseline: tuning_retune" in md
    assert "gap_db: VA: 0.5, VP: 0.2, VC: 0.1" in md


# ---------------------------------------------------------------------------------------- tables
def frames(df) -> report.Frames:
    masks = pd.DataFrame([{"domain": d, "sparsity": g, "seed": 0, "metric": "mask_moved_fraction", "value": 0.25}
                          for g in GAMMAS for d in DOMAINS])
    return report.summarise(report.Inputs(df, {}, np.zeros(0), masks), DOMAINS)


def flat_tables(df) -> dict[str, pd.DataFrame]:
    return {name: report.flat_table(cells, fmt) for name, (cells, fmt) in report.table_specs(frames(df)).items()}


def test_tables_hold_the_expected_numbers(df):
    tables = flat_tables(df)
    main = tables["main"].set_index("method")
    assert list(main.index) == ["pretrained", "sam", "sam", "tuning_copy", "tuning_retune", "no_alignment",
                                "equalizer"]
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


def test_table_text_formats(df):
    frame, fmt = report.table_specs(frames(df))["main"]
    csv, md, tex = report.render_table(report.flat_table(frame, fmt), fmt, "PROVENANCE")
    assert md.startswith("PROVENANCE\n") and tex.startswith("% PROVENANCE\n")
    assert "25.27" in md and "100.000" in md and "nan" not in md and "±" not in md
    assert "tuning\\_copy" in tex and "25.27" in tex
    assert csv.splitlines()[0] == ("method,sparsity_pct,domain_psnr_db,domain_psnr_db_ci95,misalignment_db,"
                                   "misalignment_db_ci95,memory_cost_pct,memory_cost_pct_ci95,seeds")


SHIFTS = (-0.1, 0.0, 0.3)  # domain PSNR of every adapted method, per seed


def shift(method, seed):
    return 0.0 if method == "pretrained" else SHIFTS[seed]


def test_cells_over_seeds_are_the_mean_and_student_t_half_width(tmp_path):
    df = through_csv(tidy(seeds=(0, 1, 2), shift=shift), tmp_path)
    tables = flat_tables(df)
    main = tables["main"][tables["main"]["method"] == "sam"].set_index("sparsity_pct")
    mean = np.mean([domain_psnr("sam", 0.01, i) for i in range(3)])
    assert main.loc[1.0, "domain_psnr_db"] == pytest.approx(round(mean + np.mean(SHIFTS), 2))
    assert main.loc[1.0, "domain_psnr_db_ci95"] == pytest.approx(round(half_width(SHIFTS), 2))
    assert main.loc[1.0, "seeds"] == 3 and main.loc[1.0, "memory_cost_pct_ci95"] == 0.0
    pretrained = tables["domain_psnr"].set_index("method").loc["pretrained"]
    assert pretrained["VA_ci95"] == 0.0 and pretrained["VA"] == 20.0  # the same at every seed
    frame, fmt = report.table_specs(frames(df))["domain_psnr"]
    md = report.render_table(report.flat_table(frame, fmt), fmt, "H")[1]
    assert f"{24.0 + np.mean(SHIFTS):.2f} ± {half_width(SHIFTS):.2f}" in md  # sam at 1 %, VA


def test_new_methods_ssim_and_cross_traffic_tables(tmp_path):
    df = through_csv(tidy(new=True), tmp_path)
    tables = flat_tables(df)
    main = tables["main"]
    assert list(dict.fromkeys(main["method"])) == ["pretrained", "sam", "lora", "delta_topk", "bitfit", "tuning_copy",
                                                   "tuning_retune", "no_alignment", "equalizer", "base_control"]
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
    assert not frames(df).skipped
    controls = tables["controls"].set_index("method")
    assert list(controls.index) == [*report.CONTROL_ROWS, report.SHIFT_ROW]
    for i, d in enumerate(DOMAINS):
        assert controls.loc["pretrained, untransformed test images", d] == pytest.approx(
            domain_psnr("pretrained", None, i) + 3.0)
        assert controls.loc[report.SHIFT_ROW, d] == pytest.approx(3.0)
        assert controls.loc["base_control (tuning budget on base images)", d] == pytest.approx(
            domain_psnr("base_control", None, i))


def test_the_validation_table_shows_the_grid_and_the_choice(tmp_path):
    validation = pd.DataFrame([
        {"method": "tuning", "domain": "VA", "sparsity": "", "point": h, "setting": f'{{"tuning.lr": {lr}}}',
         "val_psnr": v, "chosen": h == 1} for h, (lr, v) in enumerate([(0.001, 20.5), (0.01, 21.25)])])
    df = through_csv(tidy(new=True), tmp_path)
    masks = pd.DataFrame([{"domain": d, "sparsity": g, "seed": 0, "metric": "mask_moved_fraction", "value": 0.25}
                          for d in DOMAINS for g in GAMMAS])
    frames_ = report.summarise(report.Inputs(df, {}, np.zeros(0), masks, None, validation), DOMAINS)
    cells, fmt = report.table_specs(frames_)["validation"]
    flat = report.flat_table(cells, fmt)
    assert list(flat.columns) == ["method", "sparsity_pct", "domain", "point", "setting", "val_psnr", "chosen"]
    assert flat["chosen"].tolist() == ["", "chosen"] and flat["val_psnr"].tolist() == [20.5, 21.25]


def test_tables_without_new_metrics_are_left_out_and_said_so(df):
    f = frames(df)
    assert {"domain_ssim", "cross_traffic"}.isdisjoint(report.table_specs(f))
    assert "domain_ssim" not in f.main.mean.columns
    assert any("domain_ssim" in reason for reason in f.skipped) and any("cross_psnr" in r for r in f.skipped)


def test_memory_network_from_the_measured_bytes(tmp_path):
    df = through_csv(tidy(new=True), tmp_path)
    net = flat_tables(df)["memory_network"]
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


def test_psnr_vs_bytes_and_memory_network_figures(tmp_path):
    df = through_csv(tidy(new=True, seeds=(0, 1, 2), shift=shift), tmp_path)
    f = frames(df)
    fig = report.fig_psnr_vs_bytes(f, DOMAINS)
    assert len(fig.axes) == len(DOMAINS) and fig.axes[0].get_xscale() == "log"
    lines = {c.get_label(): c.lines[0] for c in fig.axes[1].containers}  # errorbar: (data line, caps, bars)
    lines |= {line.get_label(): line for line in fig.axes[1].get_lines() if not line.get_label().startswith("_")}
    sam = lines["sam"]  # a line over γ: bytes ascending, domain PSNR of VP at each γ (mean over seeds)
    assert list(sam.get_xdata()) == [memory_bytes("sam", g, 3) for g in GAMMAS]
    assert list(sam.get_ydata()) == pytest.approx([domain_psnr("sam", g, 1) + np.mean(SHIFTS) for g in GAMMAS])
    assert "pretrained (0 B)" in lines and len(lines["bitfit"].get_xdata()) == 1
    fig = report.fig_memory_network(f)
    eq = next(line for line in fig.axes[0].get_lines() if line.get_label() == "equalizer")
    assert fig.axes[0].get_yscale() == "log" and eq.get_ydata()[-1] / eq.get_ydata()[0] == pytest.approx(1023)


# ----------------------------------------------------------------------------------------- stage
def write_inputs(params, paths, df: pd.DataFrame) -> None:
    """What the evaluate and adapt stages leave for the report, in the isolated project (its own
    domains and sparsities: params blocks of other stages may refer to them)."""
    paths.evaluation_csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths.evaluation_csv, index=False)
    write_json(paths.evaluate_json, {"reference_psnr": REFERENCE})
    recon = np.random.default_rng(0).integers(0, 256, (len(params.domains.names), 4, 2, 32, 32, 3), np.uint8)
    write_npy(paths.reconstructions, recon)
    for g in params.adapt.sparsities:
        for d in params.domains.names:
            write_json(paths.cell("sam", d, g).metrics,
                       {"details": {"kept_per_layer": {"a": 3, "b": 4}, "mask_moved_fraction": 0.5}})


REPORT_FILES = ({f"tables/{t}.{ext}" for t in ("main", "domain_psnr", "misalignment", "memory", "memory_network",
                                                 "pair_psnr", "mask_movement") for ext in ("csv", "md", "tex")}
                | {f"figures/{f}.png" for f in ("psnr_vs_sparsity", "psnr_vs_bytes", "misalignment",
                                                 "memory_vs_sparsity", "memory_network", "pair_matrix",
                                                 "reconstructions")}
                | {"plots/psnr_vs_sparsity.csv", "plots/memory_vs_sparsity.csv", "claims.json", "claims.md"})


def test_report_stage_writes_every_file(project, capsys):
    params = project.params
    domains, gammas = list(params.domains.names), list(params.adapt.sparsities)
    write_inputs(params, project.paths, tidy(domains, gammas))
    run(report.main, project.root)
    out = project.paths.reports
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"metrics/evaluation.csv",
                                                                                        "metrics/evaluate.json"}
    assert written == REPORT_FILES
    doc = json.loads((out / "claims.json").read_text())
    run_id = doc["provenance"]["mlflow_run_id"]
    assert run_id != "not tracked" and doc["provenance"]["profile"] == "quick"
    assert (out / "tables" / "main.md").read_text().splitlines()[0].count(run_id) == 1
    plot = pd.read_csv(out / "plots" / "psnr_vs_sparsity.csv")
    assert list(plot.columns) == ["sparsity", *domains] and plot["sparsity"].tolist() == sorted(gammas)
    last = len(domains) - 1
    assert plot[domains[last]].tolist() == pytest.approx([domain_psnr("sam", g, last) for g in sorted(gammas)])
    assert "guarantees all PASS" in capsys.readouterr().out
    import mlflow.tracking
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{project.paths.mlflow_db}")
    logged = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert "figures/pair_matrix.png" in logged
    parent = client.get_run(client.get_run(run_id).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"


def test_report_stage_with_seeds_new_methods_and_metrics(project, capsys):
    """Every new table and figure, and a finding's interval in claims.md; then an older evaluate without the
    new metrics: their tables are removed, and the log says they were left out."""
    params = project.params
    domains, gammas = list(params.domains.names), list(params.adapt.sparsities)
    write_inputs(params, project.paths, tidy(domains, gammas, seeds=(0, 1, 2), shift=lambda m, s: 0.1 * s, new=True))
    run(report.main, project.root)
    out = project.paths.reports
    new_tables = {f"tables/{t}.{ext}" for t in ("domain_ssim", "cross_traffic") for ext in ("csv", "md", "tex")}
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert REPORT_FILES | new_tables <= written
    assert "lora" in (out / "tables" / "main.md").read_text() and " ± " in (out / "tables" / "main.md").read_text()
    doc = json.loads((out / "claims.json").read_text())
    c3 = next(e for e in doc["claims"] if e["id"] == "C3")
    assert c3["measured"]["mean_gap_interval"]["n"] == 3 and "95 % CI" in (out / "claims.md").read_text()
    assert "left out" not in capsys.readouterr().out
    write_inputs(params, project.paths, tidy(domains, gammas))
    run(report.main, project.root)
    assert not any((out / name).exists() for name in new_tables)
    log = capsys.readouterr().out
    assert "left out tables/cross_traffic" in log and "no per_image.safetensors" in log


def test_mlflow_ui_view_of_an_execution(project, capsys):
    """Read back through MlflowClient what the UI reads: the experiment (its kind tag: model training,
    so MLflow 3 does not treat it as a GenAI app), the parent run of the execution (its description and
    the report's tables and figures), and the stages' child runs pointing to it."""
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    params, paths = project.params, project.paths
    write_inputs(params, paths, tidy(list(params.domains.names), list(params.adapt.sparsities)))
    with tracking.Tracker(params, paths, "domains") as tracker:  # another stage of the same execution
        tracker.log_metrics({"n_base_train": 1})
    run(report.main, project.root)
    client = MlflowClient(tracking_uri=tracking.tracking_uri(paths))
    (exp,) = client.search_experiments(filter_string=f"name = '{tracking.EXPERIMENT}'")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # MLflow 3.17's UI opens on the sidebar toggle's view (GenAI by default): the link that opens on the
    # runs is in the experiment's description and printed by the report stage
    link = f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    captured = capsys.readouterr()
    assert link in exp.tags["mlflow.note.content"] and link in captured.out and "TRACKING FAILED" not in captured.err
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and sorted(r.data.tags["stage"] for r in children) == ["domains", "report"]
    parent = parents[0]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    note = parent.data.tags["mlflow.note.content"]
    commit = tracking.git_commit(project.root)
    assert "profile **quick**" in note and "data source **builtin**" in note and f"`{commit}`" in note, note
    assert parent.info.run_name.startswith("builtin-quick ") and parent.info.status == "FINISHED"
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {f"tables/{t}.{ext}" for t in ("main", "misalignment", "memory") for ext in ("csv", "md", "tex")} <= tables
    assert {f"figures/{f}.png" for f in ("psnr_vs_sparsity", "misalignment", "pair_matrix")} <= figures
    assert "claims.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # an experiment made before the tag existed gets it from the next stage; a user's own choice stays
    client.delete_experiment_tag(exp.experiment_id, "mlflow.experimentKind")
    with tracking.Tracker(params, paths, "validate"):
        pass
    assert client.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "finetuning")
    with tracking.Tracker(params, paths, "validate"):
        pass
    assert client.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "finetuning"
    assert "TRACKING FAILED" not in capsys.readouterr().err


def test_missing_csv_exits_2_and_writes_nothing(project, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(report.main, project.root)
    assert exit_.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluation.csv not found" in err
    assert not project.paths.reports.exists()


def test_csv_lacking_a_method_exits_2_and_writes_nothing(project, capsys):
    params = project.params
    raw = tidy(params.domains.names, params.adapt.sparsities)
    write_inputs(params, project.paths, raw[raw["method"] != "equalizer"])
    before = project.files()
    with pytest.raises(SystemExit) as exit_:
        run(report.main, project.root)
    assert exit_.value.code == EXIT_BAD_INPUT
    assert "lacks domain_psnr of equalizer" in capsys.readouterr().err
    assert project.files() == before


def test_incomplete_or_stale_tables_are_refused(tiny_params, tmp_path):
    from pipeline.config import parse
    from pipeline.data import DataError
    params = parse(tiny_params)
    full = tidy(params.domains.names, params.adapt.sparsities)
    report.check_complete(through_csv(full, tmp_path), params, tmp_path)
    one_pair_less = full.drop(full.index[(full["method"] == "equalizer") & (full["metric"] == "pair_psnr")][:1])
    with pytest.raises(DataError, match="lacks pair_psnr of equalizer"):
        report.check_complete(through_csv(one_pair_less, tmp_path), params, tmp_path)
    stale = pd.concat([full, tidy(params.domains.names, [0.5]).query("method == 'sam'")])
    with pytest.raises(DataError, match=r"sparsities \[0.5\]"):
        report.check_complete(through_csv(stale, tmp_path), params, tmp_path)


def test_a_csv_without_seeds_is_seed_0_and_bad_seeds_are_refused(tmp_path):
    from pipeline.data import DataError
    old = through_csv(tidy().drop(columns="seed"), tmp_path)
    assert (old["seed"] == 0).all() and old["seed"].dtype == "int64"
    raw = tidy().astype({"seed": float})
    raw.loc[3, "seed"] = 1.5
    with pytest.raises(DataError, match="seeds must be integers"):
        through_csv(raw, tmp_path)


def test_new_methods_are_optional_but_must_be_whole(tiny_params, tmp_path):
    from pipeline.config import parse
    from pipeline.data import DataError
    params = parse(tiny_params)
    names, gammas = params.domains.names, params.adapt.sparsities
    full = tidy(names, gammas, seeds=(0, 1), new=True)
    report.check_complete(through_csv(full, tmp_path), params, tmp_path)
    lora_row = full.index[(full["method"] == "lora") & (full["metric"] == "cross_ssim") & (full["seed"] == 1)][:1]
    with pytest.raises(DataError, match="lacks cross_ssim of lora γ=.* at seed 1"):
        report.check_complete(through_csv(full.drop(lora_row), tmp_path), params, tmp_path)
    stale = pd.concat([full, tidy(names, [0.5], new=True).query("method == 'delta_topk'")])
    with pytest.raises(DataError, match=r"delta_topk at sparsities \[0.5\]"):
        report.check_complete(through_csv(stale, tmp_path), params, tmp_path)
    one_seed_less = full.drop(full.index[(full["method"] == "lora") & (full["metric"] == "cross_ssim")
                                         & (full["seed"] == 1)])
    with pytest.raises(DataError, match=r"lora γ=.*% are at different seeds: cross_ssim at \[0\], the others at \[0, 1\];"):
        report.check_complete(through_csv(one_seed_less, tmp_path), params, tmp_path)
    twice = pd.concat([full, full[(full["method"] == "bitfit") & (full["metric"] == "domain_psnr")]])
    with pytest.raises(DataError, match="lacks domain_psnr of bitfit at seed 0"):  # a duplicate is no coverage
        report.check_complete(through_csv(twice, tmp_path), params, tmp_path)


def test_misalignment_figure_is_the_same_bytes_for_the_same_numbers(df, tmp_path):
    """Its strip plot jitters with numpy's global generator: seeded for the figure, left as it was."""
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(paths):
        np.random.seed(i)  # another global state before each drawing
        before = np.random.get_state()
        report.save_figure(report.fig_misalignment(frames(df), df, REFERENCE), path)
        after = np.random.get_state()
        assert np.array_equal(after[1], before[1]) and after[2:] == before[2:]
    assert paths[0].read_bytes() == paths[1].read_bytes()
