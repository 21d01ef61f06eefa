"""``python -m benchmarks.batched``: K cells in one stacked training step (``pipeline.batched``) against one
``fit`` after another, results and speed.

1. Equality, on a small real project (builtin photos, the tiny profile's sizes raised to a few batches, the
   quick profile's model width; pretrained here for 2 epochs): the tuning cells of every domain through
   ``tuning.adapt_cells`` one fit after another and through ``train_tuning_cells`` below (both
   trainings stacked, one step for all domains). Reported: the largest |difference| of every stored tensor
   (tuned and re-tuned models) and of every metric of the cells' results, against the tolerances below;
   the same for sam cells (every domain at the quick profile's two sparsities in one stacked fit): the
   stored masks, fp16 values and metrics.
2. Determinism: the batched cells a second time give the same bytes (safetensors and results less
   wall times); no leak: one cell's images replaced, the other cells of its stacked fit keep every bit.
3. Speed: cells/s of ``fit_cells`` against one ``fit`` per cell at K = 1, 4, 8, 16 (a cell: ``--steps``
   Adam steps of batch ``--batch`` on its own seeded random images, a fresh copy of one seeded model and
   its per-epoch checkpoint, as a cell's fit has), every candidate of every K in one interleaved loop
   (``benchmarks.timing.interleaved``: the order rotates each repeat), at each ``--threads``; min and
   median over repeats, and the median of the per-repeat batched/sequential ratios. The CPU crossover
   is the smallest K from which every measured K has a median ratio above 1 (``pipeline.batched``'s
   ``CPU_CROSSOVER`` is set from it).

The section goes into ``reports/benchmarks.md`` between its markers; the other sections are kept.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import itertools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipeline import batched, config, profile
from pipeline.model import SCModel
from pipeline.paths import REPO, Paths

from .gpu import upsert_section
from .report import Row, table
from .timing import cpu_runtime, interleaved

BEGIN, END = "<!-- benchmarks.batched: begin -->", "<!-- benchmarks.batched: end -->"
KS = (1, 4, 8, 16)
PSNR_TOL_DB = 0.01     # every PSNR metric of a batched cell against its one-fit-after-another twin
LOSS_TOL_REL = 1e-5    # every train loss of the curves, relative
# Stored weights are reported, not judged: Adam divides each step by the gradient's running RMS, so an entry
# whose gradient is at rounding level takes an lr-sized step whose sign rounding decides, in either path;
# the row gives the largest |Δ| in units of tuning.lr (a run of 1e-4 absolute was 5.9e-4 = 2 lr, PSNR 1e-3 dB).
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


# -------------------------------------------------------------------------------------------- machine
def cpu_info() -> dict[str, str]:
    """The CPU by /proc/cpuinfo: model name, logical CPUs and cores, the vector flags that matter here."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(key)), "?")
    flags = set(field("flags").split())
    return {"cpu": f"{field('model name')} ({os.cpu_count()} logical CPUs, {field('cpu cores')} cores per socket, "
                   f"{field('cpu MHz')} MHz)",
            "cpu_flags": " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)}


# ------------------------------------------------------------------------------------------- equality
def small_project(root: Path, width: int, threads: int, tiny: bool = False) -> tuple[config.Params, Paths]:
    """Builtin photos at the tiny profile's sizes raised to a few batches per domain (``tiny``: as they are),
    ``width``, pretrained 2 epochs."""
    from pipeline.data import build_splits
    from pipeline.stages import write_npy
    from pipeline.stages.pretrain import train_base
    from pipeline.train import save_model
    raw = profile.shrink(profile.render("quick"))
    if tiny:
        raw["domains"]["names"] = raw["domains"]["names"][:2]
        raw["ablate"]["domains"] = raw["domains"]["names"][:1]
    else:
        raw["data"].update({"n_pretrain": 256, "n_base_test": 64})
        raw["domains"].update({"n_train": 96, "n_val": 32, "n_test": 64})
        raw["train"]["batch_size"] = 32
    raw["model"]["width"] = width
    raw["train"]["threads"] = threads
    raw["adapt"]["epochs"] = 2
    params = config.parse(raw)
    paths = Paths.of(params, root)
    for name, arr in build_splits(params, paths).items():
        paths.split(name).parent.mkdir(parents=True, exist_ok=True)
        write_npy(paths.split(name), arr)
    from pipeline.stages.pretrain import load_split
    model, _ = train_base(params, load_split(paths, "base_train")[:params.data.n_pretrain], seed=params.pretrain.seed,
                          epochs=2, device=torch.device("cpu"), checkpoint=root / "pretrain.pt", key="bench")
    paths.pretrained.parent.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), paths.pretrained, {"profile": params.profile})
    return params, paths


