"""Stage ``network``: the K x K Tx -> Rx PSNR matrix of every method (``pipeline.network``): the summary
table ``ablations/network.{csv,md}`` with its finding, every link in ``network_pairs.csv``, the heat maps
``figures/network.png``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..methods import Context
from ..network import figure, pair_table, summarise
from ..tracking import Tracker
from ..train import setup_runtime
from . import log_to_parent, run, save_figure, write_table, write_text

if TYPE_CHECKING:
    from ..config import Params
    from ..paths import Paths


def main(params: Params, paths: Paths) -> None:
    rt = setup_runtime(params)
    ctx = Context(params, paths, rt.pop("device_obj"))
    with Tracker(params, paths, "network") as tracker:
        df = pair_table(ctx)
        summary, finding = summarise(df, params.domains.names)
        write_table(summary, "network", params, paths, tracker.run_id, finding)
        write_text(paths.ablations / "network_pairs.csv", df.to_csv(index=False))
        path = paths.figures / "network.png"
        save_figure(figure(df), path)
        tracker.log_artifact(path, "figures")
        log_to_parent(tracker, paths, "network", path)
        print(f"network: {finding}")


if __name__ == "__main__":
    run(main, memo="network")
