"""Report rows and the Markdown report (tables written by ``pandas.DataFrame.to_markdown``)."""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

QUICK_GOAL_S = 360.0  # the quick profile's whole pipeline from clean on 2 CPU cores (profiles/quick.yaml)


@dataclass
class Row:
    name: str
    measured: str
    goal: str = "—"
    ratio: str = "—"
    status: str = "INFO"  # PASS, FAIL, INFO (no goal), SKIP
    metrics: dict[str, float] = field(default_factory=dict)


def fmt_t(sec: float) -> str:
    if sec < 1e-3:
        return f"{sec * 1e6:.1f} µs"
    if sec < 1:
        return f"{sec * 1e3:.2f} ms"
    return f"{sec:.1f} s"


def judge(value: float, op: str, limit: float) -> str:
    ok = value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit
    return "PASS" if ok and math.isfinite(value) else "FAIL"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def cell(text: str) -> str:
    """A table cell's text: pipes escaped, on one line (tabulate does neither)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[str] = ()) -> str:
    """A Markdown (pipe) table of text cells; ``right``: the columns aligned right (numbers).

    Cells are strings already formatted by the caller, so number parsing is off (it would print
    "1.000" as "1")."""
    frame = pd.DataFrame([[cell(c) for c in r] for r in rows], columns=[cell(c) for c in columns])
    return frame.to_markdown(index=False, disable_numparse=True,
                             colalign=["right" if c in right else "left" for c in columns])


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


def markdown(rows: Sequence[Row], info: Mapping[str, str], sections: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    lines = ["# zfda-bench benchmarks", "",
             "Written by `python -m benchmarks`. Ratios are medians of per-repeat ratios of interleaved "
             "blocks (side by side on the same loaded machine); times are medians. Ratio column: the measured "
             "ratio the goal is about, or for an absolute goal the measured value over the goal.", ""]
    lines += [f"- **{k}**: {cell(v)}" for k, v in info.items()]
    lines += ["", table(["Measurement", "Measured", "Goal", "Ratio", "Status"],
                        [(r.name, r.measured, r.goal, r.ratio, r.status) for r in rows], right=["Ratio"])]
    for n in notes:
        lines += ["", n]
    for sec in sections:
        if sec:
            lines += ["", sec]
    return "\n".join(lines) + "\n"
