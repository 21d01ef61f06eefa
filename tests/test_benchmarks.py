"""benchmarks: correctness only (finite, positive numbers; every row in the report).

Nothing here asserts anything about speed: the machine is shared and timings are noise-prone.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from benchmarks import executors, gpu, history, main, micro, report, rows, scaling, throughput, timing
from pipeline import config, profile, train
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


def _cells(text: str) -> list[list[str]]:
    """The cells of every Markdown table line in ``text`` (split at unescaped pipes, stripped)."""
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in text.splitlines()
            if line.startswith("|") and not set(line) <= set("|:- ")]


def test_quick_measurements_are_finite_positive_and_every_row_is_in_the_table(params, tmp_path):
    s = timing.QUICK
    sp = sorted(params.adapt.sparsities)
    pair = [sp[-1], sp[0]]
    with timing.cpu_runtime(1):
        step = micro.measure_sam_step(params, pair, s)
        switch = micro.measure_switch(params, sp[-1], s, tmp_path)
        storage = micro.measure_storage(params, sp, s, tmp_path)
        pretrain = micro.measure_pretrain(params, s, tmp_path)
        inference = micro.measure_inference(params, sp[-1], s)
    for result in (step, switch, storage, pretrain, inference):
        _finite_positive(result)
    assert set(step) == {"full_step_s"} | {f"{k}@{g:g}" for g in pair for k in ("sam_step_s", "sam_ratio")}
    assert switch["check_rebuilds"] == 0.0 and switch["check_outputs_correct"] == 1.0  # no rebuild, outputs right
    assert storage["kept@0.01"] > storage["kept@0.0003"] >= 1
    for g in sp:  # the header is parsed from the file: a JSON table, well inside the file
        assert 8 < storage[f"header@{g:g}"] < storage[f"bytes@{g:g}"]
    assert pretrain["images"] == s.n_images
    assert not list(tmp_path.glob("pretrain-*.pt"))  # fit's checkpoints are cleaned up

    got = (rows.rows_sam_step(step, pair) + rows.rows_switch(switch, sp[-1]) + rows.rows_storage(storage, sp)
           + rows.rows_pretrain(pretrain) + rows.rows_inference(inference, sp[-1]))
    assert len(got) == len(pair) + 3 + 2 * len(sp) + 2
    assert all(r.status in ("PASS", "FAIL", "INFO") for r in got)
    assert all(math.isfinite(v) for r in got for v in r.metrics.values())
    text = report.markdown(got, report.machine_info())
    table = _cells(text)
    assert table[0] == ["Measurement", "Measured", "Goal", "Ratio", "Status"]
    for r in got:
        assert table.count([report.cell(r.name), r.measured, r.goal, r.ratio, r.status]) == 1, r.name
    assert "**torch**: " + torch.__version__ in text and "**cpu**: " in text and "**date**: " in text


def test_precision_measurements_and_their_rows(params):
    s = timing.QUICK
    with timing.cpu_runtime(1):
        speed = throughput.measure_precision(params, s)
        psnr = throughput.measure_precision_psnr(params, s)
    _finite_positive(speed)
    _finite_positive(psnr)
    assert speed["images"] == s.precision_images and psnr["psnr_images"] == s.psnr_images
    assert set(speed) >= {"fp32_images_per_s", "bf16_images_per_s", "bf16_speedup", "channels_last_speedup"}
    peak = throughput.cpu_peak(frozenset({"avx2", "fma"}), 2.0)
    got = rows.rows_precision(speed, psnr, peak, batch=16, width=4, threads=1)
    assert [r.status for r in got] == [rows.judge(speed["bf16_speedup"], ">=", 1.5), "INFO",
                                       rows.judge(abs(psnr["psnr_bf16"] - psnr["psnr_fp32"]), "<=", 0.1), "INFO", "INFO"]
    fp32_gflops = speed["fp32_images_per_s"] * speed["macs_per_image"] * 6 / 1e9
    assert got[3].metrics == pytest.approx({"pretrain_fp32_gflops": fp32_gflops, "pretrain_fp32_gflops.peak": 64.0})
    table = _cells(report.markdown(got, {}))
    for r in got:
        assert table.count([report.cell(r.name), r.measured, r.goal, r.ratio, r.status]) == 1, r.name


def test_multiply_adds_of_known_convolutions():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)  # 8 x 10 x 10 outputs, each over 3 x 3 x 3 inputs
    grouped = torch.nn.Conv2d(8, 4, 3, groups=2)  # 4 x 8 x 8 outputs over (8 / 2) x 3 x 3
    assert throughput.conv_macs(torch.nn.Sequential(conv, grouped), (2, 3, 10, 10)) == 800 * 27 + 256 * 36
    up = torch.nn.ConvTranspose2d(4, 2, 5, stride=2, padding=2, output_padding=1)  # 4 x 8 x 8 inputs, each to 2 x 5 x 5
    assert throughput.conv_macs(torch.nn.Sequential(up), (1, 4, 8, 8)) == 256 * 50
    assert throughput.conv_macs(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)), (3, 3, 2, 2)) == 60
    # the quick model (width 16, 8 latent channels), counted by hand layer by layer
    encoder = 16 * 16 * 16 * 75 + 8 * 8 * 32 * 400 + 2 * 8 * 8 * 32 * 800 + 8 * 8 * 8 * 800
    decoder = 8 * 8 * 32 * 200 + 2 * 8 * 8 * 32 * 800 + 8 * 8 * 32 * 16 * 25 + 16 * 16 * 16 * 3 * 25
    model = micro.make_model(config.load(REPO / "params.yaml"))
    state = torch.random.get_rng_state()
    assert throughput.conv_macs(model) == encoder + decoder == 9_625_600
    assert torch.equal(torch.random.get_rng_state(), state)  # the channel noise drew from a forked generator


@pytest.mark.parametrize("flags, fp32, bf16", [({"avx2", "fma"}, 32, 32), ({"avx512f", "avx2", "fma"}, 64, 64),
                                               ({"avx512f", "avx512_bf16"}, 64, 128), ({"avx512f", "amx_bf16"}, 64, 1024),
                                               ({"sse2"}, 8, 8)])
def test_cpu_peak_from_flags_and_clock(tmp_path, flags, fp32, bf16):
    peak = throughput.cpu_peak(frozenset(flags), 2.5)
    assert (peak.fp32_per_cycle, peak.bf16_per_cycle) == (fp32, bf16)
    assert peak.gflops("fp32", 2) == pytest.approx(2 * 2.5 * fp32) and peak.gflops("bf16", 1) == pytest.approx(2.5 * bf16)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu MHz\t\t: 2445.424\nprocessor\t: 1\ncpu MHz\t\t: 2500.000\n")
    assert throughput.cpu_clock_ghz(info) == pytest.approx(2.5)
    assert throughput.cpu_clock_ghz(tmp_path / "absent") != throughput.cpu_clock_ghz(tmp_path / "absent")  # nan


def test_storage_rows_judge_the_data_and_the_header_separately(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "x.safetensors"
    save_file({"v": torch.zeros(10, dtype=torch.float16)}, str(path), metadata={"k": "v" * 50})
    header = micro.safetensors_header_bytes(path)
    assert header + 20 == path.stat().st_size  # 10 fp16 values after the header
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        micro.safetensors_header_bytes(tmp_path / "short")

    def status(bytes_, header):
        r = {"base_fp32_bytes": 100_000.0, "bytes@0.01": bytes_, "header@0.01": header, "kept@0.01": 1.0,
             "pct@0.01": 0.5}
        return rows.rows_storage(r, [0.01])[0]
    assert status(1000.0 + 1000, 1000).status == "PASS" and status(1000.0 + 1000, 1000).ratio == "1.000"
    assert status(1000.0 + 1001, 1000).status == "FAIL"  # data over gamma * 4N
    assert status(5000.0 + 500, 5000).status == "FAIL"  # header over the allowance


def test_interleaved_rotates_order_and_times_every_block():
    calls = []
    t = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, inner=2,
                       warmup=1)
    assert calls[:2] == ["a", "b"]  # warm-up
    blocks = calls[2::2]
    assert blocks == ["a", "b", "b", "a", "b", "a", "a", "b"]  # AB BA BA AB
    assert all(len(v) == 4 and all(x >= 0 for x in v) for v in t.values())
    assert timing.paired_ratio({"x": [2.0, 4.0, 6.0], "y": [1.0, 1.0, 2.0]}, "x", "y") == 3.0


def test_markdown_escapes_pipes_keeps_skip_rows_and_numbers_as_written():
    got = [report.Row("a | b", "1 ms", "≤ 2 ms", "1.000", "PASS"), report.Row("GPU x", "no CUDA device", status="SKIP")]
    text = report.markdown(got, {"date": "today"}, sections=["### extra"], notes=["a note"])
    table = _cells(text)
    assert table[1] == ["a \\| b", "1 ms", "≤ 2 ms", "1.000", "PASS"]  # "1.000" not parsed into "1"
    assert table[2] == ["GPU x", "no CUDA device", "—", "—", "SKIP"]
    assert text.index("a note") < text.index("### extra")
    (align,) = [line for line in text.splitlines() if line.startswith("|:")]
    assert [c.strip() for c in align.split("|")[1:-1]][3].endswith(":")  # the ratio column aligns right


def test_training_goes_through_the_seam_and_fit_adds_only_bookkeeping(params, tmp_path, monkeypatch):
    """The benchmark times pipeline.train.train_one_epoch itself (through fit, too), and one fit epoch is
    the same computation as train_one_epoch alone: the pretraining ratio prices only fit's checkpoint
    and history."""
    assert micro.train_one_epoch is train.train_one_epoch and micro.fit is train.fit
    assert throughput.train_one_epoch is train.train_one_epoch
    calls = []
    real = train.train_one_epoch

    def spy(*args, **kwargs):
        calls.append(kwargs["desc"])
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "train_one_epoch", spy)  # what fit calls
    monkeypatch.setattr(micro, "train_one_epoch", spy)  # what the benchmark calls directly
    s = timing.Settings(repeats=2, inner=1, fast_repeats=1, fast_inner=1, slow_inner=1, n_images=16, train_steps=1)
    with timing.cpu_runtime(1):
        micro.measure_pretrain(params, s, tmp_path)
        assert calls.count("benchmark fit epoch 1/1") == calls.count("benchmark") == 3  # warm-up + 2 repeats
        calls.clear()
        micro.measure_sam_step(params, [0.01], s)
        assert calls == ["benchmark"] * 2 * (2 + 2)  # full and SAM: 2 warm-ups + 2 repeats each

        images = micro.random_images(40, seed=9)
        a, b = (micro.make_model(params, seed=3) for _ in range(2))
        opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (a, b)]
        history = train.fit(a, opts[0], images, lambda x, g: a(x, g), epochs=1, batch_size=16, seed=5,
                            device=torch.device("cpu"), checkpoint=tmp_path / "c.pt", key="k", desc="fit")
        loss = micro.epoch(b, opts[1], images, params, seed=5)
    assert history == [{"epoch": 1, "train_loss": loss}]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_gpu_rows_are_skipped_without_cuda(params, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    got, note = rows.gpu_rows(params, timing.QUICK, tmp_path, [0.01])
    assert [r.name for r in got] == list(rows.GPU_ROW_NAMES) and all(r.status == "SKIP" for r in got)
    assert "skipped" in note


def test_gpu_rows_code_path_runs_on_any_device(params, tmp_path):
    tiny = timing.Settings(repeats=1, inner=1, fast_repeats=1, fast_inner=1, slow_inner=1, n_images=4, train_steps=1)
    with timing.cpu_runtime(1):
        got, note = rows.gpu_rows(params, tiny, tmp_path, [0.01, 0.0003], device="cpu")
    assert len(got) == 7 and all(r.status in ("PASS", "FAIL", "INFO") for r in got)  # 5 + bf16/fp32, channels_last
    assert all(math.isfinite(v) and v > 0 for r in got for v in r.metrics.values())
    width = profile.render("paper")["model"]["width"]
    assert all(r.name.startswith("GPU ") for r in got) and f"width {width} from profiles/paper.yaml" in note


def test_gpu_script_skips_with_one_line_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path / "benchmarks.md"), "--work", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("benchmarks.gpu: skipped") and out.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written, no work folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs for real")
def test_gpu_script_entry_point_skips_on_this_machine(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path / "b.md")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("benchmarks.gpu: skipped") and done.stdout.count("\n") == 1
    assert not (tmp_path / "b.md").exists()


def test_gpu_section_replaces_its_previous_version_and_keeps_the_cpu_report(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# zfda-bench benchmarks\n\n| cpu table |\n")
    first = gpu.gpu_section("GPU A", [report.Row("x", "1 s")], {"gpu": "A"}, ["note a"])
    gpu.upsert_section(path, first)
    gpu.upsert_section(path, gpu.gpu_section("GPU B", [report.Row("x", "2 s")], {"gpu": "B"}, ["note b"]))
    text = path.read_text()
    assert text.startswith("# zfda-bench benchmarks\n\n| cpu table |\n") and text.count(gpu.BEGIN) == 1
    assert "## GPU: GPU B" in text and "GPU A" not in text and ["x", "2 s", "—", "—", "INFO"] in _cells(text)
    gpu.upsert_section(tmp_path / "new.md", first)  # no report yet: the section under the title
    assert (tmp_path / "new.md").read_text().startswith("# zfda-bench benchmarks\n\n" + gpu.BEGIN)


@pytest.mark.slow
def test_gpu_script_code_path_on_the_cpu(tmp_path, monkeypatch):
    """The whole script with tiny sizes on the CPU (the GPU rows have their own test): the paper
    profile's stages, two sweep cells one after another, the section in the report."""
    monkeypatch.setenv("ZFDA_EXECUTION", "pytest-gpu")
    monkeypatch.setattr(gpu, "gpu_rows", lambda *a, **k: ([report.Row("GPU stub", "—")], "stub note"))
    out = tmp_path / "benchmarks.md"
    with timing.cpu_runtime(1):
        assert gpu.main(["--device", "cpu", "--tiny", "--cells", "2", "--executor", "local", "--out", str(out),
                         "--work", str(tmp_path / "work")]) == 0
    table = _cells(out.read_text())
    pre, sweep = table[1], table[2]
    assert pre[0].startswith("GPU paper-profile pretraining, 2 epochs") and "base test PSNR" in pre[1]
    assert sweep[0].startswith("GPU sweep: 2 sam adapt cells") and "2/2 cells done" in sweep[1] and sweep[4] == "INFO"
    assert table[3][0] == "GPU stub"
    assert [r[0].split(" (")[0] for r in table[4:7]] == [f"GPU Batched / sequential cells/s, K={k}" for k in (1, 2)] + [
        "GPU crossover on cpu: smallest K from which batching pays"]
    assert (tmp_path / "work" / "build" / "builtin-paper" / "adapt" / "sam").is_dir()


