"""The timing harness: interleaved blocks, paired ratios, the pipeline's CPU conditions."""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch


@dataclass(frozen=True)
class Settings:
    repeats: int       # interleaved blocks per candidate (step, throughput and inference ratios)
    inner: int         # calls per block for step-level measurements
    fast_repeats: int  # blocks for the microsecond-scale switch measurement
    fast_inner: int    # calls per block there
    slow_inner: int    # calls per block for reloads and swaps (milliseconds)
    n_images: int      # images per pretraining block (one fit epoch)
    train_steps: int   # SAM training steps before a state is frozen and stored
    # precision (measurement 6; bf16 without native instructions is ~15x slower: fewer, smaller blocks)
    precision_repeats: int = 2   # interleaved blocks per precision
    precision_images: int = 32   # images per block (one train_one_epoch)
    psnr_images: int = 64        # builtin training thumbnails of the fp32-vs-bf16 PSNR budget
    psnr_epochs: int = 1         # epochs of that budget
    psnr_test_images: int = 32   # builtin test thumbnails it is evaluated on


FULL = Settings(repeats=15, inner=3, fast_repeats=21, fast_inner=300, slow_inner=5, n_images=1280, train_steps=5,
                precision_repeats=5, precision_images=256, psnr_images=1024, psnr_epochs=2, psnr_test_images=500)
QUICK = Settings(repeats=3, inner=1, fast_repeats=3, fast_inner=10, slow_inner=2, n_images=48, train_steps=2)


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
