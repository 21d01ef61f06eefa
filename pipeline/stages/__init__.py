"""One thin entry point per DVC stage (``python -m pipeline.stages.<stage>``).

Shared here: the error boundary (one line, non-zero exit, nothing written), atomic writers and the
study tables of ``ablate`` and ``network``. Each entry point builds the run's ``Paths`` once and hands it
down; a stage owns its outputs and passes their paths to the code below it; no stage imports another.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..config import InputError, load
from ..memo import Memo
from ..paths import REPO, Paths
from ..storage import (keep_lock, save_figure, write_atomic, write_atomic_with, write_json, write_npy,  # noqa: F401
                       write_rows, write_text)  # the stages' writers

if TYPE_CHECKING:
    from ..config import Params

EXIT_BAD_INPUT = 2


def run(main: Callable[[Params, Paths], None], root: Path | None = None, memo: str | None = None) -> None:
    """Validate ``<root>/params.yaml`` (root: this checkout), then run ``main(params, paths)``;
    bad input ends with one line on stderr and exit code 2. ``memo``: the dvc.yaml stage this is, whose
    outputs are restored instead of recomputed when its content key is unchanged (``pipeline.memo``)."""
    root = REPO if root is None else Path(root)
    try:
        params = load(root / "params.yaml")
        keep_lock(root)  # the whole dvc.lock a kill while DVC records this stage would cut short
        paths = Paths.of(params, root)
        cache = Memo(params, paths, memo) if memo else None
        if cache is not None and cache.restore():
            return
        main(params, paths)
        if cache is not None:
            cache.save()
    except InputError as err:  # params, data, model and SAM file errors all derive from it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def provenance(params: Params, paths: Paths, run_id: str | None) -> dict:
    """What produced a report: written into every metrics file and report."""
    from ..tracking import git_commit
    return {"profile": params.profile, "data_source": params.data.source, "git_commit": git_commit(paths.root),
            "mlflow_run_id": run_id or "not tracked"}


def write_table(df, name: str, params: Params, paths: Paths, run_id: str | None, finding: str) -> None:
    """A study's table as ``ablations/<name>.csv`` and ``.md`` (provenance, the finding, the table)."""
    folder = paths.ablations
    write_text(folder / f"{name}.csv", df.to_csv(index=False))
    prov = provenance(params, paths, run_id)
    head = ", ".join(f"{k}: {v}" for k, v in prov.items())
    write_text(folder / f"{name}.md", f"<!-- {head} -->\n# {name}\n\n**Finding.** {finding}\n\n"
                                      f"{df.to_markdown(index=False, floatfmt='.3f')}\n")


def log_to_parent(tracker, paths: Paths, table: str, figure: Path) -> None:
    """A study's table and figure on the execution's parent run, beside the report's."""
    tracker.log_parent_artifact(figure, "figures")
    for ext in ("csv", "md"):
        tracker.log_parent_artifact(paths.ablations / f"{table}.{ext}", "ablations")