def test_least_squares_recovers_the_scaling_model():
    a, b, c = 30.0, 7.5, 12.0
    sizes = list(scaling.SCALING_SIZES)
    fit = scaling.least_squares(sizes, [a + b * d * s + c * d for d, s in sizes])
    assert fit == pytest.approx((a, b, c), abs=1e-6)


def test_scaling_rows_fit_and_predict_from_per_size_results():
    def result(d, s, rc=0):
        stages = {"validate": 3.0, "pretrain": 9.0, **{f"adapt_sam@D{i}-{j}": 10.0 for i in range(d) for j in range(s)},
                  **{f"adapt_tuning@D{i}": 12.0 for i in range(d)}}
        return {"domains": d, "sparsities": s, "rc": rc, "total_s": 1.0 + sum(stages.values()), "startup_s": 1.0,
                "stages": stages, "tail": ["boom"] if rc else []}

    results = [result(2, 1), result(2, 2), result(4, 2), result(4, 4, rc=1)]
    got, section = scaling.rows_scaling(results)
    fit = next(r for r in got if r.name.startswith("Scaling fit:"))
    assert fit.metrics == pytest.approx({"scaling_fit_a": 13.0, "scaling_fit_b": 10.0, "scaling_fit_c": 12.0})
    pred = next(r for r in got if r.name.startswith("Scaling fit prediction"))
    quick = profile.render("quick")
    qd, qs = len(quick["domains"]["names"]), len(quick["adapt"]["sparsities"])
    assert pred.metrics["scaling_prediction_quick_s"] == pytest.approx(13 + 10 * qd * qs + 12 * qd)
    assert [r.status for r in got[:4]] == ["INFO", "INFO", "INFO", "FAIL"]
    table = _cells(section)
    assert table[0] == ["Stage", "2×1", "2×2", "4×2", "4×4"] and table[1][0] == "(dvc start)"
    assert ["adapt_sam", "20.0 [2]", "40.0 [4]", "80.0 [8]", "160.0 [16]"] in table and "boom" in section
    assert table[-1] == ["**total**"] + [f"**{r['total_s']:.1f}**" for r in results] == [
        "**total**", "**57.0**", "**77.0**", "**141.0**", "**221.0**"]


