"""Benchmarks: ``python -m pipeline.benchmark [--quick] [--out reports/benchmarks.md] [--scaling]``.

Prints and writes a Markdown report (machine, torch, threads, device, date; one table row per
measurement: name, measured value, goal, ratio, PASS/FAIL) and logs the same numbers to MLflow
(child run ``benchmark``, the report as an artifact). Every measurement uses the model of
``params.yaml`` (``pipeline.train.build_model``), batch ``train.batch_size``, seeded random 32x32
images:

1. SAM training step / full fine-tuning step (same model, batch, Adam; SAM with the two Adam groups
   of ``pipeline/methods/sam.py``) at the largest and smallest sparsity of ``adapt.sparsities``.
2. SAM switch off+on on a model with an installed stored state (flags, plus the weight lookup the
   next forward does, i.e. everything that makes that forward correct); against reloading the
   base ``state_dict`` from disk; swapping two domains' stored states.
3. Stored SAM bytes / (gamma * fp32 base bytes) at every sparsity (state from a short real
   training): its tensor data judged against the budget, its safetensors header (layer table,
   digests) allowed up to 4 KiB; the whole-file ratio and the memory cost % beside it.
4. ``pipeline.train.fit`` (as the pretrain stage calls it) against a bare PyTorch loop.
5. Inference with a stored SAM switched on against the base model.
6. ``--scaling``: ``dvc repro`` from clean of a tiny config at several pipeline sizes in a
   temporary copy of the working tree, a least-squares fit, and (always) the last real quick
   execution's per-stage durations read from ``mlflow.db``.
7. With CUDA: the step, pretraining and inference ratios on the GPU (paper profile's width).

Timing: the machine is shared (2 cores, other jobs), so no absolute number is trusted alone.
Candidates run in interleaved blocks whose order rotates every repeat (A B, B A, B A, A B ...),
so load changes hit both sides; a ratio is the median over repeats of the per-repeat ratio, and
times are medians. CPU measurements run with one torch thread by default (``--threads``): with two
OpenMP threads on two shared cores, per-call times swing 2-4x and even same-code A/A ratios came out
up to 20 % off, against about 1 % with one thread. Tests check correctness only, never speed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from . import config, profile
from .config import Params
from .paths import REPO as ROOT
from .paths import Paths
from .sam import (attach_sam, base_fingerprint, install_sam, memory_cost, sam_layers, sam_parameters, sam_state,
                  save_sam, set_sam_enabled)
from .train import build_model, fit

HEADER_ALLOWANCE = 4096  # bytes of a SAM file not charged against gamma's budget (layer table, digests)
QUICK_GOAL_S = 600.0     # the quick profile's whole pipeline on 2 CPU cores (profiles/quick.yaml)
SCALING_SIZES = ((2, 1), (2, 2), (4, 2), (4, 4))
# The shrunken sizes of tests/conftest.py: every stage runs in about a second of compute, so the
# scaling runs measure the pipeline's fixed costs (process start, imports, DVC, MLflow) per stage.
TINY = {
    "data": {"n_pretrain": 64, "n_base_test": 32, "builtin_scales": [0.25]},
    "domains": {"n_train": 32, "n_test": 16, "preview_count": 2},
    "model": {"width": 4},
    "train": {"batch_size": 16, "device": "cpu"},
    "pretrain": {"epochs": 2},
    "adapt": {"epochs": 1},
    "tuning": {"retune_epochs": 1},
    "equalizer": {"epochs": 1},
    "evaluate": {"reconstructions": 2},
}


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    repeats: int       # interleaved blocks per candidate (step, throughput and inference ratios)
    inner: int         # calls per block for step-level measurements
    fast_repeats: int  # blocks for the microsecond-scale switch measurement
    fast_inner: int    # calls per block there
    slow_inner: int    # calls per block for reloads and swaps (milliseconds)
    n_images: int      # images per pretraining block (one fit epoch)
    train_steps: int   # SAM training steps before a state is frozen and stored


FULL = Settings(repeats=15, inner=3, fast_repeats=21, fast_inner=300, slow_inner=5, n_images=1280, train_steps=5)
QUICK = Settings(repeats=3, inner=1, fast_repeats=3, fast_inner=10, slow_inner=2, n_images=48, train_steps=2)


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Mapping[str, Callable[[], object]], *, repeats: int, inner: int | Mapping[str, int] = 1,
                device: torch.device | str | None = None, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one number per repeat (a block of ``inner`` calls).

    The block order rotates and reverses across repeats (for two candidates: AB BA BA AB ...), so a
    slow phase of the machine is shared; the garbage collector is off inside the timed blocks.
    """
    names = list(fns)
    reps = {n: int(inner[n] if isinstance(inner, Mapping) else inner) for n in names}
    for n in names:
        for _ in range(warmup):
            fns[n]()
    _sync(device)
    out: dict[str, list[float]] = {n: [] for n in names}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            order = names[k:] + names[:k]
            if (r // len(names)) % 2:
                order.reverse()
            for n in order:
                _sync(device)
                t = time.perf_counter()
                for _ in range(reps[n]):
                    fns[n]()
                _sync(device)
                out[n].append((time.perf_counter() - t) / reps[n])
    finally:
        if gc_was:
            gc.enable()
    return out


def paired_ratio(times: Mapping[str, Sequence[float]], num: str, den: str) -> float:
    """Median over repeats of num/den measured in the same repeat (side by side)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def med(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


@contextlib.contextmanager
def cpu_runtime(threads: int = 0):
    """The CPU conditions of the pipeline (``setup_runtime``): deterministic algorithms, params'
    thread count (0: torch's default); restored afterwards."""
    det, n = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------- fixtures
def make_model(params: Params, *, width: int | None = None, seed: int = 0, device="cpu") -> nn.Module:
    """The default model of ``params`` (optionally another width), seeded."""
    if width is not None:
        params = params.model_copy(update={"model": params.model.model_copy(update={"width": width})})
    torch.manual_seed(seed)
    return build_model(params).to(device)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 NCHW 32x32 RGB, what ``fit`` takes."""
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _as_float(images: torch.Tensor, device) -> torch.Tensor:
    """The bare conversion every loop needs (channels_last on CUDA, as ``pipeline.train.to_float``)."""
    device = torch.device(device)
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _generator(device, seed: int) -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


def sam_optimizer(model: nn.Module, params: Params) -> torch.optim.Optimizer:
    """Adam with the two groups of pipeline/methods/sam.py (scores, values)."""
    scores, values = sam_parameters(model)
    return torch.optim.Adam([{"params": scores, "lr": params.adapt.score_lr},
                             {"params": values, "lr": params.adapt.value_lr}])


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, gen: torch.Generator) -> float:
    """One step exactly as the inner loop of ``fit`` does it."""
    dev = x.device.type
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        loss = nn.functional.mse_loss(model(x, gen).float(), x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def trained_sam(params: Params, base: nn.Module, sparsity: float, *, steps: int, seed: int = 0) -> nn.Module:
    """A copy of ``base`` with a training-mode SAM after ``steps`` real Adam steps on random images."""
    model = attach_sam(copy.deepcopy(base), sparsity, params.adapt.allocation)
    opt = sam_optimizer(model, params)
    device = next(base.parameters()).device
    gen = _generator(device, seed)
    images = random_images(params.train.batch_size * steps, seed=1000 + seed)
    for i in range(steps):
        x = _as_float(images[i * params.train.batch_size:(i + 1) * params.train.batch_size], device)
        _train_step(model, opt, x, gen)
    return model


# ---------------------------------------------------------------------------------- measurements
def measure_sam_step(params: Params, sparsities: Sequence[float], s: Settings, *, device="cpu",
                     width: int | None = None) -> dict[str, float]:
    """Seconds per training step, full fine-tuning vs SAM at each sparsity, and the paired ratios."""
    base = make_model(params, width=width, device=device)
    x = _as_float(random_images(params.train.batch_size, seed=1), device)
    cands: dict[str, tuple[nn.Module, torch.optim.Optimizer, torch.Generator]] = {}
    full = copy.deepcopy(base).requires_grad_(True)
    cands["full"] = (full, torch.optim.Adam(full.parameters(), lr=params.tuning.lr), _generator(device, 0))
    for g in sparsities:
        m = attach_sam(copy.deepcopy(base), g, params.adapt.allocation)
        cands[f"sam@{g:g}"] = (m, sam_optimizer(m, params), _generator(device, 0))
    fns = {k: (lambda c=c: _train_step(c[0], c[1], x, c[2])) for k, c in cands.items()}
    t = interleaved(fns, repeats=s.repeats, inner=s.inner, device=device, warmup=2)
    out = {"full_step_s": med(t["full"])}
    for g in sparsities:
        out[f"sam_step_s@{g:g}"] = med(t[f"sam@{g:g}"])
        out[f"sam_ratio@{g:g}"] = paired_ratio(t, f"sam@{g:g}", "full")
    return out


def measure_switch(params: Params, sparsity: float, s: Settings, tmpdir: Path) -> dict[str, float]:
    """Switch off+on, reload of the base from disk, swap of two domains' stored states (CPU).

    The merged weight W0 + m*v is built eagerly by ``install`` and cached; a switch flips flags
    only, and each layer's next forward looks the weight up (the base tensor, or the cached merged
    copy, rebuilt only when W0 changed). So ``switch_s`` (``set_sam_enabled`` off then on) is the
    whole cost of a switch once it is verified that no merged weight is rebuilt afterwards
    (``rebuilds``, counted over all the switching and the forwards that follow: must be 0) and that
    the outputs are right (off: the base model bit for bit; on: the installed state's).
    ``switch_ready_s`` adds the per-forward weight lookup of every layer after each flip (paid by
    every forward, switched or not): an upper bound on what a switch can cost the next forward.
    """
    base = make_model(params).eval()
    state_a = sam_state(trained_sam(params, base, sparsity, steps=s.train_steps, seed=0))
    state_b = sam_state(trained_sam(params, base, sparsity, steps=s.train_steps, seed=1))
    model = install_sam(copy.deepcopy(base), state_a).eval()
    layers = list(sam_layers(model).values())
    x = _as_float(random_images(params.train.batch_size, seed=2), "cpu")

    def out(m):
        with torch.no_grad():
            return m(x, _generator("cpu", 7))

    on_ref, base_ref = out(model), out(base)
    ptrs = [m.effective_weight().data_ptr() for m in layers]

    def switch():
        set_sam_enabled(model, False)
        set_sam_enabled(model, True)

    def switch_ready():
        set_sam_enabled(model, False)
        for m in layers:
            m.effective_weight()
        set_sam_enabled(model, True)
        for m in layers:
            m.effective_weight()

    path = tmpdir / "base.safetensors"
    from safetensors.torch import load_file, save_file
    save_file({k: v.detach().contiguous() for k, v in base.state_dict().items()}, str(path))
    plain = make_model(params, seed=1)

    def reload():
        plain.load_state_dict(load_file(str(path)))

    other = install_sam(copy.deepcopy(base), state_a)
    turn = [state_b, state_a]

    def swap():
        install_sam(other, turn[0])
        turn.reverse()

    fast = interleaved({"switch": switch, "switch_ready": switch_ready}, repeats=s.fast_repeats,
                       inner=s.fast_inner)
    slow = interleaved({"switch": switch, "reload": reload, "swap": swap}, repeats=s.repeats,
                       inner={"switch": s.fast_inner, "reload": s.slow_inner, "swap": 2 * s.slow_inner})
    set_sam_enabled(model, False)
    off_ok = torch.equal(out(model), base_ref)
    set_sam_enabled(model, True)
    on_ok = torch.equal(out(model), on_ref) and not torch.equal(on_ref, base_ref)
    rebuilds = sum(m.effective_weight().data_ptr() != p for m, p in zip(layers, ptrs))
    return {"switch_s": med(fast["switch"]), "switch_ready_s": med(fast["switch_ready"]),
            "reload_s": med(slow["reload"]), "swap_s": med(slow["swap"]),
            "reload_over_switch": paired_ratio(slow, "reload", "switch"),
            "reload_over_swap": paired_ratio(slow, "reload", "swap"),
            "layers": float(len(layers)), "base_file_bytes": float(path.stat().st_size),
            # checks, not measurements (0 is the right number of rebuilds)
            "check_rebuilds": float(rebuilds), "check_outputs_correct": float(off_ok and on_ok)}


def measure_storage(params: Params, sparsities: Sequence[float], s: Settings, tmpdir: Path) -> dict[str, float]:
    """Stored SAM bytes after a short real training at each sparsity, against gamma * 4N."""
    base = make_model(params)
    fp = base_fingerprint(base)
    n_params = sum(p.numel() for p in {id(p): p for p in base.parameters()}.values())
    out: dict[str, float] = {"base_fp32_bytes": 4.0 * n_params}
    for g in sparsities:
        model = trained_sam(params, base, g, steps=s.train_steps, seed=3)
        state = sam_state(model)
        path = tmpdir / f"sam-{g:g}.safetensors"
        save_sam(path, state, sparsity=g, allocation=params.adapt.allocation, base_fingerprint=fp)
        cost = memory_cost(path, model)
        out[f"bytes@{g:g}"] = float(cost["bytes"])
        out[f"pct@{g:g}"] = float(cost["pct"])
        out[f"kept@{g:g}"] = float(state.kept())
        out[f"header@{g:g}"] = float(safetensors_header_bytes(path))
    return out


def safetensors_header_bytes(path: str | os.PathLike) -> int:
    """Bytes before a safetensors file's tensor data: the 8-byte length and the JSON header it counts."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) != 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    return 8 + int.from_bytes(head, "little")


def measure_pretrain(params: Params, s: Settings, tmpdir: Path, *, device="cpu", width: int | None = None,
                     n_images: int | None = None) -> dict[str, float]:
    """``fit`` as the pretrain stage calls it (one epoch per block, its per-epoch checkpoint into
    ``tmpdir``; no ``on_epoch`` evaluation) against a bare loop, same model, data, batch, images."""
    n = n_images or s.n_images
    images = random_images(n, seed=4)
    bs = params.train.batch_size
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    for k in ("fit", "bare"):
        m = make_model(params, width=width, device=device, seed=params.pretrain.seed)
        runs[k] = (m, torch.optim.Adam(m.parameters(), lr=params.pretrain.lr))
    calls = [0]

    def project_loop():
        model, opt = runs["fit"]
        calls[0] += 1
        ckpt = tmpdir / f"pretrain-{calls[0]}.pt"  # fresh each call: fit must not resume a finished run
        fit(model, opt, images, lambda x, gen: model(x, gen), epochs=1, batch_size=bs,
            seed=params.pretrain.seed + calls[0], device=torch.device(device), checkpoint=ckpt,
            key=f"benchmark-{calls[0]}", desc="benchmark fit")
        ckpt.unlink(missing_ok=True)

    def bare_loop():
        model, opt = runs["bare"]
        model.train()
        gen = _generator(device, calls[0])
        amp = torch.device(device).type == "cuda"  # the same numerics as fit: bf16 autocast on CUDA
        for i in range(0, n, bs):
            x = _as_float(images[i:i + bs], device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
                loss = nn.functional.mse_loss(model(x, gen).float(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t = interleaved({"fit": project_loop, "bare": bare_loop}, repeats=s.repeats, device=device, warmup=1)
    return {"fit_s": med(t["fit"]), "bare_s": med(t["bare"]), "images": float(n),
            "fit_images_per_s": n / med(t["fit"]), "bare_images_per_s": n / med(t["bare"]),
            "throughput_ratio": paired_ratio(t, "bare", "fit")}


def measure_inference(params: Params, sparsity: float, s: Settings, *, device="cpu",
                      width: int | None = None) -> dict[str, float]:
    """Forward (no grad) of the base model against the same base with a stored SAM switched on."""
    base = make_model(params, width=width, device=device).eval()
    state = sam_state(trained_sam(params, base, sparsity, steps=s.train_steps, seed=5))
    served = install_sam(copy.deepcopy(base), state).eval()
    set_sam_enabled(served, True)
    x = _as_float(random_images(params.train.batch_size, seed=6), device)
    gens = {"base": _generator(device, 0), "sam": _generator(device, 0)}

    def fwd(m, k):
        with torch.no_grad():
            m(x, gens[k])

    t = interleaved({"base": lambda: fwd(base, "base"), "sam": lambda: fwd(served, "sam")}, repeats=s.repeats,
                    inner=max(2, 2 * s.inner), device=device, warmup=2)
    return {"base_s": med(t["base"]), "sam_s": med(t["sam"]),
            "base_images_per_s": params.train.batch_size / med(t["base"]),
            "sam_images_per_s": params.train.batch_size / med(t["sam"]),
            "throughput_ratio": paired_ratio(t, "base", "sam")}


# ------------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    name: str
    measured: str
    goal: str = "—"
    ratio: str = "—"
    status: str = "INFO"  # PASS, FAIL, INFO (no goal), SKIP
    metrics: dict[str, float] = field(default_factory=dict)


def _fmt_t(sec: float) -> str:
    if sec < 1e-3:
        return f"{sec * 1e6:.1f} µs"
    if sec < 1:
        return f"{sec * 1e3:.2f} ms"
    return f"{sec:.1f} s"


def _judge(value: float, op: str, limit: float) -> str:
    ok = value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit
    return "PASS" if ok and math.isfinite(value) else "FAIL"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def rows_sam_step(r: Mapping[str, float], sparsities: Sequence[float], prefix: str = "") -> list[Row]:
    out = []
    for g in sparsities:
        ratio = r[f"sam_ratio@{g:g}"]
        key = _slug(f"{prefix}sam_step_ratio_{g:g}")
        out.append(Row(f"{prefix}SAM train step / full fine-tuning step, γ={g:g}",
                       f"{_fmt_t(r[f'sam_step_s@{g:g}'])} vs {_fmt_t(r['full_step_s'])} per step",
                       "≤ 1.15", f"{ratio:.3f}", _judge(ratio, "<=", 1.15),
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
            f"{_fmt_t(sw)} median; with each layer's next-forward weight lookup {_fmt_t(ready)}; {checks}",
            "≤ 1 ms", f"{sw / 1e-3:.4f} of goal", _judge(sw, "<=", 1e-3) if ok else "FAIL",
            {"switch_s": sw, "switch_with_lookup_s": ready, "switch_rebuilds": float(rebuilds),
             "switch_outputs_correct": float(correct)}),
        Row("Base reload from disk (safetensors load_file + load_state_dict) / SAM switch off+on",
            f"{_fmt_t(r['reload_s'])} vs {_fmt_t(sw)} ({r['base_file_bytes'] / 1024:.0f} KiB file, page cache warm)",
            "≥ 100×", f"{r['reload_over_switch']:.1f}×", _judge(r["reload_over_switch"], ">=", 100) if ok else "FAIL",
            {"reload_s": r["reload_s"], "reload_over_switch": r["reload_over_switch"]}),
        Row(f"Swap two domains' stored SAM states (install_sam: validation + copy + eager merge), γ={sparsity:g}",
            f"{_fmt_t(r['swap_s'])} per swap vs reload {_fmt_t(r['reload_s'])}", "faster than reload (≥ 1×)",
            f"{r['reload_over_swap']:.2f}×", _judge(r["reload_over_swap"], ">=", 1.0),
            {"swap_s": r["swap_s"], "reload_over_swap": r["reload_over_swap"]}),
    ]


def rows_storage(r: Mapping[str, float], sparsities: Sequence[float]) -> list[Row]:
    out, fp32 = [], r["base_fp32_bytes"]
    for g in sparsities:
        b, header, budget = r[f"bytes@{g:g}"], r[f"header@{g:g}"], g * fp32
        raw, payload = b / budget, (b - header) / budget
        ok = _judge(payload, "<=", 1.0) == "PASS" and header <= HEADER_ALLOWANCE
        key = _slug(f"sam_bytes_ratio_{g:g}")
        out.append(Row(f"SAM file bytes / (γ·4N), γ={g:g} (tensor data; header within {HEADER_ALLOWANCE} B)",
                       f"{b:.0f} B = {header:.0f} B header + {b - header:.0f} B data, {int(r[f'kept@{g:g}'])} kept; "
                       f"γ·4N = {budget:.0f} B; whole file {raw:.3f}",
                       f"≤ 1.0, header ≤ {HEADER_ALLOWANCE} B", f"{payload:.3f}", "PASS" if ok else "FAIL",
                       {key: payload, f"{key}.raw": raw, f"{key}.bytes": b, f"{key}.header_bytes": header}))
        pct = r[f"pct@{g:g}"]
        key = _slug(f"sam_memory_cost_pct_{g:g}")
        if g <= 0.01:  # claim C2: < 1 % for gamma <= 1 %
            out.append(Row(f"SAM memory cost, γ={g:g} (claim C2)", f"{pct:.3f} % of {fp32:.0f} B fp32 base",
                           "< 1 %", f"{pct:.3f} of goal", _judge(pct, "<", 1.0), {key: pct}))
        else:
            out.append(Row(f"SAM memory cost, γ={g:g}", f"{pct:.3f} % of {fp32:.0f} B fp32 base", metrics={key: pct}))
    return out


def rows_pretrain(r: Mapping[str, float], prefix: str = "", detail: str = "") -> list[Row]:
    key = _slug(f"{prefix}pretrain_throughput_ratio")
    return [Row(f"{prefix}Pretraining throughput, pipeline.train.fit / bare loop{detail}",
                f"{r['fit_images_per_s']:.0f} vs {r['bare_images_per_s']:.0f} images/s "
                f"({int(r['images'])} images per block)", "≥ 0.9", f"{r['throughput_ratio']:.3f}",
                _judge(r["throughput_ratio"], ">=", 0.9),
                {key: r["throughput_ratio"], f"{key}.fit_images_per_s": r["fit_images_per_s"],
                 f"{key}.bare_images_per_s": r["bare_images_per_s"]})]


def rows_inference(r: Mapping[str, float], sparsity: float, prefix: str = "") -> list[Row]:
    key = _slug(f"{prefix}inference_throughput_ratio")
    return [Row(f"{prefix}Inference throughput, stored SAM on (γ={sparsity:g}) / base model",
                f"{r['sam_images_per_s']:.0f} vs {r['base_images_per_s']:.0f} images/s", "≥ 0.9",
                f"{r['throughput_ratio']:.3f}", _judge(r["throughput_ratio"], ">=", 0.9),
                {key: r["throughput_ratio"], f"{key}.sam_images_per_s": r["sam_images_per_s"],
                 f"{key}.base_images_per_s": r["base_images_per_s"]})]


GPU_ROW_NAMES = ("GPU SAM train step / full fine-tuning step", "GPU pretraining throughput, fit / bare loop",
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
    rows += rows_pretrain(pre, prefix, f" (width {width}, bf16 autocast in both)")
    rows.append(Row(f"GPU pretraining images/s, width {width}, batch {params.train.batch_size}",
                    f"{pre['fit_images_per_s']:.0f} images/s (fit)", metrics={"gpu_fit_images_per_s": pre["fit_images_per_s"]}))
    rows += rows_inference(measure_inference(params, max(sparsities), s, device=dev, width=width),
                           max(sparsities), prefix)
    return rows, f"GPU rows on {name} (width {width} from profiles/paper.yaml)."


# ----------------------------------------------------------------------------------- MLflow history
def _read_runs(db: Path) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        runs = {r[0]: {"name": r[1], "status": r[2], "start": r[3], "end": r[4]} for r in con.execute(
            "SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id "
            "WHERE e.name = 'zfda-bench' AND r.lifecycle_stage = 'active'")}
        tags: dict[str, dict[str, str]] = {}
        for run, key, value in con.execute("SELECT run_uuid, key, value FROM tags"):
            if run in runs:
                tags.setdefault(run, {})[key] = value
    finally:
        con.close()
    return runs, tags


def _with_siblings(src: Path) -> str:
    """A stage module's source plus that of the sibling modules it imports from (``network.py`` runs
    ``ablate.network_main``, which opens the Tracker)."""
    text = src.read_text()
    for name in re.findall(r"^from \.(\w+) import", text, flags=re.M):
        sibling = src.with_name(f"{name}.py")
        if sibling.is_file():
            text += sibling.read_text()
    return text


def expected_cells(raw: dict, dvc_yaml: Path) -> tuple[list[str], list[str]]:
    """(tracked, untracked): the MLflow child-run names the pipeline's stages would have for params
    ``raw`` (a stage, or ``stage[cell]`` for a matrix stage: values joined by '-', floats as in
    ``cell_name``), and the stages whose module never opens a ``Tracker`` (no MLflow run to read)."""
    import itertools
    import yaml
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})

    def lookup(ref):
        m = re.fullmatch(r"\$\{([^}]+)\}", str(ref).strip())
        if not m:
            return ref
        v = raw
        for part in m.group(1).split("."):
            v = v[part]
        return v

    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    names, untracked = [], []
    for stage, spec in stages.items():
        cmd = re.search(r"-m\s+([\w.]+)", str(spec.get("cmd", ""))) if isinstance(spec, dict) else None
        src = dvc_yaml.parent / (cmd.group(1).replace(".", "/") + ".py") if cmd else None
        if src is not None and src.is_file() and "Tracker(" not in _with_siblings(src):
            untracked.append(stage)
            continue
        if isinstance(spec, dict) and "matrix" in spec:
            axes = [list(lookup(v)) for v in spec["matrix"].values()]
            names += [f"{stage}[{'-'.join(fmt(v) for v in combo)}]" for combo in itertools.product(*axes)]
        else:
            names.append(stage)
    return names, untracked


def mlflow_quick_history(db: Path, expected: Sequence[str] | None = None,
                         now_ms: float | None = None) -> dict | None:
    """The latest pipeline execution of the quick profile in ``db`` (parent run + stage child runs)
    and a composite estimate of a full run: each expected stage cell's latest finished duration,
    plus the latest execution's median gap between consecutive stages (process start, DVC)."""
    if not db.is_file():
        return None
    runs, tags = _read_runs(db)
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    children: dict[str, list[str]] = {}
    for rid, t in tags.items():
        if "mlflow.parentRunId" in t and t.get("stage", "") not in ("", "benchmark"):
            children.setdefault(t["mlflow.parentRunId"], []).append(rid)
    parents = [p for p in children if p in runs and tags.get(p, {}).get("profile") == "quick"]
    if not parents:
        return None
    latest = max(parents, key=lambda p: runs[p]["start"] or 0)
    source = tags[latest].get("data.source", "?")

    def dur(rid):
        r = runs[rid]
        return ((r["end"] if r["end"] else now_ms) - r["start"]) / 1000

    def ordered(p):
        return sorted(children[p], key=lambda k: runs[k]["start"])

    kids = ordered(latest)
    stages = [{"name": runs[k]["name"], "status": runs[k]["status"], "seconds": dur(k),
               "offset": (runs[k]["start"] - runs[kids[0]]["start"]) / 1000} for k in kids]
    # gaps between consecutive stage runs of one execution (process start, imports, DVC), all executions
    gaps = [(runs[b]["start"] - runs[a]["end"]) / 1000 for p in parents for a, b in zip(ordered(p), ordered(p)[1:])
            if runs[a]["end"] and runs[b]["start"] >= runs[a]["end"]]
    span = (max((runs[k]["end"] or now_ms) for k in kids) - runs[kids[0]]["start"]) / 1000
    # composite over every quick execution of the same data source
    best: dict[str, tuple[int, float]] = {}
    for p in parents:
        if tags[p].get("data.source") != source:
            continue
        for k in children[p]:
            r = runs[k]
            if r["status"] == "FINISHED" and r["end"] and r["start"] > best.get(r["name"], (-1, 0))[0]:
                best[r["name"]] = (r["start"], dur(k))
    wanted = list(expected) if expected else sorted(best)
    found = [n for n in wanted if n in best]
    gap = statistics.median(gaps) if gaps else 0.0
    composite = sum(best[n][1] for n in found) + gap * len(found)
    return {"execution": tags[latest].get("zfda.execution", latest), "parent_status": runs[latest]["status"],
            "data_source": source, "stages": stages, "span_s": span, "median_gap_s": gap,
            "composite_s": composite, "expected": len(wanted), "found": len(found),
            "missing": [n for n in wanted if n not in best]}


def rows_history(h: dict | None, db: Path) -> tuple[list[Row], str]:
    if h is None:
        return [Row("Quick pipeline wall time from mlflow.db", f"no quick-profile execution in {db}", status="SKIP")], ""
    done = all(s["status"] == "FINISHED" for s in h["stages"])
    complete = done and h["parent_status"] == "FINISHED" and not h["missing"]
    n = len(h["stages"])
    rows = [Row(f"Quick pipeline ({h['data_source']}), latest execution {h['execution']}: {n} stage runs, "
                f"{'finished' if done else 'still running'}",
                f"{h['span_s']:.0f} s first stage start → last stage end"
                + ("" if complete else " (partial: DVC re-ran only changed stages)"),
                "≤ 600 s", f"{h['span_s'] / QUICK_GOAL_S:.3f} of goal",
                _judge(h["span_s"], "<=", QUICK_GOAL_S) if complete else "INFO", {"quick_latest_span_s": h["span_s"]})]
    miss = h["missing"]
    rows.append(Row(f"Quick pipeline ({h['data_source']}), composite: latest finished run of each stage cell "
                    f"+ {h['median_gap_s']:.1f} s median inter-stage gap",
                    f"{h['composite_s']:.0f} s over {h['found']}/{h['expected']} stage cells"
                    + (f"; no finished run yet: {', '.join(miss[:6])}{' …' if len(miss) > 6 else ''}" if miss else "")
                    + (f"; not tracked by design (excluded): {', '.join(h['untracked'])}" if h.get("untracked") else ""),
                    "≤ 600 s", f"{h['composite_s'] / QUICK_GOAL_S:.3f} of goal",
                    _judge(h["composite_s"], "<=", QUICK_GOAL_S) if not miss else "INFO",
                    {"quick_composite_s": h["composite_s"]}))
    lines = [f"### Latest quick-profile execution in mlflow.db ({h['execution']}, parent {h['parent_status']})", "",
             "| Stage | Start offset (s) | Duration (s) | Status |", "|---|---:|---:|---|"]
    lines += [f"| {s['name']} | {s['offset']:.0f} | {s['seconds']:.1f} | {s['status']} |" for s in h["stages"]]
    lines += ["", "Durations are the stage's MLflow child run (from the Tracker's start, after the process's "
              "imports and data loading, to its end); the inter-stage gap covers process start and DVC."]
    return rows, "\n".join(lines)


# ------------------------------------------------------------------------------------------ scaling
_STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def stage_durations(events: Sequence[tuple[float, str]], end: float) -> dict[str, float]:
    """Per-stage seconds from timestamped ``dvc repro`` output lines: from a stage's 'Running stage'
    line to the next one (or the end), i.e. the stage's command plus DVC's bookkeeping of its outputs."""
    starts = [(t, m.group(1)) for t, line in events if (m := _STAGE_LINE.search(line))]
    return {name: (starts[i + 1][0] if i + 1 < len(starts) else end) - t for i, (t, name) in enumerate(starts)}


def least_squares(sizes: Sequence[tuple[int, int]], totals: Sequence[float]) -> tuple[float, float, float]:
    """total ≈ a + b·(domains·sparsities) + c·domains (ordinary least squares)."""
    import numpy as np
    X = np.array([[1.0, d * s, d] for d, s in sizes])
    coef, *_ = np.linalg.lstsq(X, np.asarray(totals, dtype=float), rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def _ignore(src_root: Path):
    top = {"build", ".checkpoints", "mlflow.db", "mlartifacts", "mlruns", "reports", "data", ".git", ".benchmarks",
           ".pytest_cache", "dvc.lock"}

    def ignore(d, names):
        d = Path(d)
        skip = {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith((".tmp", ".pyc"))}
        if d == src_root:
            skip |= {n for n in names if n in top or n.startswith("mlflow.db")}
        if d == src_root / ".dvc":
            skip |= {n for n in names if n in ("cache", "tmp")}
        return skip
    return ignore


def scaling_params(d: int, s: int) -> dict:
    """The quick profile (builtin source) shrunk to TINY, with d domains and s sparsity ratios."""
    raw = profile.render("quick", "builtin")
    for block, values in TINY.items():
        raw[block].update(copy.deepcopy(values))
    quick_domains = list(raw["domains"]["names"])
    keep = [x for x in (raw.get("ablate", {}).get("domains") or []) if x in quick_domains][:1]
    names = (keep + [x for x in quick_domains if x not in keep])[:d]
    raw["domains"]["names"] = [x for x in quick_domains if x in names]
    raw["adapt"]["sparsities"] = list(raw["adapt"]["sparsities"])[:s]
    if "ablate" in raw and "domains" in raw["ablate"]:
        raw["ablate"]["domains"] = [x for x in raw["ablate"]["domains"] if x in names] or names[:1]
    config.parse(raw)
    return raw


def _mlflow_template(path: Path) -> None:
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()


def run_scaling(sizes: Sequence[tuple[int, int]], work: Path, *, timeout: float = 1800) -> list[dict]:
    """``dvc repro --no-run-cache`` from clean per size, each in a fresh copy of the working tree
    (uncommitted files included; build/, reports/, mlflow.db, DVC cache left out), committed to a
    throw-away git repository; MLflow goes to a sqlite db in that copy."""
    template = work / "mlflow-template.db"
    _mlflow_template(template)
    results = []
    for d, s in sizes:
        root = work / f"repo-{d}x{s}"
        shutil.copytree(ROOT, root, ignore=_ignore(ROOT))
        raw = scaling_params(d, s)
        profile.write(raw, root / "params.yaml")
        git = ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost", "-c", "commit.gpgsign=false"]
        subprocess.run(git + ["init", "-q"], cwd=root, check=True)
        subprocess.run(git + ["add", "-A"], cwd=root, check=True)
        subprocess.run(git + ["commit", "-q", "-m", "benchmark snapshot"], cwd=root, check=True)
        shutil.copy(template, root / "mlflow.db")
        env = {**os.environ, "ZFDA_EXECUTION": f"benchmark-scaling-{d}x{s}-{os.getpid()}",
               "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PYTHONUNBUFFERED": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        print(f"scaling: dvc repro from clean, {d} domains x {s} sparsities in {root}", flush=True)
        events: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--no-run-cache"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        deadline = t0 + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            events.append((time.perf_counter() - t0, line.rstrip()))
            if _STAGE_LINE.search(line):
                print(f"  {events[-1][0]:7.1f} s  {line.strip()}", flush=True)
            if time.perf_counter() > deadline:
                proc.kill()
                break
        rc = proc.wait()
        total = time.perf_counter() - t0
        per = stage_durations(events, total)
        first = next((t for t, line in events if _STAGE_LINE.search(line)), total)
        results.append({"domains": d, "sparsities": s, "rc": rc, "total_s": total, "startup_s": first,
                        "stages": per, "tail": [line for _, line in events[-8:]] if rc else []})
        print(f"  total {total:.1f} s, exit code {rc}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
    return results


def rows_scaling(results: Sequence[dict]) -> tuple[list[Row], str]:
    rows: list[Row] = []
    ok = [r for r in results if r["rc"] == 0]
    for r in results:
        tag = f"{r['domains']}×{r['sparsities']}"
        rows.append(Row(f"dvc repro from clean, tiny config, {tag} (domains × sparsities)",
                        f"{r['total_s']:.1f} s, {len(r['stages'])} stages" + ("" if r["rc"] == 0 else
                                                                               f"; FAILED exit {r['rc']}"),
                        status="INFO" if r["rc"] == 0 else "FAIL",
                        metrics={_slug(f"scaling_total_s_{r['domains']}x{r['sparsities']}"): r["total_s"]}))
    quick = profile.render("quick")
    qd, qs = len(quick["domains"]["names"]), len(quick["adapt"]["sparsities"])
    if len({(r["domains"], r["sparsities"]) for r in ok}) >= 3:
        a, b, c = least_squares([(r["domains"], r["sparsities"]) for r in ok], [r["total_s"] for r in ok])
        pred = a + b * qd * qs + c * qd
        rows.append(Row("Scaling fit: total ≈ a + b·(domains·sparsities) + c·domains (tiny config)",
                        f"a = {a:.1f} s, b = {b:.2f} s per SAM cell, c = {c:.2f} s per domain", status="INFO",
                        metrics={"scaling_fit_a": a, "scaling_fit_b": b, "scaling_fit_c": c}))
        rows.append(Row(f"Scaling fit prediction at the quick profile's {qd}×{qs} (tiny config: the pipeline's "
                        f"fixed-cost floor)", f"{pred:.0f} s", "≤ 600 s", f"{pred / QUICK_GOAL_S:.3f} of goal",
                        _judge(pred, "<=", QUICK_GOAL_S), {"scaling_prediction_quick_s": pred}))
    else:
        rows.append(Row("Scaling fit", "fewer than 3 successful sizes", status="FAIL"))
    families = sorted({n.split("@")[0] for r in results for n in r["stages"]})
    lines = ["### dvc repro per stage family, tiny config (seconds; matrix stages summed, count in brackets)", "",
             "| Stage | " + " | ".join(f"{r['domains']}×{r['sparsities']}" for r in results) + " |",
             "|---|" + "---:|" * len(results)]
    for fam in ["(dvc start)"] + families:
        cells = []
        for r in results:
            if fam == "(dvc start)":
                cells.append(f"{r['startup_s']:.1f}")
                continue
            ts = [v for n, v in r["stages"].items() if n.split("@")[0] == fam]
            cells.append(f"{sum(ts):.1f} [{len(ts)}]" if ts else "—")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r['total_s']:.1f}**" for r in results) + " |")
    for r in results:
        if r["rc"]:
            lines += ["", f"{r['domains']}×{r['sparsities']} failed; last output:", "```", *r["tail"], "```"]
    return rows, "\n".join(lines)


# ----------------------------------------------------------------------------------------- report
def machine_info(device: str = "cpu") -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu or platform.processor() or platform.machine(), "cpu_count": str(os.cpu_count()),
            "torch": torch.__version__, "threads": str(torch.get_num_threads()), "device": device,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
            "python": platform.python_version()}
    with contextlib.suppress(OSError, AttributeError):
        info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows: Sequence[Row], info: Mapping[str, str], sections: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    lines = ["# zfda-bench benchmarks", "",
             "Written by `python -m pipeline.benchmark`. Ratios are medians of per-repeat ratios of interleaved "
             "blocks (side by side on the same loaded machine); times are medians. Ratio column: the measured "
             "ratio the goal is about, or for an absolute goal the measured value over the goal.", ""]
    lines += [f"- **{k}**: {_cell(v)}" for k, v in info.items()]
    lines += ["", "| Measurement | Measured | Goal | Ratio | Status |", "|---|---|---|---:|---|"]
    lines += [f"| {_cell(r.name)} | {_cell(r.measured)} | {_cell(r.goal)} | {_cell(r.ratio)} | {r.status} |"
              for r in rows]
    for n in notes:
        lines += ["", n]
    for sec in sections:
        if sec:
            lines += ["", sec]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main
def collect(params: Params, s: Settings, tmpdir: Path, threads: int = 1) -> list[Row]:
    """Measurements 1-5 on CPU: deterministic algorithms as in the pipeline, ``threads`` torch threads
    (0: params' ``train.threads``, i.e. the pipeline's own setting)."""
    sp = sorted(params.adapt.sparsities)
    pair = sorted({sp[-1], sp[0]}, reverse=True)  # largest and smallest sparsity (0.01, 0.0003 in quick)
    rows: list[Row] = []
    with cpu_runtime(threads or params.train.threads):
        steps = [("SAM step", lambda: rows_sam_step(measure_sam_step(params, pair, s), pair)),
                 ("switch", lambda: rows_switch(measure_switch(params, sp[-1], s, tmpdir), sp[-1])),
                 ("storage", lambda: rows_storage(measure_storage(params, sp, s, tmpdir), sp)),
                 ("pretrain", lambda: rows_pretrain(measure_pretrain(params, s, tmpdir))),
                 ("inference", lambda: rows_inference(measure_inference(params, sp[-1], s), sp[-1]))]
        for what, fn in steps:
            t = time.perf_counter()
            got = fn()
            print(f"benchmark: {what}: {time.perf_counter() - t:.1f} s", flush=True)
            rows += got
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (tests, smoke runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks.md")
    ap.add_argument("--scaling", action="store_true", help="also time `dvc repro` from clean at several sizes (slow)")
    ap.add_argument("--sizes", default=",".join(f"{d}x{s}" for d, s in SCALING_SIZES),
                    help="scaling sizes, domains x sparsities, e.g. 2x1,2x2,4x2,4x4")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the CPU measurements; 0: params' train.threads (the pipeline's). "
                         "Default 1: on a shared 2-core machine two OpenMP threads make per-call times swing 2-4x "
                         "(same-code A/A ratios off by up to 20 %%), one thread keeps them within about 1 %%")
    ap.add_argument("--mlflow-db", type=Path, default=ROOT / "mlflow.db",
                    help="where the last real quick execution is read from")
    ap.add_argument("--root", type=Path, default=ROOT, help="the project whose params.yaml and MLflow store are used")
    args = ap.parse_args(argv)
    params = config.load(args.root / "params.yaml")
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
        sections = []
        cells, untracked = (expected_cells(profile.render("quick"), ROOT / "dvc.yaml")
                            if (ROOT / "dvc.yaml").is_file() else (None, []))
        try:
            h = mlflow_quick_history(args.mlflow_db, cells)
        except (sqlite3.Error, KeyError, OSError) as err:
            h = None
            print(f"{args.mlflow_db} unreadable ({type(err).__name__}: {err})", file=sys.stderr)
        if h is not None:
            h["untracked"] = untracked
        hist_rows, hist_sec = rows_history(h, args.mlflow_db)
        rows += hist_rows
        sections.append(hist_sec)
        if args.scaling:
            sizes = [tuple(int(v) for v in x.lower().split("x")) for x in args.sizes.split(",") if x.strip()]
            sc_rows, sc_sec = rows_scaling(run_scaling(sizes, tmpdir))
            rows += sc_rows
            sections.append(sc_sec)
    info["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    info["model"] = (f"SCModel width {params.model.width}, bandwidth ratio {params.model.bandwidth_ratio:g}; "
                     f"batch {params.train.batch_size}; params profile {params.profile}, source {params.data.source}")
    info["settings"] = ("--quick" if args.quick else "default") + f": {s}"
    info["wall_time"] = f"{time.perf_counter() - start:.0f} s"
    from .tracking import Tracker, git_commit
    info["git_commit"] = git_commit(ROOT)
    notes = [gpu_note,
             "Switch: `set_sam_enabled` only flips flags; the merged weight W0 + m⊙v is built eagerly by "
             "`install_sam` and cached (rebuilt only if W0 changes). The judged switch time is therefore "
             "`set_sam_enabled(model, False)` + `set_sam_enabled(model, True)`, after checking that the forwards "
             "that follow rebuild no merged weight and give the right outputs (off: the base model bit for bit; "
             "on: the installed state's); the row also shows the time with every layer's per-forward weight "
             "lookup added after each flip (paid by every forward, switched or not).",
             "Pretraining: `fit` as the pretrain stage calls it (shuffle, per-epoch generator, loss read-back, "
             "one checkpoint per epoch into a temporary dir), without the stage's per-epoch test evaluation; "
             "a block is one epoch, so the checkpoint weighs more here than in the real 8000-image epochs."]
    text = markdown(rows, info, sections, notes)
    print(text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written: {args.out}", flush=True)
    with Tracker(params, Paths.of(params, args.root), "benchmark") as tracker:
        tracker.set_tags({f"benchmark.{k}": v for k, v in info.items()})
        tracker.log_params({"benchmark.quick": args.quick, "benchmark.scaling": args.scaling})
        metrics: dict[str, float] = {}
        for r in rows:
            metrics.update({k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        tracker.log_metrics(metrics)
        tracker.log_metrics({"benchmark.failed_rows": sum(r.status == "FAIL" for r in rows),
                             "benchmark.passed_rows": sum(r.status == "PASS" for r in rows)})
        tracker.log_artifact(args.out, "benchmark")
    return 0


if __name__ == "__main__":
    sys.exit(main())