class _Tracker:
    def log_history(self, history, prefix: str = "") -> None:
        pass


def tuning_cells(params, paths, folder: Path, how: str) -> tuple[list[dict], dict[str, dict]]:
    """Every domain's tuning cell, ``how`` = sequential | batched; the results and each stored file's tensors."""
    from safetensors.torch import load_file

    from pipeline.methods import Context, tuning
    from pipeline.paths import Cell
    domains = list(params.domains.names)
    ck = [folder / "ck" / d for d in domains]
    outs = [Cell(folder, d, c) for d, c in zip(domains, ck)]
    folder.mkdir(parents=True)
    ctxs = [Context(params, paths, torch.device("cpu"), checkpoints=c) for c in ck]
    trackers = [_Tracker() for _ in domains]
    if how == "batched":
        results = train_tuning_cells(ctxs, domains, outs, trackers, batch=True)
    else:
        results = tuning.adapt_cells(ctxs, domains, [None] * len(ctxs), outs, trackers)
    files = {p.name: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}
    return results, files


def _numbers(result: dict) -> dict[str, float]:
    """A cell's metrics as name -> number (curves per epoch), wall times left out."""
    d = result["details"]
    out = {"domain_psnr": result["domain_psnr"], "memory_bytes": float(result["memory_bytes"]),
           **{k: d[k] for k in ("val_psnr", "domain_psnr_after_retune", "forgetting_db")}}
    for curve in ("curve", "retune_curve"):
        out.update({f"{curve}[{h['epoch']}].train_loss": h["train_loss"] for h in d[curve]})
    return out


def _metric_name(key: str) -> str:
    """A metric's name over the epochs of its curve: ``curve[2].train_loss`` -> ``curve.train_loss``."""
    head, _, rest = key.partition("[")
    return head + rest.partition("]")[2] if rest else head


def _digest(files: dict[str, dict], results: list[dict]) -> str:
    h = hashlib.sha256()
    for name, tensors in files.items():
        for k in sorted(tensors):
            h.update(name.encode() + k.encode() + tensors[k].numpy().tobytes())
    h.update(json.dumps([_numbers(r) for r in results], sort_keys=True).encode())
    return h.hexdigest()


def measure_equality(params, paths, folder: Path) -> dict:
    seq_r, seq_f = tuning_cells(params, paths, folder / "seq", "sequential")
    bat_r, bat_f = tuning_cells(params, paths, folder / "bat", "batched")
    again_r, again_f = tuning_cells(params, paths, folder / "again", "batched")
    per_tensor: dict[str, float] = {}
    for name in seq_f:
        kind = "re-tuned" if name.endswith("-retuned.safetensors") else "tuned"
        for k, v in batched.max_abs_diff(seq_f[name], bat_f[name]).items():
            per_tensor[f"{kind} {k}"] = max(per_tensor.get(f"{kind} {k}", 0.0), v)
    per_metric: dict[str, float] = {}
    for a, b in zip(seq_r, bat_r, strict=True):
        na, nb = _numbers(a), _numbers(b)
        for k in na:
            name = _metric_name(k)
            gap = abs(na[k] - nb[k]) / (abs(na[k]) if "loss" in k else 1.0)
            per_metric[name] = max(per_metric.get(name, 0.0), gap)
    return {"per_tensor": per_tensor, "per_metric": per_metric, "cells": len(seq_r), "lr": params.tuning.lr,
            "deterministic": _digest(bat_f, bat_r) == _digest(again_f, again_r)}


