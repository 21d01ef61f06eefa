"""Report rows of measurements 1-6 (goals and PASS/FAIL), and the same ratios on the GPU."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import torch

from pipeline import config, profile
from pipeline.config import Params

from pipeline.train import resolve_precision

from .micro import measure_inference, measure_pretrain, measure_sam_step
from .report import Row, fmt_t, judge, slug
from .throughput import TRAIN_FLOPS_PER_MAC, Peak, measure_precision
from .timing import Settings

HEADER_ALLOWANCE = 4096  # bytes of a SAM file not charged against gamma's budget (layer table, digests)
BF16_SPEEDUP_GOAL = 1.5  # bf16 pretraining images/s over fp32's on the measured CPU
PSNR_TOLERANCE_DB = 0.1  # ... with the final base PSNR within this of fp32's on the same budget
CHANNELS_LAST_PAYS = 1.05  # the speed-up at which channels_last on the CPU would be worth using


def rows_sam_step(r: Mapping[str, float], sparsities: Sequence[float], prefix: str = "") -> list[Row]:
    out = []
    for g in sparsities:
        ratio = r[f"sam_ratio@{g:g}"]
        key = slug(f"{prefix}sam_step_ratio_{g:g}")
        out.append(Row(f"{prefix}SAM train step / full fine-tuning step, γ={g:g}",
                       f"{fmt_t(r[f'sam_step_s@{g:g}'])} vs {fmt_t(r['full_step_s'])} per step",
                       "≤ 1.15", f"{ratio:.3f}", judge(ratio, "<=", 1.15),
                       {key: ratio, f"{key}.sam_s": r[f"sam_step_s@{g:g}"], f"{key}.full_s": r["full_step_s"]}))
    return out


def rows_switch(r: Mapping[str, float], sparsity: float) -> list[Row]:
    rebuilds, correct = int(r["check_rebuilds"]), bool(r["check_outputs_correct"])
    sw, ready = r["switch_s"], r["switch_ready_s"]
    ok = correct and rebuilds == 0
    checks = (f"{'outputs verified' if correct else 'OUTPUTS WRONG'} (off = base bit for bit, on = installed), "
              f"{rebuilds} merged-weight rebuilds")
    return [
        Row(f"SAM switch off+on (set_sam_enabled ×2), {int(r['layers'])} layers, stored γ={sparsity:g}",
            f"{fmt_t(sw)} median; with each layer's next-forward weight lookup {fmt_t(ready)}; {checks}",
            "≤ 1 ms", f"{sw / 1e-3:.4f} of goal", judge(sw, "<=", 1e-3) if ok else "FAIL",
            {"switch_s": sw, "switch_with_lookup_s": ready, "switch_rebuilds": float(rebuilds),
             "switch_outputs_correct": float(correct)}),
        Row("Base reload from disk (safetensors load_file + load_state_dict) / SAM switch off+on",
            f"{fmt_t(r['reload_s'])} vs {fmt_t(sw)} ({r['base_file_bytes'] / 1024:.0f} KiB file, page cache warm)",
            "≥ 100×", f"{r['reload_over_switch']:.1f}×", judge(r["reload_over_switch"], ">=", 100) if ok else "FAIL",
            {"reload_s": r["reload_s"], "reload_over_switch": r["reload_over_switch"]}),
        Row(f"Swap two domains' stored SAM states (install_sam: validation + copy + eager merge), γ={sparsity:g}",
            f"{fmt_t(r['swap_s'])} per swap vs reload {fmt_t(r['reload_s'])}", "faster than reload (≥ 1×)",
            f"{r['reload_over_swap']:.2f}×", judge(r["reload_over_swap"], ">=", 1.0),
            {"swap_s": r["swap_s"], "reload_over_swap": r["reload_over_swap"]}),
    ]


def rows_storage(r: Mapping[str, float], sparsities: Sequence[float]) -> list[Row]:
    out, fp32 = [], r["base_fp32_bytes"]
    for g in sparsities:
        b, header, budget = r[f"bytes@{g:g}"], r[f"header@{g:g}"], g * fp32
        raw, payload = b / budget, (b - header) / budget
        ok = judge(payload, "<=", 1.0) == "PASS" and header <= HEADER_ALLOWANCE
        key = slug(f"sam_bytes_ratio_{g:g}")
        out.append(Row(f"SAM file bytes / (γ·4N), γ={g:g} (tensor data; header within {HEADER_ALLOWANCE} B)",
                       f"{b:.0f} B = {header:.0f} B header + {b - header:.0f} B data, {int(r[f'kept@{g:g}'])} kept; "
                       f"γ·4N = {budget:.0f} B; whole file {raw:.3f}",
                       f"≤ 1.0, header ≤ {HEADER_ALLOWANCE} B", f"{payload:.3f}", "PASS" if ok else "FAIL",
                       {key: payload, f"{key}.raw": raw, f"{key}.bytes": b, f"{key}.header_bytes": header}))
        pct = r[f"pct@{g:g}"]
        key = slug(f"sam_memory_cost_pct_{g:g}")
        if g <= 0.01:  # claim C2: < 1 % for gamma <= 1 %
            out.append(Row(f"SAM memory cost, γ={g:g} (claim C2)", f"{pct:.3f} % of {fp32:.0f} B fp32 base",
                           "< 1 %", f"{pct:.3f} of goal", judge(pct, "<", 1.0), {key: pct}))
        else:
            out.append(Row(f"SAM memory cost, γ={g:g}", f"{pct:.3f} % of {fp32:.0f} B fp32 base", metrics={key: pct}))
    return out


def rows_pretrain(r: Mapping[str, float], prefix: str = "", detail: str = "") -> list[Row]:
    key = slug(f"{prefix}pretrain_fit_throughput_ratio")
    return [Row(f"{prefix}Pretraining throughput, pipeline.train.fit / train_one_epoch alone{detail}",
                f"{r['fit_images_per_s']:.0f} vs {r['epoch_images_per_s']:.0f} images/s "
                f"({int(r['images'])} images per block, one epoch)", "≥ 0.9", f"{r['throughput_ratio']:.3f}",
                judge(r["throughput_ratio"], ">=", 0.9),
                {key: r["throughput_ratio"], f"{key}.fit_images_per_s": r["fit_images_per_s"],
                 f"{key}.epoch_images_per_s": r["epoch_images_per_s"]})]


def rows_inference(r: Mapping[str, float], sparsity: float, prefix: str = "") -> list[Row]:
    key = slug(f"{prefix}inference_throughput_ratio")
    return [Row(f"{prefix}Inference throughput, stored SAM on (γ={sparsity:g}) / base model",
                f"{r['sam_images_per_s']:.0f} vs {r['base_images_per_s']:.0f} images/s", "≥ 0.9",
                f"{r['throughput_ratio']:.3f}", judge(r["throughput_ratio"], ">=", 0.9),
                {key: r["throughput_ratio"], f"{key}.sam_images_per_s": r["sam_images_per_s"],
                 f"{key}.base_images_per_s": r["base_images_per_s"]})]


def rows_precision(r: Mapping[str, float], psnr: Mapping[str, float] | None, peak: Peak | None, *, batch: int,
                   width: int, threads: int = 1, prefix: str = "") -> list[Row]:
    """bf16/fp32 pretraining images/s (goal 1.5x), channels_last's speed-up (CPU), the PSNR of both
    precisions after one budget, achieved GFLOP/s against the peak of ``threads`` cores."""
    key = slug(f"{prefix}pretrain_bf16_speedup")
    fp, bf, speedup = r["fp32_images_per_s"], r["bf16_images_per_s"], r["bf16_speedup"]
    out = [Row(f"{prefix}Pretraining images/s, train.precision bf16 / fp32 (train_one_epoch, width {width}, "
               f"batch {batch})", f"{bf:.0f} vs {fp:.0f} images/s ({int(r['images'])} images per block)",
               f"≥ {BF16_SPEEDUP_GOAL:g}", f"{speedup:.3f}", judge(speedup, ">=", BF16_SPEEDUP_GOAL),
               {key: speedup, f"{key}.bf16_images_per_s": bf, f"{key}.fp32_images_per_s": fp})]
    if "channels_last_speedup" in r:
        cl = r["channels_last_speedup"]
        used = "used" if cl >= CHANNELS_LAST_PAYS else "not used"
        out.append(Row(f"{prefix}Pretraining images/s, channels_last / contiguous (fp32, CPU; {used} by the pipeline: "
                       f"it would pay at ≥ {CHANNELS_LAST_PAYS:g})",
                       f"{r['fp32_channels_last_images_per_s']:.0f} vs {fp:.0f} images/s", ratio=f"{cl:.3f}",
                       metrics={slug(f"{prefix}pretrain_channels_last_speedup"): cl}))
    if psnr is not None:
        delta = psnr["psnr_bf16"] - psnr["psnr_fp32"]
        spread = psnr["psnr_fp32_reseeded"] - psnr["psnr_fp32"]
        key = slug(f"{prefix}pretrain_bf16_psnr_delta_db")
        out.append(Row(f"{prefix}Base test PSNR after the same budget, bf16 − fp32 ({int(psnr['psnr_epochs'])} epochs × "
                       f"{int(psnr['psnr_images'])} builtin thumbnails, batch {batch}; fp32 evaluation on "
                       f"{int(psnr['psnr_test_images'])} thumbnails of the test photos)",
                       f"{psnr['psnr_bf16']:.3f} vs {psnr['psnr_fp32']:.3f} dB; fp32 with the next shuffle and noise "
                       f"seed: {psnr['psnr_fp32_reseeded']:.3f} dB ({spread:+.3f} dB, this budget's run-to-run spread); "
                       f"training {psnr['psnr_bf16_images_per_s']:.0f} vs {psnr['psnr_fp32_images_per_s']:.0f} images/s",
                       f"within ±{PSNR_TOLERANCE_DB:g} dB", f"{delta:+.3f} dB", judge(abs(delta), "<=", PSNR_TOLERANCE_DB),
                       {key: delta, f"{key}.bf16_db": psnr["psnr_bf16"], f"{key}.fp32_db": psnr["psnr_fp32"],
                        f"{key}.fp32_reseeded_delta_db": spread}))
    if peak is not None:
        macs = r["macs_per_image"]
        for p in ("fp32", "bf16"):
            achieved = r[f"{p}_images_per_s"] * macs * TRAIN_FLOPS_PER_MAC / 1e9
            top = peak.gflops(p, threads)
            isa = peak.bf16_isa if p == "bf16" else peak.fp32_isa
            key = slug(f"{prefix}pretrain_{p}_gflops")
            out.append(Row(f"{prefix}Achieved GFLOP/s, {p} pretraining / the CPU's {p} peak on {threads} core(s)",
                           f"{achieved:.1f} vs {top:.1f} GFLOP/s ({macs / 1e6:.2f} M multiply-adds per image forward "
                           f"× {TRAIN_FLOPS_PER_MAC} FLOPs for forward + backward; peak {threads} × {peak.ghz:.2f} GHz × "
                           f"{peak.bf16_per_cycle if p == 'bf16' else peak.fp32_per_cycle} FLOPs/cycle, {isa})",
                           ratio=f"{achieved / top:.3f}", metrics={key: achieved, f"{key}.peak": top}))
    return out


GPU_ROW_NAMES = ("GPU SAM train step / full fine-tuning step", "GPU pretraining throughput, fit / train_one_epoch",
                 "GPU inference throughput, stored SAM on / base model", "GPU pretraining images/s, bf16 / fp32")


def gpu_rows(params: Params, s: Settings, tmpdir: Path, sparsities: Sequence[float],
             device: str | None = None) -> tuple[list[Row], str]:
    """The same ratios on CUDA with the paper profile's model width; SKIP rows without CUDA.
    (``device`` runs the same code elsewhere, for tests.)"""
    if device is None and not torch.cuda.is_available():
        return ([Row(n, "no CUDA device", status="SKIP") for n in GPU_ROW_NAMES],
                "GPU rows skipped: torch.cuda.is_available() is False on this machine.")
    dev = torch.device(device or "cuda")
    paper = config.parse(profile.render("paper"))
    width, precision = paper.model.width, resolve_precision(paper.train.precision, dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    prefix = "GPU "
    rows: list[Row] = []
    step = measure_sam_step(params, sparsities, s, device=dev, width=width, precision=precision)
    rows += rows_sam_step(step, sparsities, prefix)
    pre = measure_pretrain(params, s, tmpdir, device=dev, width=width, n_images=8 * s.n_images, precision=precision)
    rows += rows_pretrain(pre, prefix, f" (width {width}, {precision})")
    rows.append(Row(f"GPU pretraining images/s, width {width}, batch {params.train.batch_size}",
                    f"{pre['fit_images_per_s']:.0f} images/s (fit)", metrics={"gpu_fit_images_per_s": pre["fit_images_per_s"]}))
    rows += rows_inference(measure_inference(params, max(sparsities), s, device=dev, width=width),
                           max(sparsities), prefix)
    gpu_s = dataclasses.replace(s, precision_repeats=s.repeats, precision_images=8 * s.n_images)  # bf16 is fast here
    rows += rows_precision(measure_precision(params, gpu_s, device=dev, width=width), None, None,
                           batch=params.train.batch_size, width=width, prefix=prefix)
    return rows, (f"GPU rows on {name} (width {width} from profiles/paper.yaml; training in {precision}, "
                  f"its train.precision = {paper.train.precision}).")
