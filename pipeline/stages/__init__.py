"""One thin entry point per DVC stage (``python -m pipeline.stages.<stage>``).

Shared here: the error boundary (one line, non-zero exit, nothing written) and atomic writers.
Each entry point builds the run's ``Paths`` once and hands it down; a stage owns its outputs and
passes their paths to the code below it.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..config import InputError, load
from ..paths import REPO, Paths
from ..storage import keep_lock, write_atomic, write_atomic_with, write_json, write_text  # noqa: F401 - for the stages

if TYPE_CHECKING:
    from ..config import Params

EXIT_BAD_INPUT = 2


def run(main: Callable[[Params, Paths], None], root: Path | None = None) -> None:
    """Validate ``<root>/params.yaml`` (root: this checkout), then run ``main(params, paths)``;
    bad input ends with one line on stderr and exit code 2."""
    root = REPO if root is None else Path(root)
    try:
        params = load(root / "params.yaml")
        keep_lock(root)  # the whole dvc.lock a kill while DVC records this stage would cut short
        main(params, Paths.of(params, root))
    except InputError as err:  # params, data, model and SAM file errors all derive from it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def write_rows(path: Path, rows: list[dict], fieldnames: Sequence[str]) -> None:
    """Write dicts as CSV atomically (with the csv module's \\r\\n line ends)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fieldnames)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_npy(path: Path, arr: np.ndarray) -> None:
    write_atomic_with(path, lambda f: np.save(f, arr, allow_pickle=False))


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    write_atomic_with(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def provenance(params: Params, paths: Paths, run_id: str | None) -> dict:
    """What produced a report: written into every metrics file and report."""
    from ..tracking import git_commit
    return {"profile": params.profile, "data_source": params.data.source, "git_commit": git_commit(paths.root),
            "mlflow_run_id": run_id or "not tracked"}