SAM_SPARSITIES = (0.001, 0.01)  # the quick profile's two


def sam_cells(params, paths, folder: Path, how: str) -> tuple[list[dict], list]:
    """Every domain x SAM_SPARSITIES sam cell, ``how`` = sequential | batched; the results and stored states."""
    from pipeline.methods import Context, sam
    from pipeline.paths import Cell
    from pipeline.sam import load_sam
    cells = [(d, g) for d in params.domains.names for g in SAM_SPARSITIES]
    ck = [folder / "ck" / f"{d}-{g:g}" for d, g in cells]
    outs = [Cell(folder, f"{d}-{g:g}", c) for (d, g), c in zip(cells, ck)]
    folder.mkdir(parents=True)
    ctxs = [Context(params, paths, torch.device("cpu"), checkpoints=c) for c in ck]
    args = (ctxs, [d for d, _ in cells], [g for _, g in cells], outs, [_Tracker() for _ in cells])
    results = train_sam_cells(*args, batch=True) if how == "batched" else sam.adapt_cells(*args)
    return results, [load_sam(o.artifact(), ctxs[0].pretrained()) for o in outs]


def _sam_numbers(result: dict) -> dict[str, float]:
    d = result["details"]
    out = {"domain_psnr": result["domain_psnr"], "memory_bytes": float(result["memory_bytes"]),
           "val_psnr": d["val_psnr"], "kept_total": float(d["kept_total"]),
           "mask_moved_fraction": d["mask_moved_fraction"]}
    for h in d["curve"]:
        out.update({f"curve[{h['epoch']}].{k}": float(v) for k, v in h.items() if k != "epoch"})
    return out


def measure_sam_equality(params, paths, folder: Path) -> dict:
    seq_r, seq_s = sam_cells(params, paths, folder / "seq", "sequential")
    bat_r, bat_s = sam_cells(params, paths, folder / "bat", "batched")
    layers = same = 0
    values = 0.0
    for a, b in zip(seq_s, bat_s, strict=True):
        for n in a.indices:
            layers += 1
            if torch.equal(a.indices[n], b.indices[n]):
                same += 1
                if len(a.values[n]):
                    values = max(values, float((a.values[n].float() - b.values[n].float()).abs().max()))
    per_metric: dict[str, float] = {}
    for a, b in zip(seq_r, bat_r, strict=True):
        na, nb = _sam_numbers(a), _sam_numbers(b)
        for k in na:
            name = _metric_name(k)
            gap = abs(na[k] - nb[k]) / (abs(na[k]) if "loss" in k else 1.0)
            per_metric[name] = max(per_metric.get(name, 0.0), gap)
    return {"cells": len(seq_r), "layers": layers, "same_indices": same, "values": values, "per_metric": per_metric}


def measure_leak(params, paths, folder: Path, k: int = 4) -> dict:
    """``k`` stacked fits of the pretrained model on the domains' images, then the same with cell 1's images
    replaced by base images (and its lr raised tenfold): the other cells must keep every bit."""
    from pipeline.methods import Context, tuning
    ctx = Context(params, paths, torch.device("cpu"))
    domains = (list(params.domains.names) * k)[:k]

    def trained(tag: str, swap: bool) -> list[dict]:
        runs = []
        for i, d in enumerate(domains):
            images = ctx.split("base_train")[:params.domains.n_train] if swap and i == 1 else ctx.split(f"{d}_train")
            ctx.checkpoints = folder / tag / str(i)
            run = tuning.finetune_run(ctx, ctx.pretrained().requires_grad_(True), images, params.adapt.epochs, d, d)
            if swap and i == 1:
                run["optimizer"].param_groups[0]["lr"] *= 10
            runs.append(run)
        batched.fit_cells(runs)
        return [r["module"].state_dict() for r in runs]

    ref, changed = trained("ref", False), trained("swap", True)
    kept = all(torch.equal(ref[i][n], changed[i][n]) for i in range(k) if i != 1 for n in ref[i])
    moved = any(not torch.equal(ref[1][n], changed[1][n]) for n in ref[1])
    return {"others_identical": kept, "changed_cell_moved": moved, "k": k}