def test_stage_durations_from_dvc_output():
    events = [(0.5, "Verifying data sources"), (1.0, "Running stage 'validate':"), (1.1, "> python -m x"),
              (3.0, "Running stage 'adapt_sam@VA-0.01':"), (9.0, "Updating lock file 'dvc.lock'")]
    assert scaling.stage_durations(events, end=10.0) == {"validate": 2.0, "adapt_sam@VA-0.01": 7.0}


def test_scaling_params_are_the_tiny_config_with_the_requested_size():
    raw = scaling.scaling_params(2, 1)
    p = config.parse(raw)
    assert len(p.domains.names) == 2 and len(p.adapt.sparsities) == 1
    tiny = profile.shrink(profile.render("quick", "builtin"))  # the tests' tiny config, the same overlay
    assert {k: v for k, v in raw.items() if k not in ("domains", "adapt", "ablate")} == {
        k: v for k, v in tiny.items() if k not in ("domains", "adapt", "ablate")}


def test_expected_cells_are_the_stages_dvc_lists(tiny_params):
    cells, untracked = history.expected_cells(tiny_params, REPO / "dvc.yaml")
    # one adapt stage for every method: one run (its cells are child runs of the execution)
    assert "adapt" in cells and not any(c.startswith("adapt_") for c in cells)
    assert not set(cells) & set(untracked)
    assert untracked == ["validate"]  # the only stage without an MLflow run
    assert "network" in cells  # its stage module opens the Tracker
    assert not any(c.startswith("ablate") for c in cells)  # the quick profile runs no ablation study
    # validate, domains, pretrain, adapt (every method), evaluate, report, network
    assert len(cells) + len(untracked) == 7


