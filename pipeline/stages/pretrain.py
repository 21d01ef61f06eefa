"""Stage ``pretrain``: train the SC autoencoder on base images (the aligned Tx/Rx pair)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import time

import torch

from ..data import load_images, to_tensor
from ..model import bandwidth_note
from ..paths import Paths
from ..train import build_model, data_fingerprint, evaluate_psnr, fingerprint, fit, save_model, setup_runtime
from ..tracking import Tracker
from . import provenance, run, write_json, write_rows

if TYPE_CHECKING:
    from ..config import Params


def load_split(paths: Paths, name: str) -> torch.Tensor:
    return to_tensor(load_images(paths.split(name)))


def self_link(model):
    """The agent's own encoder -> channel -> decoder, as a ``decode(x, generator)`` callable."""
    return lambda x, gen: model(x, gen)


def train_base(params: Params, train_x: torch.Tensor, *, seed: int, epochs: int, device, checkpoint, key: str,
               desc: str = "pretrain", on_epoch=None):
    """A base model pretrained with the params' recipe (Adam, ``pretrain.schedule`` over ``epochs``,
    ``pretrain.clip``, ``pretrain.batch_size``): ``seed`` draws the initial weights, the data order and
    the channel noise. Returns the model (in train mode) and the per-epoch history."""
    pre = params.pretrain
    torch.manual_seed(seed)
    model = build_model(params).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=pre.lr)
    steps = epochs * -(-len(train_x) // pre.batch_size)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pre.lr, total_steps=steps, pct_start=0.15)
             if pre.schedule == "onecycle" else None)
    history = fit(model, opt, train_x, lambda x, gen: model(x, gen), epochs=epochs,
                  batch_size=pre.batch_size, seed=seed, device=device, checkpoint=checkpoint, key=key, desc=desc,
                  on_epoch=None if on_epoch is None else (lambda epoch, loss: on_epoch(model, epoch, loss)),
                  scheduler=sched, clip=pre.clip)
    return model, history


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

        key = fingerprint("pretrain", data_fingerprint(train_x, test_x),
                          params.model_dump(include={"data", "model", "train", "pretrain", "evaluate"}))
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
    run(main)
