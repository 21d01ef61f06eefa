"""The report's tables: which frame each one shows, how its numbers are written, CSV/Markdown/LaTeX.

A table that aggregates seeds writes each cell as 'mean ± 95 % half-width' (Markdown, LaTeX) and the
half-width in its own ``<column>_ci95`` column (CSV).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..selection import STATUSES
from ..storage import write_text
from .frames import Cells, Frames, sam_rows

CI = "_ci95"                                                     # suffix of a 95 % half-width column
DB, SSIM, PCT, GAMMA = ".2f", ".4f", ".3f", "g"                  # how numbers are written
SEEDS_NOTE = " · cells: mean over seeds ± 95 % half-width (Student-t; one seed: the mean alone)"


def table_specs(frames: Frames) -> dict[str, tuple[Cells, dict[str, str]]]:
    """name -> (cells, number format per column), in the order they are written; ``validation`` is
    absent when no method searched a grid."""
    def formats(cells: Cells, default: str, **special: str) -> dict[str, str]:
        return {"sparsity_pct": GAMMA, **{str(c): special.get(str(c), SSIM if "ssim" in str(c) else default)
                                          for c in cells.mean.columns}}

    memory_pct = {c: PCT for c in frames.memory.mean.columns if "pct" in c}
    specs = {
        "main": (frames.main, formats(frames.main, DB, memory_cost_pct=PCT, seeds="d")),
        "domain_psnr": (frames.domain_psnr, formats(frames.domain_psnr, DB)),
        "domain_ssim": (frames.domain_ssim, formats(frames.domain_ssim, SSIM)),
        "misalignment": (frames.misalignment, formats(frames.misalignment, DB)),
        "memory": (frames.memory, formats(frames.memory, "d", **memory_pct)),
        "memory_network": (frames.memory_network, formats(frames.memory_network, "d", per_agent_cost_pct=PCT)),
        "pair_psnr": (frames.pair_psnr, formats(frames.pair_psnr, DB)),
        "cross_traffic": (frames.cross_traffic, formats(frames.cross_traffic, DB)),
        "mask_movement": (frames.mask_movement, formats(frames.mask_movement, PCT)),
        "controls": (frames.controls, formats(frames.controls, DB)),
        "validation": (frames.validation, {"sparsity_pct": GAMMA, "val_psnr": DB, "point": "d"}),
    }
    return {name: spec for name, spec in specs.items() if spec[0] is not None}


def flat_table(cells: Cells, fmt: dict[str, str]) -> pd.DataFrame:
    """Index as leading columns, γ in %; where the table aggregates seeds each column is followed by its
    95 % half-width ``<column>_ci95`` (empty with one seed); numbers rounded as written."""
    frame = cells.mean
    if cells.ci is not None:
        frame = pd.concat([part for c in cells.mean.columns for part in
                           ([cells.mean[c]] + ([cells.ci[c].rename(f"{c}{CI}")] if c in cells.ci else []))], axis=1)
    flat = frame.reset_index()
    flat.columns = [str(c) for c in flat.columns]
    flat = flat.rename(columns={"sparsity": "sparsity_pct"})
    flat["sparsity_pct"] = (100 * flat["sparsity_pct"]).round(6)
    for column in flat.columns:
        f = fmt.get(column.removesuffix(CI), "")
        if f.endswith("f"):
            flat[column] = flat[column].round(int(f[1:-1]))
        elif f == "d":
            flat[column] = flat[column].round().astype("Int64")
    return flat


def _written(value, f: str) -> str:
    if pd.isna(value):
        return ""
    return value if isinstance(value, str) else format(int(value) if f == "d" else value, f or "g")


def display_table(flat: pd.DataFrame, fmt: dict[str, str]) -> pd.DataFrame:
    """The table as written for a reader: a half-width column joins its column as 'mean ± half-width'."""
    out = {}
    for column in (c for c in flat.columns if not c.endswith(CI)):
        f, means = fmt.get(column, ""), flat[column].astype(object)
        halves = flat[column + CI].astype(object) if column + CI in flat else [None] * len(flat)
        out[column] = [_written(m, f) + (f" ± {_written(h, f)}" if h is not None and not pd.isna(h) else "")
                       for m, h in zip(means, halves)]
    return pd.DataFrame(out)


def render_table(flat: pd.DataFrame, fmt: dict[str, str], header: str, footer: str = "") -> tuple[str, str, str]:
    """CSV (half-widths in their own columns), Markdown (header line first, ``footer`` last) and LaTeX
    (header and footer as comments)."""
    shown = display_table(flat, fmt)
    align = ["right" if pd.api.types.is_numeric_dtype(flat[c]) else "left" for c in shown.columns]
    markdown = shown.to_markdown(index=False, disable_numparse=True, colalign=align)
    latex = (shown.style.hide(axis="index").format(escape="latex")
             .format_index(escape="latex", axis=1).to_latex(hrules=True))
    return (flat.to_csv(index=False), f"{header}\n\n{markdown}\n" + (f"\n{footer}\n" if footer else ""),
            f"% {header}\n" + (f"% {footer}\n" if footer else "") + latex)


def choice_counts(flat: pd.DataFrame) -> dict[str, dict[str, int]]:
    """method -> status -> how many (domain, sparsity) choices x searched keys have it (``choice`` column:
    one status, or 'key: status; ...' per key); methods without a searched key are left out."""
    counts: dict[str, dict[str, int]] = {}
    for method, choice in flat.loc[flat["choice"] != "", ["method", "choice"]].itertuples(index=False):
        for part in choice.split("; "):
            state = part.rsplit(": ", 1)[-1] if part not in STATUSES else part
            counts.setdefault(method, dict.fromkeys(STATUSES, 0))[state] += 1
    return counts


def validation_summary(flat: pd.DataFrame) -> str:
    """The line under the validation table: per method, its choices by status."""
    counts = choice_counts(flat)
    return ("Choices (domain × sparsity × searched key) by status: " + "; ".join(
        f"{m}: " + ", ".join(f"{n} {s}" for s, n in c.items()) for m, c in sorted(counts.items()))
        + ".") if counts else ""


def write_tables(frames: Frames, folder: Path, header: str) -> list[Path]:
    written = []
    for name, (cells, fmt) in table_specs(frames).items():
        note = SEEDS_NOTE if cells.ci is not None else ""
        flat = flat_table(cells, fmt)
        footer = validation_summary(flat) if name == "validation" else ""
        for text, suffix in zip(render_table(flat, fmt, header + note, footer), (".csv", ".md", ".tex")):
            write_text(folder / f"{name}{suffix}", text)
            written.append(folder / f"{name}{suffix}")
    # The folder is a persistent DVC output (kept, not emptied, before the stage runs): a file this run
    # did not write, a table of older code or one left out this time, must not pass as part of this result.
    for stale in sorted(set(folder.iterdir()) - set(written)):
        stale.unlink()
    return written


def plot_data(frames: Frames, domains: list[str]) -> dict[str, pd.DataFrame]:
    """CSVs for ``dvc plots``, one row per γ: sam domain PSNR per domain, sam memory cost (max)."""
    return {"psnr_vs_sparsity": sam_rows(frames.domain_psnr.mean)[domains].reset_index(),
            "memory_vs_sparsity": sam_rows(frames.memory.mean)[["memory_cost_pct_max"]].reset_index()}
