"""Stage ``evaluate``: every method, variant and sparsity measured against the pretrained reference
(``pipeline.evaluation``: the metrics, the tidy CSV's rows, the per-image values, the reconstructions).

Writes one tidy CSV (a row per measurement, columns ``pipeline.metrics.FIELDS``), the validation table
of every method's grid points, a DVC metrics summary, the per-image PSNR/SSIM (``Paths.per_image``) and
sample reconstructions for the report's figure.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..evaluation import VALIDATION_FIELDS, evaluate_all, reconstructions, summarise, validation_rows
from ..methods import Context
from ..metrics import FIELDS, write_per_image
from ..tracking import Tracker
from ..train import setup_runtime
from . import provenance, run, write_json, write_npy, write_rows

if TYPE_CHECKING:
    from ..config import Params
    from ..paths import Paths


def write_csv(path, rows: list[dict]) -> None:
    write_rows(path, [{**r, "value": f"{r['value']:.6f}" if isinstance(r["value"], float) else r["value"]}
                      for r in rows], FIELDS)


def main(params: Params, paths: Paths) -> None:
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"))
    with Tracker(params, paths, "evaluate") as tracker:
        per_image: dict[str, torch.Tensor] = {}
        rows, reference, variants = evaluate_all(ctx, per_image)
        write_csv(paths.evaluation_csv, rows)
        write_rows(paths.validation_csv, validation_rows(params, paths), VALIDATION_FIELDS)
        write_per_image(paths.per_image, per_image)
        summary = summarise(rows, reference)
        write_json(paths.evaluate_json, {**summary, "provenance": provenance(params, paths, tracker.run_id)})
        write_npy(paths.reconstructions, reconstructions(ctx, variants, params.evaluate.reconstructions))
        for name, vals in summary.items():
            if isinstance(vals, dict):
                tracker.log_metrics({f"{name}.{k}": v for k, v in vals.items()})
        tracker.log_artifact(paths.evaluation_csv, "metrics")
        tracker.log_artifact(paths.validation_csv, "metrics")
    print(f"evaluate: {len(rows)} measurements, reference PSNR {reference:.2f} dB")


if __name__ == "__main__":
    run(main, memo="evaluate")
