"""Training and evaluation loops shared by every stage: device, batches, checkpoints, PSNR and SSIM.

Determinism: each epoch's shuffling and channel noise come from a generator seeded by
``(seed, epoch)``, so a run resumed from the checkpoint of epoch e draws exactly what an
uninterrupted run draws, and the final weights and metrics are the same.

Precision: ``train.precision`` (fp32, bf16, auto) governs training only: bf16 autocast of the
forward and loss in ``train_one_epoch``, weights, gradients, loss and optimizer state staying fp32.
Evaluation always runs in fp32, and so does everything the zero-forget guarantees rest on (the
switched-off SAM model is the fp32 base bit for bit).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from .config import InputError
from .metrics import Quality, psnr_per_image, ssim_per_image
from .model import SCModel
from .storage import nonfinite, save_safetensors, write_atomic_with, wrong_kind

if TYPE_CHECKING:
    from .config import Params


class ModelFileError(InputError):
    """A model (or equalizer) file that is missing, corrupt, of another kind or does not fit the configured
    architecture."""


# ------------------------------------------------------------------------------------------ runtime
def deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True)`` without its ~2 s import of torch._inductor.

    The public call also sets the inductor's ``deterministic`` option, which imports the compiler
    stack in every stage process; nothing here compiles, so the same runtime flag is set directly
    unless the inductor is already loaded (then the public call costs nothing and sets both).
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(True)
    else:
        setter(True, warn_only=False)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 dot products (x86)

_precision = "fp32"  # this process's training precision: train.precision as resolved by setup_runtime
# Seconds this process spent inside the training and evaluation loops (every epoch of train_one_epoch and of
# pipeline.batched, every pass of evaluate_quality_fanout): a Tracker logs its run's share, and
# ``python -m benchmarks`` sets them against the wall time (the overhead ratio).
LOOP_SECONDS = {"train": 0.0, "evaluate": 0.0}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (the first ``flags`` line of ``cpuinfo``; empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve_precision(want: str, device: torch.device) -> str:
    """``train.precision`` as it runs on ``device``: ``fp32`` or ``bf16``.

    ``auto`` is bf16 on CUDA (where the GPU supports it) and on a CPU with AVX512-BF16 or AMX, fp32
    elsewhere: without those instructions oneDNN has no bf16 convolution and falls back to a slow
    reference path (measured about 15x slower than fp32 on an AVX2-only EPYC, see the benchmarks).
    """
    if want != "auto":
        return want
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_flags() & set(BF16_CPU_FLAGS) else "fp32"


def setup_runtime(params: Params) -> dict:
    """Pick the device and the training precision, fix threads and deterministic algorithms; return
    what to log. Later ``fit``/``train_one_epoch`` calls train in that precision."""
    global _precision
    want = params.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    device = torch.device("cuda" if want in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    if device.type == "cpu":
        deterministic_algorithms()
    _precision = resolve_precision(params.train.precision, device)
    if _precision == "bf16" and device.type == "cpu" and not cpu_flags() & set(BF16_CPU_FLAGS):
        print("warning: train.precision = 'bf16' on a CPU without AVX512-BF16 or AMX: emulated, much slower "
              "than fp32 ('auto' picks fp32 here)", file=sys.stderr, flush=True)
    info = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "precision": f"{_precision} (train.precision = {params.train.precision})"}
    print("runtime: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    info["device_obj"] = device
    return info


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def to_float(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW -> float in [0, 1] on the device (channels_last on CUDA, where it pays; on the CPU
    it does not pay for this model, measured by the benchmarks)."""
    x = batch.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def progress(iterable, desc: str, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=1.0, dynamic_ncols=True,
                disable=None)  # None: a bar on a terminal, silence in logs


