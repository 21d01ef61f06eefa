"""Stage ``domains``: the base data set and the four local domains, as plain uint8 arrays."""
from __future__ import annotations

from typing import TYPE_CHECKING

import hashlib

import numpy as np

from ..data import apply_domain, build_splits, grid, photo_split
from ..paths import Paths
from ..tracking import Tracker
from . import run, save_figure, write_json, write_npy

if TYPE_CHECKING:
    from ..config import Params


def preview(params: Params, base: np.ndarray):
    """The same base test images, and their transforms into every domain, one row each."""
    import matplotlib.pyplot as plt
    n = params.domains.preview_count
    rows = [base[:n]] + [apply_domain(d, base[:n], params.domains, params.domains.seed + 2)
                         for d in params.domains.names]
    fig, ax = plt.subplots(figsize=(1.0 * n, 1.0 * len(rows) + 0.4))
    ax.imshow(grid(rows))
    ax.set_yticks([16 + 34 * i for i in range(len(rows))], ["base", *params.domains.names])
    ax.set_xticks([])
    ax.set_title(f"Local domains ({params.data.source})", fontsize=9)
    return fig


def main(params: Params, paths: Paths) -> None:
    with Tracker(params, paths, "domains") as tracker:
        splits = build_splits(params, paths)
        # What the arrays are, and nothing that changes from run to run (run id, commit: in MLflow), so that
        # equal params give a byte-identical data folder and DVC's hash of it is a pure function of them.
        manifest = {"source": {"profile": params.profile, "data_source": params.data.source}, "splits": {}}
        photos = photo_split(params, paths)
        if photos is not None:  # sources cut from photos: which photos the train and test tiles come from
            manifest["photos"] = photos
        for name, arr in splits.items():
            write_npy(paths.split(name), arr)
            manifest["splits"][name] = {"shape": list(arr.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
            tracker.log_metrics({f"n_{name}": len(arr)})
        write_json(paths.manifest, manifest)
        fig_path = paths.figures / "domains_preview.png"
        save_figure(preview(params, splits["base_test"]), fig_path)
        tracker.log_artifact(fig_path, "figures")
        print(f"domains: {', '.join(f'{k} {len(v)}' for k, v in splits.items())}")


if __name__ == "__main__":
    run(main, memo="domains")
