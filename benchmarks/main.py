"""``python -m benchmarks``: run the measurements, write the report, log it to MLflow."""
from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from pipeline import config
from pipeline.config import Params
from pipeline.paths import REPO, Paths
from pipeline.tracking import Tracker, git_commit

from .history import quick_history
from .micro import measure_inference, measure_pretrain, measure_sam_step, measure_storage, measure_switch
from .report import Row, machine_info, markdown
from .rows import gpu_rows, rows_inference, rows_precision, rows_pretrain, rows_sam_step, rows_storage, rows_switch
from .scaling import SCALING_SIZES, rows_scaling, run_scaling
from .throughput import measure_precision, measure_precision_psnr, this_cpu_peak
from .timing import FULL, QUICK, Settings, cpu_runtime


def collect(params: Params, s: Settings, tmpdir: Path, threads: int = 1) -> list[Row]:
    """Measurements 1-6 on CPU: deterministic algorithms as in the pipeline, ``threads`` torch threads
    (0: params' ``train.threads``, i.e. the pipeline's own setting)."""
    sp = sorted(params.adapt.sparsities)
    pair = sorted({sp[-1], sp[0]}, reverse=True)  # largest and smallest sparsity (0.01, 0.0003 in quick)
    rows: list[Row] = []
    with cpu_runtime(threads or params.train.threads):
        steps = [("SAM step", lambda: rows_sam_step(measure_sam_step(params, pair, s), pair)),
                 ("switch", lambda: rows_switch(measure_switch(params, sp[-1], s, tmpdir), sp[-1])),
                 ("storage", lambda: rows_storage(measure_storage(params, sp, s, tmpdir), sp)),
                 ("pretrain", lambda: rows_pretrain(measure_pretrain(params, s, tmpdir))),
                 ("inference", lambda: rows_inference(measure_inference(params, sp[-1], s), sp[-1])),
                 ("precision", lambda: rows_precision(measure_precision(params, s), measure_precision_psnr(params, s),
                                                      this_cpu_peak(), batch=params.train.batch_size,
                                                      width=params.model.width, threads=torch.get_num_threads()))]
        for what, fn in steps:
            t = time.perf_counter()
            got = fn()
            print(f"benchmark: {what}: {time.perf_counter() - t:.1f} s", flush=True)
            rows += got
    return rows


NOTES = ("Switch: `set_sam_enabled` only flips flags; the merged weight W0 + m⊙v is built eagerly by "
         "`install_sam` and cached (rebuilt only if W0 changes). The judged switch time is therefore "
         "`set_sam_enabled(model, False)` + `set_sam_enabled(model, True)`, after checking that the forwards "
         "that follow rebuild no merged weight and give the right outputs (off: the base model bit for bit; "
         "on: the installed state's); the row also shows the time with every layer's per-forward weight "
         "lookup added after each flip (paid by every forward, switched or not).",
         "Training: every training step above is `pipeline.train.train_one_epoch`, the loop `fit` runs each "
         "epoch (a SAM or full-tuning step is one such epoch over one batch). Pretraining: `fit` as the "
         "pretrain stage calls it (per-epoch checkpoint into a temporary dir, history; without the stage's "
         "per-epoch test evaluation) against `train_one_epoch` alone on the same images: the ratio prices what "
         "`fit` adds to an epoch; a block is one epoch, so the checkpoint weighs more here than in the real "
         "8000-image epochs.",
         "Precision: `train_one_epoch(..., precision=...)` in fp32 and bf16 (autocast of forward and loss; weights, "
         "gradients, Adam state and evaluation fp32) on the same seeded model, random images and batch; on the CPU "
         "also fp32 with channels_last (model converted once, each batch converted in the forward), which the "
         "pipeline uses on CUDA only. Without AVX512-BF16 or AMX (see the flags in the peak row) oneDNN has no "
         "bf16 convolution and PyTorch falls back to its slow reference convolution, so bf16 there is far slower "
         "than fp32, and `train.precision: auto` picks fp32. The PSNR row trains both precisions on the same "
         "builtin thumbnails (training photos, `data.builtin_scales`) with the pretraining seed, learning rate and "
         "batch, then evaluates both in fp32 on thumbnails of the test photos with `evaluate.noise_seed`. "
         "torch.compile is not used (measured: docs/benchmarks.md).",
         "GFLOP/s: multiply-adds per image forward counted by forward hooks over the model's Conv2d and "
         "ConvTranspose2d layers (elementwise PReLU, normalisation and noise left out), × 2 FLOPs × 3 for forward "
         "and backward (the first layer's unneeded input gradient counted too), × measured images/s. Peak = "
         "cores used (the torch threads) × clock × FLOPs per cycle and core from /proc/cpuinfo: the clock is the "
         "highest `cpu MHz` (under a hypervisor the nominal clock; boost not counted, so the real peak may be "
         "higher); two FMA pipes of the widest vector width are assumed (AVX2: 32 fp32 FLOPs/cycle, AVX-512: 64, "
         "half that on Zen 4, whose 512-bit FMAs run as two halves); bf16: 128 with AVX512-BF16 (VDPBF16PS), "
         "1024 with AMX, else the fp32 figure.")


