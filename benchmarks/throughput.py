"""Measurement 6: training throughput by ``train.precision``, base PSNR by precision on one fixed
budget, and achieved GFLOP/s against the CPU's peak.

Every candidate trains through ``pipeline.train.train_one_epoch`` with its ``precision`` argument.
channels_last is measured beside them on the CPU (a forward that converts the input, the model
converted once), because the pipeline leaves it out there: this row is the evidence.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.config import Params
from pipeline.paths import Paths
from pipeline.data import builtin_pools, to_tensor
from pipeline.train import BF16_CPU_FLAGS, cpu_flags, evaluate_psnr, train_one_epoch

from .micro import make_model, random_images
from .timing import Settings, interleaved, med, paired_ratio

PRECISIONS = ("fp32", "bf16")
TRAIN_FLOPS_PER_MAC = 2 * 3  # a multiply-add is 2 FLOPs; backward costs about twice the forward


# ------------------------------------------------------------------------------------- counting
def conv_macs(model: nn.Module, shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-adds of one forward of ``model`` on an input of ``shape``, over its Conv2d,
    ConvTranspose2d and Linear layers (PReLU, power normalisation and noise are elementwise: left out).

    Conv2d: every output value is a dot product over ``weight[0]`` ((C_in/groups)·k_h·k_w);
    ConvTranspose2d scatters every input value over ``weight[0]`` ((C_out/groups)·k_h·k_w).
    """
    total = [0]

    def hook(m, inputs, out):
        if isinstance(m, nn.ConvTranspose2d):
            total[0] += inputs[0].numel() * m.weight[0].numel()
        elif isinstance(m, nn.Conv2d):
            total[0] += out.numel() * m.weight[0].numel()
        else:
            total[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the channel's noise leaves no trace
            model(torch.zeros(shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total[0] // shape[0]


@dataclass(frozen=True)
class Peak:
    """The CPU's peak FLOP/s from its flags and clock: cores × clock × FLOPs per cycle and core."""
    ghz: float
    fp32_per_cycle: int
    bf16_per_cycle: int
    fp32_isa: str
    bf16_isa: str

    def gflops(self, precision: str, cores: int) -> float:
        per_cycle = self.bf16_per_cycle if precision == "bf16" else self.fp32_per_cycle
        return cores * self.ghz * per_cycle


def cpu_clock_ghz(cpuinfo: Path = Path("/proc/cpuinfo")) -> float:
    """The highest ``cpu MHz`` in ``cpuinfo``, in GHz (under a hypervisor: its nominal clock, no boost)."""
    with contextlib.suppress(OSError):
        mhz = [float(line.split(":", 1)[1]) for line in cpuinfo.read_text().splitlines()
               if line.startswith("cpu MHz")]
        if mhz:
            return max(mhz) / 1000
    return float("nan")


def cpu_peak(flags: frozenset[str], ghz: float) -> Peak:
    """FLOPs per cycle and core from the flags, assuming two FMA pipes of the widest vector width
    (Intel Xeon, AMD Zen 3 and Zen 5; Zen 4 runs 512-bit FMAs as two 256-bit halves: half the AVX-512
    figure). bf16: AVX512-BF16's VDPBF16PS does 32 bf16 multiply-adds per instruction (64 FLOPs, two
    pipes: 128); an AMX tile multiply, 16·16·32 multiply-adds in 16 cycles: 1024; without either,
    bf16 is converted to fp32 and can do no better than fp32."""
    if "avx512f" in flags:
        fp32, isa = 2 * 16 * 2, "AVX-512: 2 FMA pipes × 16 fp32 lanes × 2"
    elif {"avx2", "fma"} <= flags:
        fp32, isa = 2 * 8 * 2, "AVX2: 2 FMA pipes × 8 fp32 lanes × 2"
    elif "avx" in flags:
        fp32, isa = 2 * 8, "AVX without FMA: 8 lanes × (1 mul + 1 add)"
    else:
        fp32, isa = 2 * 4, "SSE: 4 lanes × (1 mul + 1 add)"
    if "amx_bf16" in flags:
        bf16, bisa = 1024, "AMX-BF16: 16·16·32 multiply-adds per 16 cycles × 2"
    elif "avx512_bf16" in flags:
        bf16, bisa = 2 * 32 * 2, "AVX512-BF16: 2 pipes × 32 bf16 pairs × 2"
    else:
        bf16, bisa = fp32, f"no {' or '.join(BF16_CPU_FLAGS)}: bf16 computes through fp32"
    return Peak(ghz, fp32, bf16, isa, bisa)


def this_cpu_peak() -> Peak:
    return cpu_peak(cpu_flags(), cpu_clock_ghz())


# ---------------------------------------------------------------------------------- measurements
def measure_precision(params: Params, s: Settings, *, device="cpu", width: int | None = None) -> dict[str, float]:
    """Images/s of ``train_one_epoch`` in fp32 and bf16 (and fp32 with channels_last on the CPU),
    interleaved; same seeded model, data, batch and Adam; plus the model's multiply-adds per image."""
    dev = torch.device(device)
    n = s.precision_images
    images = random_images(n, seed=7)
    variants = {p: p for p in PRECISIONS}
    if dev.type == "cpu":  # on CUDA, to_float already hands channels_last batches to the model
        variants["fp32_channels_last"] = "fp32"
    fns = {}
    for name, precision in variants.items():
        model = make_model(params, width=width, device=device, seed=params.pretrain.seed)
        if name.endswith("channels_last"):
            model = model.to(memory_format=torch.channels_last)

            def forward(x, gen, model=model):
                return model(x.contiguous(memory_format=torch.channels_last), gen)
        else:
            def forward(x, gen, model=model):
                return model(x, gen)
        opt = torch.optim.Adam(model.parameters(), lr=params.pretrain.lr)
        fns[name] = (lambda model=model, opt=opt, forward=forward, precision=precision: train_one_epoch(
            model, opt, images, forward, epoch=0, seed=params.pretrain.seed, batch_size=params.train.batch_size,
            device=dev, desc="benchmark", precision=precision))
    t = interleaved(fns, repeats=s.precision_repeats, device=device, warmup=1)
    out = {f"{k}_images_per_s": n / med(v) for k, v in t.items()}
    out["bf16_speedup"] = paired_ratio(t, "fp32", "bf16")  # time fp32 / time bf16, per repeat
    if "fp32_channels_last" in t:
        out["channels_last_speedup"] = paired_ratio(t, "fp32", "fp32_channels_last")
    out["images"] = float(n)
    out["macs_per_image"] = float(conv_macs(make_model(params, width=width, device=device)))
    return out


def measure_precision_psnr(params: Params, s: Settings, *, device="cpu") -> dict[str, float]:
    """Base test PSNR (fp32 evaluation) after the same budget trained in fp32 and in bf16:
    ``s.psnr_epochs`` epochs over ``s.psnr_images`` builtin thumbnails (training photos), tested on
    ``s.psnr_test_images`` thumbnails of the test photos; same initial weights, seeds, batch and
    Adam as pretraining. A third run, fp32 with the next seed for shuffling and channel noise, gives
    the budget's run-to-run spread to read the bf16 - fp32 difference against. The fp32 and bf16
    epochs alternate; their wall time is kept as a second throughput figure."""
    dev = torch.device(device)
    train_np, test_np, _ = builtin_pools(params, Paths.of(params), s.psnr_images, s.psnr_test_images)
    train_x, test_x = to_tensor(train_np), to_tensor(test_np)
    seed = params.pretrain.seed
    plan = {"fp32": ("fp32", seed), "bf16": ("bf16", seed), "fp32_reseeded": ("fp32", seed + 1)}  # precision, seed
    runs = {}
    for name in plan:
        model = make_model(params, device=device, seed=seed)
        runs[name] = (model, torch.optim.Adam(model.parameters(), lr=params.pretrain.lr))
    seconds = dict.fromkeys(runs, 0.0)
    for epoch in range(s.psnr_epochs):
        for name in (PRECISIONS if epoch % 2 == 0 else PRECISIONS[::-1]) + ("fp32_reseeded",):
            model, opt = runs[name]
            start = time.perf_counter()
            train_one_epoch(model, opt, train_x, lambda x, gen, m=model: m(x, gen), epoch=epoch, seed=plan[name][1],
                            batch_size=params.train.batch_size, device=dev, desc="benchmark psnr",
                            precision=plan[name][0])
            seconds[name] += time.perf_counter() - start
    out: dict[str, float] = {}
    for name, (model, _) in runs.items():
        model.eval()
        out[f"psnr_{name}"] = evaluate_psnr(lambda x, gen, m=model: m(x, gen), test_x,
                                            noise_seed=params.evaluate.noise_seed, batch_size=256, device=dev)
    for p in PRECISIONS:
        out[f"psnr_{p}_images_per_s"] = len(train_x) * s.psnr_epochs / seconds[p]
    out.update({"psnr_images": float(len(train_x)), "psnr_test_images": float(len(test_x)),
                "psnr_epochs": float(s.psnr_epochs)})
    return out
