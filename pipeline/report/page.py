"""The results page ``reports/<run>/README.md``, rendered from the report folder's own files only.

Its headline tables are the folder's ``tables/*.md``, its claims ``claims.json`` (with the findings'
per-domain verdicts and the main gains' intervals over seeds and over bases, where it has them), its times the
``metrics/*.json`` files, its ablations ``ablations/*.md``; figures are embedded by relative path.
Nothing is re-run and nothing depends on the clock, so a committed folder can be regenerated:

    python -m pipeline.report.page reports/<source>-<profile>

A file the page needs that is missing or unreadable ends the command with one line and exit code 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..claims import gains_lines, per_domain_lines
from ..config import InputError
from ..storage import write_text

PAGE = "README.md"
# Embedded tables (the rest of tables/ is linked), in this order, with their headings.
HEADLINE = {"main": "Main comparison", "domain_psnr": "Domain PSNR per domain (dB)",
            "controls": "Controls: adaptation, not undertraining", "misalignment": "Misalignment (dB)"}
# Figures the report stage draws (pipeline.report.figures.figures), in the page's order, with captions;
# other figures of the folder (the domains preview, the studies') follow them in name order.
FIGURES = {
    "psnr_vs_bytes": "Gain in domain PSNR over the pretrained model against the bytes an agent stores",
    "psnr_vs_sparsity": "Gain in domain PSNR over the pretrained model against the sparsity γ",
    "misalignment": "Misalignment after each method's alignment step",
    "memory_vs_sparsity": "Stored SAM size against the sparsity γ",
    "memory_network": "Memory of a network of K agents",
    "pair_matrix": "Pair PSNR, A's Tx to B's Rx",
    "reconstructions": "Test images and their reconstructions",
}
REQUIRED = ("claims.json", "metrics/pretrain.json", "metrics/evaluate.json",
            *(f"tables/{t}.md" for t in HEADLINE), *(f"figures/{f}.png" for f in FIGURES))
SEEDS_NOTE = "cells: mean over seeds ± 95 % half-width"
STAGE_ORDER = {"pretrain": 0, "evaluate": 1}  # the pipeline's order; other metrics files follow by name
MACHINE = ("device", "device_name", "torch", "threads", "cpu_count", "precision")


class PageError(InputError):
    """A report folder the page cannot be rendered from (exit code 2)."""


def _read(folder: Path, name: str) -> str:
    path = folder / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PageError(f"page: {path} not found; run the report stage (dvc repro report) first") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PageError(f"page: {path} unreadable ({type(err).__name__}: {err})") from None


def _json(folder: Path, name: str) -> dict:
    try:
        doc = json.loads(_read(folder, name))
    except ValueError as err:
        raise PageError(f"page: {folder / name} is not JSON ({err})") from None
    if not isinstance(doc, dict):
        raise PageError(f"page: {folder / name} holds a {type(doc).__name__}, expected an object")
    return doc


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def _split_table_md(folder: Path, name: str) -> tuple[list[str], list[str]]:
    """A report table's Markdown: its header line split at ' · ', and the table's lines."""
    lines = _read(folder, name).splitlines()
    if not lines or not any(line.startswith("|") for line in lines):
        raise PageError(f"page: {folder / name} holds no Markdown table")
    return lines[0].split(" · "), [line for line in lines[1:] if line.startswith("|")]


def provenance(folder: Path, claims: dict, pretrain: dict) -> list[str]:
    prov = claims.get("provenance")
    if not isinstance(prov, dict):
        raise PageError(f"page: {folder / 'claims.json'} has no provenance object")
    header, _ = _split_table_md(folder, "tables/main.md")
    lines = ["## Provenance", ""]
    lines += [f"- {key.replace('_', ' ')}: `{value}`" for key, value in prov.items()]
    lines += [f"- {part}" for part in header[len(prov):] if not part.startswith(SEEDS_NOTE)]
    runtime = pretrain.get("runtime")
    if isinstance(runtime, dict):
        machine = ", ".join(f"{k} {runtime[k]}" for k in MACHINE if k in runtime)
        lines.append(f"- machine (metrics/pretrain.json): {machine}")
    return lines


def claims_section(folder: Path, claims: dict) -> list[str]:
    entries = claims.get("claims")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PageError(f"page: {folder / 'claims.json'} has no list of claims")
    try:
        rows = [[e["id"], e["kind"], e["statement"], e["summary"], f"**{e['status']}**"] for e in entries]
    except KeyError as err:
        raise PageError(f"page: a claim in {folder / 'claims.json'} lacks {err}") from None
    lines = ["## Claims", "", "Guarantees hold by construction (a failed one fails CI); findings are measured and "
             "reported as they are. Definitions and every measured value: [claims.md](claims.md).", "",
             *_table(["id", "kind", "statement", "measured", "verdict"], rows)]
    try:
        if per := per_domain_lines(entries):
            lines += ["", "### Findings per domain", "", *per]
        if (gains := claims.get("gains")) is not None:
            lines += ["", "### Main gains: over seeds and over bases", "", *gains_lines(gains)]
    except (KeyError, TypeError, ValueError) as err:
        raise PageError(f"page: {folder / 'claims.json'}: per-domain or gains values malformed "
                        f"({type(err).__name__}: {err})") from None
    return lines


def tables_section(folder: Path) -> list[str]:
    lines = ["## Headline tables", ""]
    header, _ = _split_table_md(folder, "tables/main.md")
    if header[-1].startswith(SEEDS_NOTE):
        lines += [header[-1][0].upper() + header[-1][1:] + ".", ""]
    for name, title in HEADLINE.items():
        _, table = _split_table_md(folder, f"tables/{name}.md")
        lines += [f"### {title} ([tables/{name}.md](tables/{name}.md))", "", *table, ""]
    others = sorted(p.stem for p in (folder / "tables").glob("*.md") if p.stem not in HEADLINE)
    if others:
        lines.append("Other tables (Markdown; CSV and LaTeX beside them): "
                     + ", ".join(f"[{n}](tables/{n}.md)" for n in others) + ".")
    return lines


def figures_section(folder: Path) -> list[str]:
    lines = ["## Figures", ""]
    extra = sorted(p.stem for p in (folder / "figures").glob("*.png") if p.stem not in FIGURES)
    for name in [*FIGURES, *extra]:
        caption = FIGURES.get(name, name.replace("_", " "))
        lines += [f"### {caption}", "", f"![{caption}](figures/{name}.png)", ""]
    return lines[:-1]


def _seconds(value) -> str:
    return f"{value:,.1f} s".replace(",", " ")


def times_section(folder: Path) -> list[str]:
    """Every time a stage's metrics file records (a top-level key naming seconds), file by file."""
    rows = []
    files = sorted((folder / "metrics").glob("*.json"),
                   key=lambda p: (STAGE_ORDER.get(p.stem, len(STAGE_ORDER)), p.stem))
    for path in files:
        doc = _json(folder, f"metrics/{path.name}")
        found = {k: v for k, v in doc.items() if "seconds" in k and isinstance(v, (int, float))}
        measured = "; ".join(f"{k.replace('_', ' ')}: {_seconds(v)}" for k, v in found.items())
        if isinstance(doc.get("images_per_second"), (int, float)):
            measured += f"; {doc['images_per_second']:.0f} images/s"
        rows.append([path.stem, f"[metrics/{path.name}](metrics/{path.name})", measured or "no time recorded"])
    return ["## Time per stage", "", "As the stages' metrics files record it (the machine: see Provenance).", "",
            *_table(["stage", "file", "time"], rows)]