_SECTION = re.compile(r"<!-- (benchmarks\.\w+): begin -->.*?<!-- \1: end -->\n?", re.S)


def kept_sections(path: Path) -> str:
    """The sections other benchmark modules wrote into ``path`` between their markers (GPU, executors):
    a new run of this module rewrites its own part and keeps them."""
    if not path.is_file():
        return ""
    return "".join("\n" + m.group(0).rstrip("\n") + "\n" for m in _SECTION.finditer(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO,
                    help="the project whose params.yaml, dvc.yaml and MLflow store are used (default: this checkout)")
    root = ap.parse_known_args(argv)[0].root
    ap.add_argument("--quick", action="store_true", help="few repeats (tests, smoke runs)")
    ap.add_argument("--out", type=Path, default=root / "reports" / "benchmarks.md")
    ap.add_argument("--scaling", action="store_true", help="also time `dvc repro` from clean at several sizes (slow)")
    ap.add_argument("--sizes", default=",".join(f"{d}x{s}" for d, s in SCALING_SIZES),
                    help="scaling sizes, domains x sparsities, e.g. 2x1,2x2,4x2,4x4")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the CPU measurements; 0: params' train.threads (the pipeline's). "
                         "Default 1: on a shared 2-core machine two OpenMP threads make per-call times swing 2-4x "
                         "(same-code A/A ratios off by up to 20 %%), one thread keeps them within about 1 %%")
    ap.add_argument("--mlflow-db", type=Path, default=root / "mlflow.db",
                    help="where the last real quick execution is read from")
    args = ap.parse_args(argv)
    params = config.load(root / "params.yaml")
    paths = Paths.of(params, root)
    s = QUICK if args.quick else FULL
    start = time.perf_counter()
    info = machine_info("cpu")
    with tempfile.TemporaryDirectory(prefix="zfda-bench-") as tmp:
        tmpdir = Path(tmp)
        rows = collect(params, s, tmpdir, args.threads)
        with cpu_runtime(args.threads or params.train.threads):
            info["threads"] = (f"{torch.get_num_threads()} for the CPU measurements ("
                               + ("--threads default 1; " if args.threads == 1 else "")
                               + f"the pipeline uses train.threads = {params.train.threads}, 0 = torch default "
                               f"{torch.get_num_threads() if args.threads == 0 else os.cpu_count()})")
        gpu, gpu_note = gpu_rows(params, s, tmpdir, sorted({max(params.adapt.sparsities),
                                                             min(params.adapt.sparsities)}, reverse=True))
        rows += gpu
        print(gpu_note, flush=True)
        hist_rows, hist_sec = quick_history(args.mlflow_db, root / "dvc.yaml")
        rows += hist_rows
        sections = [hist_sec]
        if args.scaling:
            sizes = [tuple(int(v) for v in x.lower().split("x")) for x in args.sizes.split(",") if x.strip()]
            sc_rows, sc_sec = rows_scaling(run_scaling(sizes, tmpdir, root))
            rows += sc_rows
            sections.append(sc_sec)
    info["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    info["model"] = (f"SCModel width {params.model.width}, bandwidth ratio {params.model.bandwidth_ratio:g}; "
                     f"batch {params.train.batch_size}; params profile {params.profile}, source {params.data.source}")
    info["settings"] = ("--quick" if args.quick else "default") + f": {s}"
    info["wall_time"] = f"{time.perf_counter() - start:.0f} s"
    info["git_commit"] = git_commit(root)
    text = markdown(rows, info, sections, (gpu_note, *NOTES))
    print(text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + kept_sections(args.out))
    print(f"written: {args.out}", flush=True)
    log(params, paths, args, info, rows)
    return 0


def log(params: Params, paths: Paths, args: argparse.Namespace, info: dict[str, str], rows: list[Row]) -> None:
    """The report's numbers and the report itself in MLflow (child run ``benchmark``)."""
    with Tracker(params, paths, "benchmark") as tracker:
        tracker.set_tags({f"benchmark.{k}": v for k, v in info.items()})
        tracker.log_params({"benchmark.quick": args.quick, "benchmark.scaling": args.scaling})
        metrics: dict[str, float] = {}
        for r in rows:
            metrics.update({k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        tracker.log_metrics(metrics)
        tracker.log_metrics({"benchmark.failed_rows": sum(r.status == "FAIL" for r in rows),
                             "benchmark.passed_rows": sum(r.status == "PASS" for r in rows)})
        tracker.log_artifact(args.out, "benchmark")
