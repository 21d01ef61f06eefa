"""The report stage (pipeline/stages/report.py) end to end in an isolated project: every file it writes,
MLflow's view of them, and bad input refused before anything is written."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import claims
from pipeline.metrics import write_per_image
from pipeline.stages import EXIT_BAD_INPUT, report, run, write_json, write_npy, write_rows

from ..synthetic import REFERENCE, bases_table, domain_psnr, through_csv, tidy

VALIDATION = [{"method": "tuning", "domain": "VA", "sparsity": "", "point": 0, "setting": '{"tuning.lr": 0.001}',
               "val_psnr": 20.5, "seeds": 1, "chosen": True, "origin": "grid", "choice": "edge-unsearched"}]


def write_inputs(params, paths, df: pd.DataFrame) -> None:
    """What the pretrain, adapt and evaluate stages leave for the report, in the isolated project (its own
    domains and sparsities: params blocks of other stages may refer to them)."""
    paths.evaluation_csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths.evaluation_csv, index=False)
    write_json(paths.evaluate_json, {"reference_psnr": REFERENCE})
    write_json(paths.pretrain_json, {"train_seconds": 1.5, "runtime": {"device": "cpu", "threads": 1}})
    write_rows(paths.validation_csv, VALIDATION, list(VALIDATION[0]))
    write_per_image(paths.per_image, {})
    recon = np.random.default_rng(0).integers(0, 256, (len(params.domains.names), 4, 2, 32, 32, 3), np.uint8)
    write_npy(paths.reconstructions, recon)
    for g in params.adapt.sparsities:
        for d in params.domains.names:
            write_json(paths.cell("sam", d, g).metrics,
                       {"details": {"kept_per_layer": {"a": 3, "b": 4}, "mask_moved_fraction": 0.5}})


TABLES = ("main", "domain_psnr", "domain_ssim", "misalignment", "memory", "memory_network", "pair_psnr",
          "cross_traffic", "mask_movement", "controls", "validation")
REPORT_FILES = ({f"tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")}
                | {f"figures/{f}.png" for f in ("psnr_vs_sparsity", "psnr_vs_bytes", "misalignment",
                                                 "memory_vs_sparsity", "memory_network", "pair_matrix",
                                                 "reconstructions")}
                | {"plots/psnr_vs_sparsity.csv", "plots/memory_vs_sparsity.csv", "claims.json", "claims.md",
                   "README.md"})
INPUTS = {f"metrics/{f}" for f in ("evaluation.csv", "evaluate.json", "pretrain.json", "validation.csv")}


def test_report_stage_writes_every_file(project, capsys):
    params = project.params
    domains, gammas = list(params.domains.names), list(params.adapt.sparsities)
    write_inputs(params, project.paths, tidy(domains, gammas, new=True))
    run(report.main, project.root)
    out = project.paths.reports
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - INPUTS
    assert written == REPORT_FILES
    doc = json.loads((out / "claims.json").read_text())
    run_id = doc["provenance"]["mlflow_run_id"]
    assert run_id != "not tracked" and doc["provenance"]["profile"] == "quick"
    assert (out / "tables" / "main.md").read_text().splitlines()[0].count(run_id) == 1
    plot = pd.read_csv(out / "plots" / "psnr_vs_sparsity.csv")
    assert list(plot.columns) == ["sparsity", *domains] and plot["sparsity"].tolist() == sorted(gammas)
    last = len(domains) - 1
    assert plot[domains[last]].tolist() == pytest.approx([domain_psnr("sam", g, last) for g in sorted(gammas)])
    page = (out / "README.md").read_text()
    assert run_id in page and "![" in page and "| C1 | guarantee |" in page and "train seconds: 1.5 s" in page
    assert "guarantees all PASS" in capsys.readouterr().out
    import mlflow.tracking
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{project.paths.mlflow_db}")
    logged = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert "figures/pair_matrix.png" in logged and "README.md" in {a.path for a in client.list_artifacts(run_id)}
    parent = client.get_run(client.get_run(run_id).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"


def test_report_stage_with_seeds(project, tmp_path):
    """Intervals over seeds in the tables and in a finding of claims.md; over seeds and bases from the
    bases study's table, where the run has one."""
    params = project.params
    domains, gammas = list(params.domains.names), list(params.adapt.sparsities)
    raw = tidy(domains, gammas, seeds=(0, 1, 2), shift=lambda m, s: 0.1 * s, new=True)
    write_inputs(params, project.paths, raw)
    gamma = claims.one_percent_gamma(through_csv(raw, tmp_path))[0]
    project.paths.ablations.mkdir(parents=True, exist_ok=True)
    bases_table(raw, {domains[0]: [4.2, 4.6]}, gamma).to_csv(project.paths.ablations / "bases.csv", index=False)
    run(report.main, project.root)
    out = project.paths.reports
    gains = json.loads((out / "claims.json").read_text())["gains"]
    assert gains["bases"]["combined"] and gains["vs"]["pretrained"][domains[0]]["bases"]["n"] == 5
    assert "| sam − pretrained |" in (out / "README.md").read_text() and "## Findings per domain" in (
        out / "claims.md").read_text()
    assert "lora" in (out / "tables" / "main.md").read_text() and " ± " in (out / "tables" / "main.md").read_text()
    doc = json.loads((out / "claims.json").read_text())
    c3 = next(e for e in doc["claims"] if e["id"] == "C3")
    assert c3["measured"]["mean_gap_interval"]["n"] == 3 and "95 % CI" in (out / "claims.md").read_text()


