"""Report rows of measurements 1-5 (goals and PASS/FAIL), and the same ratios on the GPU."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from pipeline import config, profile
from pipeline.config import Params

from .micro import measure_inference, measure_pretrain, measure_sam_step
from .report import Row, fmt_t, judge, slug
from .timing import Settings

HEADER_ALLOWANCE = 4096  # bytes of a SAM file not charged against gamma's budget (layer table, digests)


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


GPU_ROW_NAMES = ("GPU SAM train step / full fine-tuning step", "GPU pretraining throughput, fit / train_one_epoch",
                 "GPU inference throughput, stored SAM on / base model")


def gpu_rows(params: Params, s: Settings, tmpdir: Path, sparsities: Sequence[float],
             device: str | None = None) -> tuple[list[Row], str]:
    """The same ratios on CUDA with the paper profile's model width; SKIP rows without CUDA.
    (``device`` runs the same code elsewhere, for tests.)"""
    if device is None and not torch.cuda.is_available():
        return ([Row(n, "no CUDA device", status="SKIP") for n in GPU_ROW_NAMES],
                "GPU rows skipped: torch.cuda.is_available() is False on this machine.")
    dev = torch.device(device or "cuda")
    width = config.parse(profile.render("paper")).model.width
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    prefix = "GPU "
    rows: list[Row] = []
    step = measure_sam_step(params, sparsities, s, device=dev, width=width)
    rows += rows_sam_step(step, sparsities, prefix)
    pre = measure_pretrain(params, s, tmpdir, device=dev, width=width, n_images=8 * s.n_images)
    rows += rows_pretrain(pre, prefix, f" (width {width}, bf16 autocast)")
    rows.append(Row(f"GPU pretraining images/s, width {width}, batch {params.train.batch_size}",
                    f"{pre['fit_images_per_s']:.0f} images/s (fit)", metrics={"gpu_fit_images_per_s": pre["fit_images_per_s"]}))
    rows += rows_inference(measure_inference(params, max(sparsities), s, device=dev, width=width),
                           max(sparsities), prefix)
    return rows, f"GPU rows on {name} (width {width} from profiles/paper.yaml)."
