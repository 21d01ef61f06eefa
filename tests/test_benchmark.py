"""pipeline.benchmark: correctness only (finite, positive numbers; every row in the report).

Nothing here asserts anything about speed: the machine is shared and timings are noise-prone.
"""
from __future__ import annotations

import math

import pytest
import torch

from pipeline import benchmark as bm
from pipeline import config
from pipeline.paths import REPO


@pytest.fixture
def params(tiny_params) -> config.Params:
    return config.parse(tiny_params)  # width 4, batch 16, the quick profile's sparsities


def _finite_positive(result: dict) -> None:
    """Every measurement (times, ratios, bytes, counts) is a finite positive float; ``check_*`` are checks."""
    assert result
    for key, value in result.items():
        assert isinstance(value, float) and math.isfinite(value), (key, value)
        assert value > 0 or key.startswith("check_"), (key, value)


def test_quick_measurements_are_finite_positive_and_every_row_is_in_the_table(params, tmp_path):
    s = bm.QUICK
    sp = sorted(params.adapt.sparsities)
    pair = [sp[-1], sp[0]]
    with bm.cpu_runtime(1):
        step = bm.measure_sam_step(params, pair, s)
        switch = bm.measure_switch(params, sp[-1], s, tmp_path)
        storage = bm.measure_storage(params, sp, s, tmp_path)
        pretrain = bm.measure_pretrain(params, s, tmp_path)
        inference = bm.measure_inference(params, sp[-1], s)
    for result in (step, switch, storage, pretrain, inference):
        _finite_positive(result)
    assert set(step) == {"full_step_s"} | {f"{k}@{g:g}" for g in pair for k in ("sam_step_s", "sam_ratio")}
    assert switch["check_rebuilds"] == 0.0 and switch["check_outputs_correct"] == 1.0  # no rebuild, outputs right
    assert storage["kept@0.01"] > storage["kept@0.0003"] >= 1
    for g in sp:  # the header is parsed from the file: a JSON table, well inside the file
        assert 8 < storage[f"header@{g:g}"] < storage[f"bytes@{g:g}"]
    assert pretrain["images"] == s.n_images
    assert not list(tmp_path.glob("pretrain-*.pt"))  # fit's checkpoints are cleaned up

    rows = (bm.rows_sam_step(step, pair) + bm.rows_switch(switch, sp[-1]) + bm.rows_storage(storage, sp)
            + bm.rows_pretrain(pretrain) + bm.rows_inference(inference, sp[-1]))
    assert len(rows) == len(pair) + 3 + 2 * len(sp) + 2
    assert all(r.status in ("PASS", "FAIL", "INFO") for r in rows)
    assert all(math.isfinite(v) for r in rows for v in r.metrics.values())
    text = bm.markdown(rows, bm.machine_info())
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == "| Measurement | Measured | Goal | Ratio | Status |"
    for r in rows:
        assert sum(line.startswith(f"| {bm._cell(r.name)} |") for line in table) == 1, r.name
    assert "**torch**: " + torch.__version__ in text and "**cpu**: " in text and "**date**: " in text


def test_storage_rows_judge_the_data_and_the_header_separately(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "x.safetensors"
    save_file({"v": torch.zeros(10, dtype=torch.float16)}, str(path), metadata={"k": "v" * 50})
    header = bm.safetensors_header_bytes(path)
    assert header + 20 == path.stat().st_size  # 10 fp16 values after the header
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        bm.safetensors_header_bytes(tmp_path / "short")

    def status(bytes_, header):
        r = {"base_fp32_bytes": 100_000.0, "bytes@0.01": bytes_, "header@0.01": header, "kept@0.01": 1.0,
             "pct@0.01": 0.5}
        return bm.rows_storage(r, [0.01])[0]
    assert status(1000.0 + 1000, 1000).status == "PASS" and status(1000.0 + 1000, 1000).ratio == "1.000"
    assert status(1000.0 + 1001, 1000).status == "FAIL"  # data over gamma * 4N
    assert status(5000.0 + 500, 5000).status == "FAIL"  # header over the allowance


def test_interleaved_rotates_order_and_times_every_block():
    calls = []
    t = bm.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, inner=2,
                       warmup=1)
    assert calls[:2] == ["a", "b"]  # warm-up
    blocks = calls[2::2]
    assert blocks == ["a", "b", "b", "a", "b", "a", "a", "b"]  # AB BA BA AB
    assert all(len(v) == 4 and all(x >= 0 for x in v) for v in t.values())
    assert bm.paired_ratio({"x": [2.0, 4.0, 6.0], "y": [1.0, 1.0, 2.0]}, "x", "y") == 3.0