# ---------------------------------------------------------------------------------------------- speed
def measure_speed(ks, repeats: int, steps: int, batch: int, width: int, device: torch.device, folder: Path,
                  lr: float = 1e-3) -> dict[str, list[float]]:
    """Seconds per K cells (a fresh copy of one seeded model and its Adam each, ``steps`` steps, a
    checkpoint), batched and sequential, every K interleaved; keys ``batched K=k`` / ``sequential K=k``."""
    torch.manual_seed(0)
    base = SCModel(width=width).to(device)
    data = [torch.randint(0, 256, (steps * batch, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(i)) for i in range(max(ks))]
    calls = itertools.count()

    def cells(k: int, how: str) -> None:
        where = folder / f"call{next(calls)}"
        runs = []
        for i in range(k):
            m = copy.deepcopy(base)
            runs.append(dict(module=m, optimizer=torch.optim.Adam(m.parameters(), lr=lr), images=data[i], epochs=1,
                             batch_size=batch, seed=i, device=device, checkpoint=where / f"{i}.pt", key="speed",
                             desc=f"cell {i}"))
        if how == "batched":
            batched.fit_cells(runs)
        else:
            from pipeline.train import fit
            for r in runs:
                fit(**r, forward=r["module"])
        shutil.rmtree(where, ignore_errors=True)

    fns = {f"{how} K={k}": (lambda k=k, how=how: cells(k, how)) for k in ks for how in ("batched", "sequential")}
    return interleaved(fns, repeats=repeats, device=device)


def speed_rows(times: dict[str, list[float]], ks, *, steps: int, batch: int, width: int, threads: str,
               prefix: str = "") -> tuple[list[Row], dict[int, float]]:
    rows, ratios = [], {}
    for k in ks:
        b = [k / t for t in times[f"batched K={k}"]]
        s = [k / t for t in times[f"sequential K={k}"]]
        per = [x / y for x, y in zip(b, s)]
        ratios[k] = statistics.median(per)
        rows.append(Row(f"{prefix}Batched / sequential cells/s, K={k} (width {width}, batch {batch}, {steps} steps "
                        f"a cell, {threads})",
                        f"batched {statistics.median(b):.2f} cells/s (min {min(b):.2f}), sequential "
                        f"{statistics.median(s):.2f} (min {min(s):.2f}); ratio min {min(per):.2f}, "
                        f"{len(per)} repeats", "—", f"{ratios[k]:.2f}×",
                        metrics={f"{prefix.strip().lower()}batched_ratio_k{k}_{threads.split()[0]}t": ratios[k]}))
    return rows, ratios


def gpu_rows(device: torch.device, tiny: bool, folder: Path) -> list[Row]:
    """The speed rows on ``device`` for ``benchmarks.gpu``: the paper profile's width, K up to 32 (tiny:
    width 4, K 1 and 2, one repeat, for the CPU test of that script)."""
    width = 4 if tiny else config.parse(profile.render("paper")).model.width
    ks, repeats, steps, batch = ((1, 2), 1, 1, 8) if tiny else ((1, 4, 8, 16, 32), 5, 4, 64)
    times = measure_speed(ks, repeats, steps, batch, width, device, folder)
    rows, ratios = speed_rows(times, ks, steps=steps, batch=batch, width=width, threads=f"{device.type}", prefix="GPU ")
    c = crossover(ratios)
    rows.append(Row(f"GPU crossover on {device.type}: smallest K from which batching pays", "none measured" if c is None
                    else f"K = {c}", metrics={"gpu_batched_crossover": float(c or 0)}))
    return rows


MIN_GAIN = 1.05  # a median ratio that pays: above the repeats' noise (equal paths read 0.96-1.04 on a quiet machine)


def crossover(ratios: dict[int, float]) -> int | None:
    """The smallest K from which every measured K's median ratio is at least ``MIN_GAIN`` (None: none)."""
    ks = sorted(ratios)
    for i, k in enumerate(ks):
        if k > 1 and all(ratios[j] >= MIN_GAIN for j in ks[i:]):
            return k
    return None


# ------------------------------------------------------------------------------ cells, stacked
def train_tuning_cells(ctxs: list[Context], domains: list[str], outs: list, trackers: list,
                       max_cells: int = 16, batch: bool | None = None) -> list[dict]:
    """``tuning.adapt(ctx, domain, None, out, tracker)`` for every cell, their trainings (the domain's
    fine-tuning, then the re-tuning on base images) batched where ``pipeline.batched.use_batched`` says it
    pays (``batch`` True: always, False: never).
    Returns the cells' results in order; ``train_seconds`` is each cell's share of the batch's time."""
    from pipeline.methods import tuning
    return tuning.adapt_cells(ctxs, domains, [None] * len(ctxs), outs, trackers,
                              fit_all=lambda runs: batched.fit_grouped(runs, max_cells, batch))


def train_sam_cells(ctxs: list[Context], domains: list[str], sparsities: list[float], outs: list, trackers: list,
                    max_cells: int = 16, batch: bool | None = None) -> list[dict]:
    """``sam.adapt(ctx, domain, sparsity, out, tracker)`` for every cell, their trainings batched where
    ``pipeline.batched.use_batched`` says it pays (``batch``: as in ``train_tuning_cells``); cells of different
    sparsities share a step (their scores and values have the weights' shapes whatever the budget)."""
    from pipeline.methods import sam
    return sam.adapt_cells(ctxs, domains, sparsities, outs, trackers,
                           fit_all=lambda runs: batched.fit_grouped(runs, max_cells, batch))


# --------------------------------------------------------------------------------------------- report
def equality_rows(eq: dict, leak: dict) -> list[Row]:
    pt, pm = eq["per_tensor"], eq["per_metric"]
    worst_t = max(pt, key=pt.get)
    psnr = {k: v for k, v in pm.items() if "loss" not in k and k != "memory_bytes"}
    worst_p = max(psnr, key=psnr.get)
    loss = max(v for k, v in pm.items() if "loss" in k)
    ok_p, ok_l = psnr[worst_p] <= PSNR_TOL_DB, loss <= LOSS_TOL_REL
    n, lr = eq["cells"], eq["lr"]
    return [
        Row(f"Batched tuning cells = one fit after another: stored weights ({n} cells, tuned and re-tuned; "
            f"reported, not judged: Adam's lr-sized steps on rounding-level gradients)",
            f"largest |Δ| {pt[worst_t]:.2e} = {pt[worst_t] / lr:.2f} × tuning.lr ({worst_t}); per tensor below", "—",
            "—", "INFO", {"batched_max_weight_diff": pt[worst_t]}),
        Row(f"Batched tuning cells = one fit after another: PSNR metrics ({', '.join(sorted(psnr))})",
            f"largest |Δ| {psnr[worst_p]:.2e} dB ({worst_p}); memory bytes "
            f"{'equal' if pm['memory_bytes'] == 0 else 'DIFFER'}", f"≤ {PSNR_TOL_DB:g} dB",
            f"{psnr[worst_p] / PSNR_TOL_DB:.3f} of goal", "PASS" if ok_p and pm["memory_bytes"] == 0 else "FAIL",
            {"batched_max_psnr_diff_db": psnr[worst_p]}),
        Row("Batched tuning cells = one fit after another: train losses (every epoch of both curves), relative",
            f"largest |Δ|/loss {loss:.2e}", f"≤ {LOSS_TOL_REL:g}", f"{loss / LOSS_TOL_REL:.3f} of goal",
            "PASS" if ok_l else "FAIL", {"batched_max_loss_rel_diff": loss}),
        Row("Batched tuning cells run twice: same bytes (safetensors, metrics less wall times)",
            "identical" if eq["deterministic"] else "DIFFER", "identical", "—", "PASS" if eq["deterministic"] else "FAIL"),
        Row(f"No leak: one of {leak['k']} stacked cells given other images and lr, the others' weights",
            ("bit for bit unchanged" if leak["others_identical"] else "CHANGED")
            + ("; the changed cell moved" if leak["changed_cell_moved"] else "; the changed cell did NOT move"),
            "unchanged", "—", "PASS" if leak["others_identical"] and leak["changed_cell_moved"] else "FAIL"),
    ]


def sam_rows(eq: dict) -> list[Row]:
    pm = eq["per_metric"]
    psnr = {k: v for k, v in pm.items() if "psnr" in k}
    worst = max(psnr, key=psnr.get)
    loss = max(v for k, v in pm.items() if "loss" in k)
    exact = {k: pm[k] for k in pm if k in ("memory_bytes", "kept_total", "mask_moved_fraction", "curve.mask_moved",
                                           "curve.mask_changed")}
    masks_ok = eq["same_indices"] == eq["layers"] and not any(exact.values())
    n = eq["cells"]
    # The mask is the top-k of the scores: a score within rounding of a layer's k-th largest falls on either
    # side in either path, so masks are reported, not judged; the losses are judged only where the masks agree
    # (a moved entry trains another weight). What is judged is what a user reads: the PSNRs.
    return [
        Row(f"Batched sam cells = one fit after another: stored masks and values ({n} cells, sparsities "
            f"{', '.join(f'{g:g}' for g in SAM_SPARSITIES)}, one stacked fit; reported, not judged: a score tie "
            "at the top-k threshold falls either way)",
            f"indices identical in {eq['same_indices']}/{eq['layers']} layers; fp16 values largest |Δ| "
            f"{eq['values']:.2e}; kept entries, memory bytes and mask movement "
            f"{'equal' if not any(exact.values()) else 'differ'}", "—", "—", "INFO",
            {"batched_sam_same_mask_layers": float(eq["same_indices"]), "batched_sam_max_value_diff": eq["values"]}),
        Row(f"Batched sam cells = one fit after another: PSNR metrics ({', '.join(sorted(psnr))})",
            f"largest |Δ| {psnr[worst]:.2e} dB ({worst})", f"≤ {PSNR_TOL_DB:g} dB",
            f"{psnr[worst] / PSNR_TOL_DB:.3f} of goal", "PASS" if psnr[worst] <= PSNR_TOL_DB else "FAIL",
            {"batched_sam_max_psnr_diff_db": psnr[worst]}),
        Row("Batched sam cells = one fit after another: train losses (every epoch), relative"
            + ("" if masks_ok else "; not judged: the masks differ"),
            f"largest |Δ|/loss {loss:.2e}", f"≤ {LOSS_TOL_REL:g}" if masks_ok else "—",
            f"{loss / LOSS_TOL_REL:.3f} of goal" if masks_ok else "—",
            ("PASS" if loss <= LOSS_TOL_REL else "FAIL") if masks_ok else "INFO", {"batched_sam_max_loss_rel_diff": loss}),
    ]


def section(rows: list[Row], info: dict[str, str], eq: dict | None, notes: list[str], sam: dict | None = None) -> str:
    lines = [BEGIN, "## Batched cells: K cells in one stacked step against one fit after another", "",
             "Written by `python -m benchmarks.batched` (module docstring: what runs).", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += ["", table(["Measurement", "Measured", "Goal", "Ratio", "Status"],
                        [(r.name, r.measured, r.goal, r.ratio, r.status) for r in rows], right=["Ratio"])]
    lines += [x for n in notes for x in ("", n)]
    if eq is not None:
        pt = eq["per_tensor"]
        names = sorted({k.split(" ", 1)[1] for k in pt})
        lines += ["", "Largest |Δ| per stored tensor over the cells (batched against one fit after another):", "",
                  table(["Tensor", "tuned", "re-tuned"],
                        [(n, f"{pt[f'tuned {n}']:.2e}", f"{pt[f're-tuned {n}']:.2e}") for n in names],
                        right=["tuned", "re-tuned"]),
                  "", "Largest |Δ| per metric over the cells (train losses relative):", "",
                  table(["Metric", "max |Δ|"], [(k, f"{v:.2e}") for k, v in eq["per_metric"].items()], right=["max |Δ|"])]
    if sam is not None:
        lines += ["", "Largest |Δ| per metric of the sam cells (train losses relative):", "",
                  table(["Metric", "max |Δ|"], [(k, f"{v:.2e}") for k, v in sam["per_metric"].items()], right=["max |Δ|"])]
    return "\n".join(lines + ["", END]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md")
    ap.add_argument("--ks", default=",".join(map(str, KS)), help="cells per stacked step to measure")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every candidate")
    ap.add_argument("--steps", type=int, default=2, help="Adam steps per cell")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: the quick profile's)")
    ap.add_argument("--width", type=int, default=None, help="model width (default: the quick profile's)")
    ap.add_argument("--threads", default="1,2", help="torch thread counts to measure the speed at")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: width 4, K 1 and 2, 1 repeat
    a = ap.parse_args(argv)
    quick = config.parse(profile.render("quick"))
    width = 4 if a.tiny else a.width or quick.model.width
    batch = 8 if a.tiny else a.batch or quick.train.batch_size
    ks = (1, 2) if a.tiny else tuple(int(k) for k in a.ks.split(","))
    repeats, steps = (1, 1) if a.tiny else (a.repeats, a.steps)
    threads = [int(t) for t in a.threads.split(",")]
    started = time.perf_counter()
    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), **cpu_info(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="zfda-batched-") as tmp:
        with cpu_runtime(threads[0]):
            params, paths = small_project(Path(tmp) / "project", 4 if a.tiny else quick.model.width, threads[0], a.tiny)
            eq = measure_equality(params, paths, Path(tmp) / "equality")
            leak = measure_leak(params, paths, Path(tmp) / "leak")
            sam_eq = measure_sam_equality(params, paths, Path(tmp) / "sam")
        rows += equality_rows(eq, leak) + sam_rows(sam_eq)
        found = {}
        for t in threads:
            with cpu_runtime(t):
                times = measure_speed(ks, repeats, steps, batch, width, torch.device("cpu"), Path(tmp) / f"speed{t}")
            got, ratios = speed_rows(times, ks, steps=steps, batch=batch, width=width, threads=f"{t} thread(s)")
            rows += got
            found[t] = crossover(ratios)
    for t, c in found.items():
        rows.append(Row(f"CPU crossover at {t} thread(s): smallest K from which batching pays (median ratio "
                        f"≥ {MIN_GAIN:g} at it and every larger K measured)", "none measured" if c is None else f"K = {c}",
                        metrics={f"batched_cpu_crossover_{t}t": float(c or 0)}))
    info["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["equality project"] = (f"builtin photos, {len(params.domains.names)} domains × {params.domains.n_train} "
                                f"training images, width {params.model.width}, batch {params.train.batch_size}, "
                                f"adapt.epochs {params.adapt.epochs}, tuning.retune_epochs "
                                f"{params.tuning.retune_epochs} (sam: sparsities {list(SAM_SPARSITIES)}, the "
                                f"quick profile's recipe), pretrained 2 epochs on {params.data.n_pretrain} images; "
                                f"{threads[0]} thread(s), deterministic algorithms")
    info["speed settings"] = (f"K {list(ks)}, {repeats} repeats, {steps} steps of batch {batch} per cell, width {width}, "
                              f"threads {threads}; the pipeline's CPU_CROSSOVER = {batched.CPU_CROSSOVER}")
    info["wall_time"] = f"{time.perf_counter() - started:.0f} s"
    notes = ["Equal within rounding, not bit for bit: a convolution whose weight carries the K cells' batch dimension "
             "runs as one grouped convolution (vmap's batching rule), which sums in another order than K single "
             "convolutions; Adam then carries the difference on. Each cell's data order, noise generator, loss, "
             "optimizer and checkpoint are its own, so a cell's bits do not depend on the other cells of its batch."]
    upsert_section(a.out, section(rows, info, eq, notes, sam_eq), BEGIN, END)
    for r in rows:
        print(f"{r.status:5} {r.name}: {r.measured} ({r.ratio})", flush=True)
    print(f"written: {a.out}", flush=True)
    return 0 if all(r.status != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
