"""One thin entry point per DVC stage (``python -m pipeline.stages.<stage>``).

Shared here: the error boundary (one line, non-zero exit, nothing written) and atomic writers.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import InputError, Params, load
from ..storage import write_atomic, write_atomic_with, write_text  # noqa: F401 - write_text for the stages

EXIT_BAD_INPUT = 2


def run(main: Callable[[Params], None]) -> None:
    """Validate params, then run ``main``; bad input ends with one line on stderr and exit code 2."""
    try:
        params = load()
        main(params)
    except InputError as err:  # params, data, model and SAM file errors all derive from it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: readers never see half a file, a failure keeps the old one."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_npy(path: Path, arr: np.ndarray) -> None:
    write_atomic_with(path, lambda f: np.save(f, arr, allow_pickle=False))


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    write_atomic_with(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def provenance(params: Params, run_id: str | None) -> dict:
    """What produced a report: written into every metrics file and report."""
    from ..tracking import git_commit
    return {"profile": params.profile, "data_source": params.data.source, "git_commit": git_commit(),
            "mlflow_run_id": run_id or "not tracked"}