def test_markdown_escapes_pipes_and_keeps_skip_rows():
    rows = [bm.Row("a | b", "1 ms", "≤ 2 ms", "0.5", "PASS"), bm.Row("GPU x", "no CUDA device", status="SKIP")]
    text = bm.markdown(rows, {"date": "today"}, sections=["### extra"], notes=["a note"])
    assert "| a \\| b | 1 ms | ≤ 2 ms | 0.5 | PASS |" in text
    assert "| GPU x | no CUDA device | — | — | SKIP |" in text
    assert text.index("a note") < text.index("### extra")


def test_gpu_rows_are_skipped_without_cuda(params, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows, note = bm.gpu_rows(params, bm.QUICK, tmp_path, [0.01])
    assert [r.name for r in rows] == list(bm.GPU_ROW_NAMES) and all(r.status == "SKIP" for r in rows)
    assert "skipped" in note


def test_gpu_rows_code_path_runs_on_any_device(params, tmp_path):
    tiny = bm.Settings(repeats=1, inner=1, fast_repeats=1, fast_inner=1, slow_inner=1, n_images=4, train_steps=1)
    with bm.cpu_runtime(1):
        rows, note = bm.gpu_rows(params, tiny, tmp_path, [0.01, 0.0003], device="cpu")
    assert len(rows) == 5 and all(r.status in ("PASS", "FAIL", "INFO") for r in rows)
    assert all(math.isfinite(v) and v > 0 for r in rows for v in r.metrics.values())
    assert all(r.name.startswith("GPU ") for r in rows) and "width 32" in note


def test_least_squares_recovers_the_scaling_model():
    a, b, c = 30.0, 7.5, 12.0
    sizes = list(bm.SCALING_SIZES)
    fit = bm.least_squares(sizes, [a + b * d * s + c * d for d, s in sizes])
    assert fit == pytest.approx((a, b, c), abs=1e-6)


def test_scaling_rows_fit_and_predict_from_per_size_results():
    def result(d, s, rc=0):
        stages = {"validate": 3.0, "pretrain": 9.0, **{f"adapt_sam@D{i}-{j}": 10.0 for i in range(d) for j in range(s)},
                  **{f"adapt_tuning@D{i}": 12.0 for i in range(d)}}
        return {"domains": d, "sparsities": s, "rc": rc, "total_s": 1.0 + sum(stages.values()), "startup_s": 1.0,
                "stages": stages, "tail": ["boom"] if rc else []}

    rows, section = bm.rows_scaling([result(2, 1), result(2, 2), result(4, 2), result(4, 4, rc=1)])
    fit = next(r for r in rows if r.name.startswith("Scaling fit:"))
    assert fit.metrics == pytest.approx({"scaling_fit_a": 13.0, "scaling_fit_b": 10.0, "scaling_fit_c": 12.0})
    pred = next(r for r in rows if r.name.startswith("Scaling fit prediction"))
    assert pred.metrics["scaling_prediction_quick_s"] == pytest.approx(13 + 10 * 16 + 12 * 4)  # quick: 4 x 4
    assert [r.status for r in rows[:4]] == ["INFO", "INFO", "INFO", "FAIL"]
    assert "| adapt_sam | 20.0 [2] | 40.0 [4] | 80.0 [8] | 160.0 [16] |" in section and "boom" in section


def test_stage_durations_from_dvc_output():
    events = [(0.5, "Verifying data sources"), (1.0, "Running stage 'validate':"), (1.1, "> python -m x"),
              (3.0, "Running stage 'adapt_sam@VA-0.01':"), (9.0, "Updating lock file 'dvc.lock'")]
    assert bm.stage_durations(events, end=10.0) == {"validate": 2.0, "adapt_sam@VA-0.01": 7.0}


def test_scaling_params_validate_and_have_the_requested_size():
    raw = bm.scaling_params(2, 1)
    p = config.parse(raw)
    assert len(p.domains.names) == 2 and len(p.adapt.sparsities) == 1 and p.model.width == bm.TINY["model"]["width"]


def test_expected_cells_of_the_real_dvc_yaml(tiny_params):
    cells, untracked = bm.expected_cells(tiny_params, REPO / "dvc.yaml")
    for d in tiny_params["domains"]["names"]:
        for g in tiny_params["adapt"]["sparsities"]:
            assert f"adapt_sam[{d}-{g:g}]" in cells
    assert not set(cells) & set(untracked)
    assert untracked == ["validate"]  # the only stage without an MLflow run
    assert "network" in cells  # tracked through ablate.network_main


def test_mlflow_history_reads_the_latest_quick_execution(tmp_path, mlflow_template):
    import shutil

    from mlflow.tracking import MlflowClient
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.create_experiment("zfda-bench", artifact_location=(tmp_path / "artifacts").as_uri())
    t0 = 1_700_000_000_000

    def execution(key, start, stages, profile="quick"):
        parent = client.create_run(exp, start_time=start, tags={"zfda.execution": key, "profile": profile,
                                                                 "data.source": "builtin"}, run_name=key)
        for name, offset, seconds in stages:
            run = client.create_run(exp, start_time=start + offset * 1000, run_name=name, tags={
                "mlflow.parentRunId": parent.info.run_id, "stage": name.split("[")[0], "profile": profile})
            client.set_terminated(run.info.run_id, "FINISHED", end_time=start + (offset + seconds) * 1000)
        client.set_terminated(parent.info.run_id, "FINISHED")

    execution("dvc-1", t0, [("domains", 0, 5), ("pretrain", 8, 60), ("adapt_sam[VA-0.01]", 70, 20)])
    execution("dvc-2", t0 + 10**6, [("adapt_sam[VA-0.01]", 0, 10), ("evaluate", 12, 4)])
    execution("dvc-3", t0 + 2 * 10**6, [("pretrain", 0, 1)], profile="paper")  # another profile: ignored
    h = bm.mlflow_quick_history(db, ["domains", "pretrain", "adapt_sam[VA-0.01]", "evaluate", "report"])
    assert h["execution"] == "dvc-2" and [s["name"] for s in h["stages"]] == ["adapt_sam[VA-0.01]", "evaluate"]
    assert h["span_s"] == pytest.approx(16.0) and h["stages"][1]["offset"] == pytest.approx(12.0)
    assert h["median_gap_s"] == pytest.approx(2.0)  # gaps 3, 2, 2
    assert h["found"] == 4 and h["missing"] == ["report"]
    assert h["composite_s"] == pytest.approx(5 + 60 + 10 + 4 + 4 * 2.0)  # latest finished run per cell
    rows, section = bm.rows_history(h, db)
    assert [r.status for r in rows] == ["INFO", "INFO"]  # "report" never ran: not judged
    assert "| evaluate | 12 | 4.0 | FINISHED |" in section
    assert bm.mlflow_quick_history(tmp_path / "absent.db") is None


def test_main_quick_writes_the_report_and_logs_to_mlflow(project, monkeypatch):
    monkeypatch.setattr(bm, "QUICK", bm.Settings(repeats=1, inner=1, fast_repeats=1, fast_inner=2, slow_inner=1,
                                                  n_images=16, train_steps=1))
    out = project.root / "reports" / "benchmarks.md"
    assert bm.main(["--quick", "--out", str(out), "--root", str(project.root)]) == 0
    text = out.read_text()
    assert "SAM train step / full fine-tuning step" in text and "| Measurement |" in text
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{project.paths.mlflow_db}")
    exp = client.get_experiment_by_name("zfda-bench")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'benchmark'")
    assert "reload_over_switch" in run.data.metrics and "inference_throughput_ratio" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "benchmark")] == ["benchmark/benchmarks.md"]