def test_mlflow_history_reads_the_latest_quick_execution(tmp_path, mlflow_template):
    import shutil

    from mlflow.tracking import MlflowClient
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.create_experiment("zfda-bench", artifact_location=(tmp_path / "artifacts").as_uri())
    other = client.create_experiment("someone-else", artifact_location=(tmp_path / "other").as_uri())
    t0 = 1_700_000_000_000

    def execution(key, start, stages, profile="quick", experiment=exp):
        parent = client.create_run(experiment, start_time=start, tags={"zfda.execution": key, "profile": profile,
                                                                        "data.source": "builtin"}, run_name=key)
        for name, offset, seconds, *loops in stages:
            run = client.create_run(experiment, start_time=start + offset * 1000, run_name=name, tags={
                "mlflow.parentRunId": parent.info.run_id, "stage": name.split("[")[0], "profile": profile})
            for key, value in zip(("loop_train_seconds", "loop_evaluate_seconds"), loops):
                client.log_metric(run.info.run_id, key, value)
            client.set_terminated(run.info.run_id, "FINISHED", end_time=start + (offset + seconds) * 1000)
        client.set_terminated(parent.info.run_id, "FINISHED")
        return parent.info.run_id

    execution("dvc-1", t0, [("domains", 0, 5), ("pretrain", 8, 60), ("adapt_sam[VA-0.01]", 70, 20)])
    execution("dvc-2", t0 + 10**6, [("adapt_sam[VA-0.01]", 0, 10, 6, 1), ("evaluate", 12, 4, 0, 3)])
    execution("dvc-3", t0 + 2 * 10**6, [("pretrain", 0, 1)], profile="paper")  # another profile: ignored
    execution("dvc-4", t0 + 3 * 10**6, [("pretrain", 0, 1)], experiment=other)  # another experiment: ignored
    client.delete_run(execution("dvc-5", t0 + 4 * 10**6, [("pretrain", 0, 1)]))  # deleted: ignored
    h = history.mlflow_quick_history(db, ["domains", "pretrain", "adapt_sam[VA-0.01]", "evaluate", "report"])
    assert h["execution"] == "dvc-2" and [s["name"] for s in h["stages"]] == ["adapt_sam[VA-0.01]", "evaluate"]
    assert h["span_s"] == pytest.approx(16.0) and h["stages"][1]["offset"] == pytest.approx(12.0)
    assert h["median_gap_s"] == pytest.approx(2.0)  # gaps 3, 2, 2
    assert h["found"] == 4 and h["missing"] == ["report"]
    assert h["composite_s"] == pytest.approx(5 + 60 + 10 + 4 + 4 * 2.0)  # latest finished run per cell
    assert h["loops_s"] == {"loop_train_seconds": 6.0, "loop_evaluate_seconds": 4.0}
    got, section = history.rows_history(h, db)
    assert [r.status for r in got] == ["INFO", "INFO", "INFO"]  # "report" never ran: not judged
    assert "16 s / 10 s (training 6 s, evaluation 4 s) = 1.60 (partial execution)" == got[2].measured
    assert history.rows_history({**h, "loops_s": None}, db)[0][2].status == "SKIP"  # stages that logged none
    assert ["evaluate", "12", "4.0", "FINISHED"] in _cells(section)
    assert history.mlflow_quick_history(tmp_path / "absent.db") is None
    assert not (tmp_path / "absent.db").exists()  # reading never creates a store


