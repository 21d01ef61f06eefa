"""Stage ``report``: the paper's tables, figures, claims and results page, from the evaluate stage.

Reads ``reports/<run>/metrics/`` (evaluation.csv, evaluate.json, validation.csv), the bases study's
``reports/<run>/ablations/bases.csv`` where it ran, and ``build/<run>/``
(eval/reconstructions.npy, eval/per_image.safetensors, the sam cells' JSONs); checks every input
before it writes anything (``pipeline.report.inputs``). Writes under ``reports/<run>/``: ``tables/``,
``figures/``, ``plots/`` (for ``dvc plots``), ``claims.json``, ``claims.md`` and, last, from those
files, ``README.md`` (``pipeline.report.page``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import claims
from ..model import bandwidth_note
from ..paths import Paths
from ..report import figures, page
from ..report.frames import summarise
from ..report.inputs import read_inputs
from ..report.tables import plot_data, write_tables
from ..tracking import Tracker
from . import provenance, run, save_figure, write_text

if TYPE_CHECKING:
    from ..config import Params


def main(params: Params, paths: Paths) -> None:
    inputs = read_inputs(params, paths)  # fails (exit 2) before anything is written
    domains = list(params.domains.names)
    frames = summarise(inputs, domains)
    entries = claims.check_all(inputs.tidy, inputs.summary, inputs.per_image)
    gains = claims.main_gains(inputs.tidy, inputs.per_image, inputs.bases)
    out = paths.reports
    with Tracker(params, paths, "report") as tracker:
        prov = provenance(params, paths, tracker.run_id)
        header = (claims.provenance_line(prov) + f" · source `{paths.evaluation_csv.relative_to(out).as_posix()}` · "
                  f"reference PSNR (pretrained Tx→Rx, base test) {inputs.summary['reference_psnr']:.2f} dB · "
                  f"bandwidth {bandwidth_note(params.model.bandwidth_ratio)}")
        written = write_tables(frames, paths.tables, header)
        for name, draw in figures.figures(inputs, frames, params).items():
            save_figure(draw(), paths.figures / f"{name}.png")
            written.append(paths.figures / f"{name}.png")
        for name, frame in plot_data(frames, domains).items():
            write_text(paths.plots / f"{name}.csv", frame.to_csv(index=False))
            written.append(paths.plots / f"{name}.csv")
        written += claims.write_claims(entries, out, prov, gains)
        written.append(page.write_page(out))  # from the files above: after them
        for path in written:  # on the stage's run and on the execution's (parent) run, where a reader looks first
            folder = path.parent.relative_to(out).as_posix() if path.parent != out else None
            tracker.log_artifact(path, folder)
            tracker.log_parent_artifact(path, folder)
        tracker.log_metrics({f"claim_{e['id']}_pass": float(e["status"] == claims.PASS) for e in entries})
        tracker.set_tags({f"claim.{e['id']}": e["status"] for e in entries})
    for e in entries:
        print(f"report: {e['id']} {e['kind']} {e['status']}: {e['summary']}")
    failed = claims.failed_guarantees(entries)
    verdict = "all PASS" if not failed else "FAILED: " + ", ".join(failed)
    print(f"report: {len(written)} files in {out}; guarantees {verdict}")
    if tracker.runs_page:
        print(f"report: MLflow: `mlflow ui --host 127.0.0.1`, then {tracker.runs_page} (this run's tables and "
              "figures are on its parent run)")


if __name__ == "__main__":
    run(main, memo="report")
