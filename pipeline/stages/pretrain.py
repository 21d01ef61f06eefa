"""Stage ``pretrain``: train the SC autoencoder on base images (the aligned Tx/Rx pair; the recipe:
``pipeline.pretraining``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import time

from ..model import bandwidth_note
from ..pretraining import base_key, load_split, self_link, train_base
from ..train import evaluate_psnr, save_model, setup_runtime
from ..tracking import Tracker
from . import provenance, run, write_json, write_rows

if TYPE_CHECKING:
    from ..config import Params
    from ..paths import Paths


def main(params: Params, paths: Paths) -> None:
    rt = setup_runtime(params)
    device = rt.pop("device_obj")
    train_x, test_x = load_split(paths, "base_train"), load_split(paths, "base_test")
    domain_tests = {d: load_split(paths, f"{d}_test") for d in params.domains.names}
    checkpoint = paths.checkpoints / "pretrain.pt"
    ev = dict(noise_seed=params.evaluate.noise_seed, batch_size=256, device=device)
    with Tracker(params, paths, "pretrain") as tracker:
        tracker.set_tags(rt)

        trained = []  # epochs trained and timed here: after a resume, not those the checkpoint holds

        def on_epoch(model, epoch, loss):
            trained.append(epoch)
            model.eval()
            return {"test_psnr": evaluate_psnr(self_link(model), test_x, **ev)}

        key = base_key(params, ("pretrain",), train_x, test_x)
        start = time.perf_counter()
        model, history = train_base(params, train_x, seed=params.pretrain.seed, epochs=params.pretrain.epochs,
                                    device=device, checkpoint=checkpoint, key=key, on_epoch=on_epoch)
        seconds = time.perf_counter() - start
        tracker.log_history(history)
        model.eval()
        metrics = {"psnr_base_test": evaluate_psnr(self_link(model), test_x, **ev)}
        for d, xs in domain_tests.items():
            metrics[f"psnr_{d}_test"] = evaluate_psnr(self_link(model), xs, **ev)
        n_params = sum(p.numel() for p in model.parameters())
        metrics.update({"parameters": n_params, "train_seconds": seconds,
                        "images_per_second": len(train_x) * len(trained) / seconds})
        if len(trained) < params.pretrain.epochs:  # the timing covers the resumed epochs only: say so
            metrics["resumed_from_epoch"] = params.pretrain.epochs - len(trained)
        save_model(model.cpu(), paths.pretrained, {"profile": params.profile, "source": params.data.source})
        tracker.log_metrics(metrics)
        curve = paths.plots / "pretrain_curve.csv"
        write_rows(curve, history, ["epoch", "train_loss", "test_psnr"])
        tracker.log_artifact(curve, "plots")
        write_json(paths.pretrain_json,
                   {**{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
                    "bandwidth": bandwidth_note(params.model.bandwidth_ratio),
                    "runtime": rt, "provenance": provenance(params, paths, tracker.run_id)})
        checkpoint.unlink(missing_ok=True)
        print("pretrain: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float)))


if __name__ == "__main__":
    run(main, memo="pretrain")