def test_mlflow_ui_view_of_an_execution(project, capsys):
    """Read back through MlflowClient what the UI reads: the experiment (its kind tag: model training,
    so MLflow 3 does not treat it as a GenAI app), the parent run of the execution (its description and
    the report's tables and figures), and the stages' child runs pointing to it."""
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    params, paths = project.params, project.paths
    write_inputs(params, paths, tidy(list(params.domains.names), list(params.adapt.sparsities), new=True))
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


@pytest.mark.parametrize("broken", ["no equalizer", "no seed column", "no per_image", "no validation.csv",
                                    "no pretrain.json", "bad bases.csv", "validation.csv of older code"])
def test_bad_input_exits_2_in_one_line_and_writes_nothing(project, capsys, broken):
    params, paths = project.params, project.paths
    raw = tidy(params.domains.names, params.adapt.sparsities, new=True)
    raw = {"no equalizer": raw[raw["method"] != "equalizer"],
           "no seed column": raw.drop(columns="seed")}.get(broken, raw)
    write_inputs(params, paths, raw)
    missing = {"no per_image": paths.per_image, "no validation.csv": paths.validation_csv,
               "no pretrain.json": paths.pretrain_json}.get(broken)
    if missing is not None:
        missing.unlink()
    if broken == "bad bases.csv":
        paths.ablations.mkdir(parents=True, exist_ok=True)
        (paths.ablations / "bases.csv").write_text("base,domain\nmain,VA\n")
    if broken == "validation.csv of older code":  # before each choice said where it stands
        write_rows(paths.validation_csv, [{k: v for k, v in r.items() if k not in ("origin", "choice")}
                                          for r in VALIDATION], list(VALIDATION[0])[:-2])
    before = project.files()
    with pytest.raises(SystemExit) as exit_:
        run(report.main, project.root)
    assert exit_.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    expected = {"no equalizer": "lacks domain_psnr of equalizer", "no seed column": "lacks columns ['seed']",
                "no per_image": "per_image.safetensors", "no validation.csv": "validation.csv not found",
                "no pretrain.json": "pretrain.json unusable", "bad bases.csv": "bases.csv lacks columns",
                "validation.csv of older code": "validation.csv lacks columns ['origin', 'choice']"}[broken]
    assert len(err.splitlines()) == 1 and expected in err, err
    assert project.files() == before