def test_main_quick_writes_the_report_and_logs_to_mlflow(project, monkeypatch):
    monkeypatch.setattr(main, "QUICK", timing.Settings(repeats=1, inner=1, fast_repeats=1, fast_inner=2, slow_inner=1,
                                                       n_images=16, train_steps=1))
    out = project.root / "reports" / "benchmarks.md"
    assert main.main(["--quick", "--out", str(out), "--root", str(project.root)]) == 0
    text = out.read_text()
    assert "SAM train step / full fine-tuning step" in text and "| Measurement " in text
    assert "Quick pipeline wall time from mlflow.db" in text  # the project's own, empty store: SKIP
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{project.paths.mlflow_db}")
    exp = client.get_experiment_by_name("zfda-bench")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'benchmark'")
    assert "reload_over_switch" in run.data.metrics and "inference_throughput_ratio" in run.data.metrics
    assert "pretrain_fit_throughput_ratio" in run.data.metrics and "pretrain_bf16_speedup" in run.data.metrics
    assert "pretrain_fp32_gflops" in run.data.metrics and "pretrain_bf16_psnr_delta_db" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "benchmark")] == ["benchmark/benchmarks.md"]
    # a second run rewrites its own part and keeps the sections other modules wrote (GPU, executors)
    gpu.upsert_section(out, gpu.gpu_section("GPU A", [report.Row("x", "1 s")], {"gpu": "A"}, []))
    gpu.upsert_section(out, executors.section([report.Row("y", "2 s")], {"k": "v"}), executors.BEGIN, executors.END)
    assert main.main(["--quick", "--out", str(out), "--root", str(project.root)]) == 0
    text = out.read_text()
    assert text.count("| Measurement ") == 3 and text.count(gpu.BEGIN) == 1 and text.count(executors.BEGIN) == 1
    assert "## GPU: GPU A" in text and "## Executors" in text and text.startswith("# zfda-bench benchmarks")


def test_executors_script_runs_one_sweep_per_executor_and_compares_the_bytes(tmp_path, monkeypatch):
    """local and pool on the tiny sweep (Ray: the same code path under ``-m ray``, .ci/run); a report
    with another section keeps it."""
    monkeypatch.setenv("ZFDA_EXECUTION", "pytest-executors")
    out = tmp_path / "benchmarks.md"
    out.write_text("# zfda-bench benchmarks\n\n| cpu table |\n")
    with timing.cpu_runtime(1):
        assert executors.main(["--tiny", "--executors", "local,pool", "--workers", "2", "--epochs", "1",
                               "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    text = out.read_text()
    assert text.startswith("# zfda-bench benchmarks\n\n| cpu table |\n") and "## Executors" in text
    local, pool = _cells(text)[-2:]
    assert local[0].startswith("sam stage over ") and local[0].endswith("cells, local (1 process, 1 thread)")
    assert "pool (2 worker processes)" in pool[0] and "identical to local" in pool[1] and pool[4] == "PASS"
    assert (tmp_path / "work" / "pool" / "build" / "builtin-quick" / "adapt" / "sam").is_dir()
    with pytest.raises(SystemExit, match="local first"):
        executors.main(["--executors", "pool,local"])
