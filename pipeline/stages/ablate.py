"""Stage ``ablate --study NAME``: one study of ``pipeline/studies/`` (a DVC matrix over ``ablate.studies``)
on the domains of ``ablate.domains``: its table (``ablations/<study>.{csv,md}``, with the finding stated
with numbers) and its figure (``figures/ablation_<study>.png``)."""
from __future__ import annotations

import argparse
import shutil
import sys
from typing import TYPE_CHECKING

from ..config import ConfigError
from ..methods import Context
from ..studies import registry
from ..tracking import Tracker
from ..train import setup_runtime
from . import log_to_parent, run, save_figure, write_table

if TYPE_CHECKING:
    from ..config import Params
    from ..paths import Paths


def study_arg(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True, help="a name of ablate.studies")
    return ap.parse_args(argv).study


def main(params: Params, paths: Paths, argv: list[str] | None = None) -> None:
    name = study_arg(argv)
    if name not in params.ablate.studies:
        raise ConfigError(f"ablate: --study {name!r} not in ablate.studies {list(params.ablate.studies)}")
    study = registry()[name]  # the params check knows every name of ablate.studies
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"), checkpoints=paths.checkpoints / "ablate" / name)
    with Tracker(params, paths, "ablate", name) as tracker:
        df, finding, fig = study.run(ctx)
        write_table(df, name, params, paths, tracker.run_id, finding)
        path = paths.figures / f"ablation_{name}.png"
        save_figure(fig, path)
        tracker.log_artifact(path, "figures")
        log_to_parent(tracker, paths, name, path)
        tracker.set_tags({"finding": finding[:5000]})
    shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    print(f"ablate {name}: {finding}")


if __name__ == "__main__":
    run(main, memo=f"ablate@{study_arg(sys.argv[1:])}")
