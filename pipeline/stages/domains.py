"""Stage ``domains``: the base data set and the four local domains, as plain uint8 arrays."""
from __future__ import annotations

import hashlib

import numpy as np

from ..config import Params
from ..data import apply_domain, build_splits, grid, photo_split
from ..tracking import Tracker
from . import provenance, run, save_figure, write_json, write_npy


def data_dir(params: Params):
    return params.build_dir / "data"


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


def main(params: Params) -> None:
    with Tracker(params, "domains") as tracker:
        splits = build_splits(params)
        manifest = {"provenance": provenance(params, tracker.run_id), "splits": {}}
        photos = photo_split(params)
        if photos is not None:  # sources cut from photos: which photos the train and test tiles come from
            manifest["photos"] = photos
        for name, arr in splits.items():
            write_npy(data_dir(params) / f"{name}.npy", arr)
            manifest["splits"][name] = {"shape": list(arr.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
            tracker.log_metrics({f"n_{name}": len(arr)})
        write_json(data_dir(params) / "manifest.json", manifest)
        fig_path = params.report_dir / "figures" / "domains_preview.png"
        save_figure(preview(params, splits["base_test"]), fig_path)
        tracker.log_artifact(fig_path, "figures")
        print(f"domains: {', '.join(f'{k} {len(v)}' for k, v in splits.items())}")


if __name__ == "__main__":
    run(main)
