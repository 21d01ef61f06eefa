"""Stage ``validate``: check params.yaml against the schema, and what it asks of this machine (device,
data, memory: ``pipeline.checks``), before any stage touches its outputs.

Every other stage depends on this stage's stamp; with bad params DVC stops here, so no output of a
later stage is removed or rewritten. The stamp's content is constant, so a valid change of one
param re-runs only the stages that list that param.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..checks import preflight
from ..paths import Paths
from . import run, write_text

if TYPE_CHECKING:
    from ..config import Params


def main(params: Params, paths: Paths) -> None:
    preflight(params, paths)
    write_text(paths.stamp, "params.yaml validated\n")
    print(f"params.yaml is valid: profile {params.profile}, source {params.data.source}")


if __name__ == "__main__":
    run(main)