# ------------------------------------------------------------------------------------- checkpoints
def fingerprint(*parts) -> str:
    """Short hash of JSON-able parts (params, input hashes): a checkpoint only resumes its own run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """Hash of the training data itself: a checkpoint never resumes onto other data."""
    h = hashlib.sha256()
    for x in tensors:
        h.update(str((tuple(x.shape), str(x.dtype))).encode())
        h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict) -> None:
    write_atomic_with(path, lambda f: torch.save(state, f))  # a kill mid-write keeps the previous one


def _load_checkpoint(path: Path, key: str, precision: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        print(f"checkpoint {path} unreadable ({type(err).__name__}); starting from scratch", flush=True)
        return None
    # the key hashes train.precision as written; "auto" can resolve differently on another machine
    if state.get("key") != key or state.get("precision") != precision:
        print(f"checkpoint {path} belongs to other params, inputs or precision; starting from scratch", flush=True)
        return None
    return state


# -------------------------------------------------------------------------------------------- loops
def train_one_epoch(module: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    forward: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *, epoch: int, seed: int,
                    batch_size: int, device: torch.device, desc: str, precision: str | None = None,
                    scheduler=None, clip: float = 0.0) -> float:
    """One epoch (0-based ``epoch``) of minimising MSE(forward(x), x) over ``images`` (uint8 NCHW);
    returns its mean train loss.

    The shuffle order and ``forward``'s noise generator depend on ``(seed, epoch)`` only, so an
    epoch is the same whether it follows the previous one in this process or a resume.
    ``precision`` (``fp32``/``bf16``; None: what ``setup_runtime`` resolved, fp32 without it): bf16
    autocasts ``forward``; the loss is computed from its output cast back to fp32, and the
    parameters, gradients and optimizer state stay fp32. ``scheduler`` (a torch LR scheduler) steps
    after every optimizer step; ``clip`` > 0 clips the gradients' global norm to it first.
    """
    bf16 = (precision or _precision) == "bf16"
    module.train()
    gen = epoch_generator(seed, epoch, device)
    n = len(images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    total, seen, start = 0.0, 0, time.perf_counter()
    for i in progress(range(0, n, batch_size), desc):
        x = to_float(images[order[i:i + batch_size]], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.mse_loss(forward(x, gen).float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(x)
        seen += len(x)
    LOOP_SECONDS["train"] += time.perf_counter() - start
    return total / seen


def fit(module: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
        forward: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *, epochs: int, batch_size: int,
        seed: int, device: torch.device, checkpoint: Path, key: str, desc: str,
        on_epoch: Callable[[int, float], dict] | None = None, precision: str | None = None,
        scheduler=None, clip: float = 0.0, before_epoch: Callable[[int], None] | None = None) -> list[dict]:
    """``train_one_epoch`` for each epoch not yet done, with a checkpoint after every epoch.

    ``module`` holds everything trained (its state_dict is checkpointed with the optimizer's);
    ``on_epoch(epoch, train_loss)`` returns extra per-epoch metrics for the history (outside
    autocast); ``before_epoch(epoch)`` runs before each epoch that trains (0-based ``epoch``, i.e. the
    number of epochs done), after a resume too, so a per-epoch setting (a frozen parameter) that is not in
    the checkpoint is set the same way whether or not the run was interrupted.
    A checkpoint resumes only the same ``key`` trained in the same precision; it holds the
    ``scheduler``'s state too. ``scheduler`` and ``clip``: as in ``train_one_epoch``.
    Returns the history (one dict per epoch), including epochs restored from the checkpoint.
    """
    precision = precision or _precision
    history, start = [], 0
    state = _load_checkpoint(checkpoint, key, precision)
    if state is not None:
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        history, start = [dict(h) for h in state["history"]], int(state["epoch"])
        print(f"{desc}: resumed from checkpoint at epoch {start}/{epochs}", flush=True)
    for epoch in range(start, epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        loss = train_one_epoch(module, optimizer, images, forward, epoch=epoch, seed=seed, batch_size=batch_size,
                               device=device, desc=f"{desc} epoch {epoch + 1}/{epochs}", precision=precision,
                               scheduler=scheduler, clip=clip)
        row = {"epoch": epoch + 1, "train_loss": loss}
        if on_epoch is not None:
            row.update(on_epoch(epoch + 1, row["train_loss"]))
        history.append(row)
        _save_checkpoint(checkpoint, {"key": key, "precision": precision, "epoch": epoch + 1,
                                      "module": module.state_dict(),
                                      "optimizer": optimizer.state_dict(), "history": history,
                                      **({"scheduler": scheduler.state_dict()} if scheduler is not None else {})})
    return history


@torch.no_grad()
def evaluate_psnr(decode: Callable[[torch.Tensor, torch.Generator], torch.Tensor], images: torch.Tensor, *,
                  noise_seed: int, batch_size: int, device: torch.device) -> float:
    """Mean PSNR of ``decode(x, generator)`` against x, in fp32, with a fixed noise realisation."""
    return evaluate_psnr_fanout(decode, [_identity], images, noise_seed=noise_seed, batch_size=batch_size,
                                device=device)[0]


@torch.no_grad()
def evaluate_psnr_fanout(transmit: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                         receivers: list[Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor, *,
                         noise_seed: int, batch_size: int, device: torch.device) -> list[float]:
    """Mean PSNR of ``receive(transmit(x, generator))`` for every receiver: one Tx heard by several Rx
    (``evaluate_quality_fanout`` without SSIM, means only)."""
    return [q.mean_psnr for q in evaluate_quality_fanout(transmit, receivers, images, noise_seed=noise_seed,
                                                         batch_size=batch_size, device=device, ssim=False)]


@torch.no_grad()
def evaluate_quality(decode: Callable[[torch.Tensor, torch.Generator], torch.Tensor], images: torch.Tensor, *,
                     noise_seed: int, batch_size: int, device: torch.device, ssim: bool = True) -> Quality:
    """Per-image PSNR (and SSIM) of ``decode(x, generator)`` against x: ``evaluate_psnr``'s pass, same noise."""
    return evaluate_quality_fanout(decode, [_identity], images, noise_seed=noise_seed, batch_size=batch_size,
                                   device=device, ssim=ssim)[0]


@torch.no_grad()
def evaluate_quality_fanout(transmit: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                            receivers: list[Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor, *,
                            noise_seed: int, batch_size: int, device: torch.device, ssim: bool = True
                            ) -> list[Quality]:
    """Per-image PSNR (and SSIM, unless ``ssim`` is False) of ``receive(transmit(x, generator))`` for
    every receiver: one Tx heard by several Rx.

    Each batch is transmitted once (noise drawn once) and decoded by every receiver, so the numbers
    are exactly those of one ``evaluate_quality`` per receiver with the same noise seed, at the cost of
    one encoding for all of them (receivers must not draw noise or change their input). PSNR and SSIM
    of a receiver are measured on the same reconstruction. Always fp32: autocast is off here even
    inside a caller's autocast region, whatever ``train.precision``.
    """
    start = time.perf_counter()
    gen = torch.Generator(device=device)
    gen.manual_seed(noise_seed)
    psnrs: list[list[torch.Tensor]] = [[] for _ in receivers]
    ssims: list[list[torch.Tensor]] = [[] for _ in receivers]
    with torch.autocast(device.type, enabled=False):
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size], device)
            y = transmit(x, gen)
            for p_out, s_out, receive in zip(psnrs, ssims, receivers):
                out = receive(y)
                p_out.append(psnr_per_image(out, x).cpu())
                if ssim:
                    s_out.append(ssim_per_image(out, x).cpu())
    LOOP_SECONDS["evaluate"] += time.perf_counter() - start
    return [Quality(torch.cat(p), torch.cat(s) if ssim else None) for p, s in zip(psnrs, ssims)]


def _identity(y: torch.Tensor) -> torch.Tensor:
    return y


# ---------------------------------------------------------------------------------------- model I/O
def build_model(params: Params) -> SCModel:
    return SCModel(width=params.model.width, bandwidth_ratio=params.model.bandwidth_ratio,
                   snr_db=params.model.snr_db, channel=params.model.channel, norm=params.model.norm)


def save_model(model: nn.Module, path: Path, meta: dict[str, str]) -> None:
    """safetensors, written atomically (an existing good file is never replaced by a partial one)."""
    save_safetensors(path, model.state_dict(), meta)


def load_model(params: Params, path: Path) -> SCModel:
    """The pretrained model, refusing a missing, corrupt, mismatched or other kind of file with one clear line."""
    if problem := wrong_kind(path, "model"):
        raise ModelFileError(f"{path}: {problem}")
    model = build_model(params)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found (run the pretrain stage first)") from None
    except Exception as err:
        raise ModelFileError(f"{path}: corrupt or not a safetensors model file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ModelFileError(f"{path}: does not match model.width/bandwidth_ratio in params ({first})") from None
    if problem := nonfinite(state, "weight"):
        raise ModelFileError(f"{path}: {problem}")
    return model.eval()