def _finding(text: str) -> tuple[str, list[str]]:
    """An ablation's Markdown: its title (first '# ' heading) and its prose (no comment, heading or table)."""
    lines = text.splitlines()
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), "")
    prose = [line for line in lines if line.strip() and not line.startswith(("<!--", "#", "|"))]
    return title, prose


def ablations_section(folder: Path) -> list[str]:
    studies = sorted((folder / "ablations").glob("*.md")) if (folder / "ablations").is_dir() else []
    if not studies:
        return []
    lines = ["## Ablations", ""]
    for path in studies:
        title, prose = _finding(_read(folder, f"ablations/{path.name}"))
        csv = f" ([csv](ablations/{path.stem}.csv))" if path.with_suffix(".csv").is_file() else ""
        lines += [f"### {title or path.stem}", "", *(p for line in prose for p in (line, "")),
                  f"Table: [ablations/{path.name}](ablations/{path.name}){csv}.", ""]
    loose = sorted(p.name for p in (folder / "ablations").glob("*.csv") if not p.with_suffix(".md").is_file())
    if loose:
        lines += ["Other study data: " + ", ".join(f"[{n}](ablations/{n})" for n in loose) + ".", ""]
    return lines[:-1]


def render(folder: Path) -> str:
    """The page's Markdown, from ``folder``'s files only; raises PageError (one line) for a missing one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PageError(f"page: {folder} is not a folder; expected reports/<source>-<profile>")
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise PageError(f"page: {folder / name} not found; run the report stage (dvc repro report) first")
    claims, pretrain = _json(folder, "claims.json"), _json(folder, "metrics/pretrain.json")
    _json(folder, "metrics/evaluate.json")
    sections = [
        [f"# Results: {folder.name}", "",
         f"Generated from this folder's files by `python -m pipeline.report.page reports/{folder.name}` "
         "(the report stage runs it last); do not edit by hand."],
        claims_section(folder, claims), tables_section(folder), figures_section(folder), times_section(folder),
        ablations_section(folder), provenance(folder, claims, pretrain)]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


def write_page(folder: Path) -> Path:
    """Render ``folder/README.md`` (atomically) and return its path."""
    text = render(folder)
    write_text(Path(folder) / PAGE, text)
    return Path(folder) / PAGE


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipeline.report.page reports/<source>-<profile>", file=sys.stderr)
        return 2
    try:
        path = write_page(Path(args[0]))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"page: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
