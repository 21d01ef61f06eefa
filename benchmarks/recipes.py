"""The pretraining recipe search of the full profile: which recipe gets the base furthest per
minute of 2-core CPU time, chosen on the base *validation* images.

``python -m benchmarks.recipes [--profile full] [--epochs 30]`` trains every recipe of ``RECIPES`` from
the same seed on the profile's base training images (``build/<run>/data/base_train.npy``, written by its
``domains`` stage) for the same number of epochs, one after another, and after every epoch measures the
PSNR on the base validation images (fp32, ``evaluate.noise_seed``). A recipe is a set of overrides of the
profile's ``pretrain`` (and ``model``) params and trains through the pipeline's own
``pipeline.pretraining.train_base``, so the winner can be put into the profile as it is. The choice is
the highest validation PSNR at the end of the budget; test images are not read.

Written under ``reports/<run>/ablations/``: ``pretrain_recipes.csv`` (every recipe's per-epoch validation
PSNR and cumulative training seconds, evaluation excluded) and ``pretrain_recipes.md``. A recipe already
in the CSV with the same key (params, epochs, data) is not trained again, so a new recipe can be appended.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd

from pipeline import profile as profiles
from pipeline.config import parse
from pipeline.paths import Paths
from pipeline.profile import merge
from pipeline.pretraining import load_split, train_base
from pipeline.train import data_fingerprint, evaluate_psnr, fingerprint, setup_runtime

# The recipe the full profile had when the search was made. Every recipe is a change of it (``_was``), not
# of the profile's current recipe (the search chose batch 32, which the profile now uses), so each recipe
# stays the training the committed CSV measured whatever the profile says later.
SEARCH_START = {"pretrain": {"lr": 0.001, "schedule": "onecycle", "batch_size": 128, "clip": 1.0},
                "model": {"norm": "none"}}


def _was(pretrain: dict | None = None, model: dict | None = None) -> dict:
    return merge(SEARCH_START, {"pretrain": pretrain or {}, "model": model or {}})


# name -> (overrides, why it is tried). The first, "profile", is SEARCH_START itself.
RECIPES: dict[str, tuple[dict, str]] = {
    "profile": (_was(), "the full profile's recipe before this search: one-cycle Adam, peak 1e-3, clip 1, batch 128"),
    "peak2e-3": (_was({"lr": 0.002}), "a higher peak (2e-3 without clipping diverged at epoch 15)"),
    "batch256-peak2e-3": (_was({"lr": 0.002, "batch_size": 256}),
                          "a larger batch at a proportionally higher peak: fewer, cheaper-per-image steps"),
    "batch64": (_was({"batch_size": 64}), "more updates per image pass at the same peak"),
    "batch32": (_was({"batch_size": 32}), "more updates still (the smallest batch tried)"),
    "gdn": (_was(model={"norm": "gdn"}), "GDN after every hidden encoder conv, IGDN in the decoder (DeepJSCC-f)"),
    "batch64-gdn": (_was({"batch_size": 64}, {"norm": "gdn"}), "the two that paid, together"),
}
RECORDED = ("lr", "batch_size", "clip", "schedule", "norm", "n_train")  # what a measured row says it trained


def recipe_params(base: dict, overrides: dict, epochs: int):
    return parse(merge(merge(base, overrides), {"pretrain": {"epochs": epochs}}))


def run(base: dict, epochs: int, root: Path, recipes: dict | None = None, budget_minutes: float = 60.0
        ) -> pd.DataFrame:
    """Every recipe of ``recipes`` (default ``RECIPES``) on the params mapping ``base``'s data under ``root``."""
    recipes = RECIPES if recipes is None else recipes
    params0 = parse(base)
    profile = params0.profile
    paths = Paths.of(params0, root)
    src = paths.split("base_train")
    if not src.exists():
        raise SystemExit(f"recipes: {src} is missing; run `python -m pipeline.profile {profile} && "
                         f"dvc repro domains` first")
    rt = setup_runtime(params0)
    device = rt.pop("device_obj")
    train_x, val_x = load_split(paths, "base_train"), load_split(paths, "base_val")
    out = paths.ablations / "pretrain_recipes.csv"
    done = pd.read_csv(out) if out.exists() else pd.DataFrame()
    rows = [] if done.empty else done.to_dict("records")
    ev = dict(noise_seed=params0.evaluate.noise_seed, batch_size=256, device=device)
    for name, (overrides, _why) in recipes.items():
        params = recipe_params(base, overrides, epochs)
        key = fingerprint("recipe", data_fingerprint(train_x, val_x),
                          params.model_dump(include={"data", "model", "train", "pretrain", "evaluate"}))
        said = {"lr": params.pretrain.lr, "batch_size": params.pretrain.batch_size, "clip": params.pretrain.clip,
                "schedule": params.pretrain.schedule, "norm": params.model.norm, "n_train": len(train_x)}
        if not done.empty and measured(done, name, epochs, said):
            print(f"recipes: {name} already measured ({epochs} epochs), kept", flush=True)
            continue
        rows = [r for r in rows if r["recipe"] != name]
        clock = {"t": time.perf_counter(), "train": 0.0}

        def on_epoch(model, epoch, loss, name=name, key=key, said=said):
            clock["train"] += time.perf_counter() - clock["t"]
            model.eval()
            psnr = evaluate_psnr(lambda x, g: model(x, g), val_x, **ev)
            model.train()
            rows.append({"recipe": name, "key": key, "epoch": epoch, "train_loss": loss, "val_psnr": psnr,
                         "train_seconds": round(clock["train"], 2), **said})
            print(f"recipes: {name} epoch {epoch}/{epochs}: val {psnr:.3f} dB, {clock['train']:.0f} s", flush=True)
            clock["t"] = time.perf_counter()
            return {"val_psnr": psnr}

        ckpt = paths.checkpoints / "recipes" / f"{name}.pt"
        train_base(params, train_x, seed=params.pretrain.seed, epochs=epochs, device=device, checkpoint=ckpt,
                   key=key, desc=f"recipe {name}", on_epoch=on_epoch)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out.with_suffix(".tmp"), index=False)
        out.with_suffix(".tmp").replace(out)  # one recipe at a time: an interrupted search keeps the others
        ckpt.unlink(missing_ok=True)  # measured: its rows are the record (a kept checkpoint would skip them)
    df = pd.DataFrame(rows)
    write_markdown(df, paths.ablations / "pretrain_recipes.md", profile, epochs, len(train_x), len(val_x),
                   budget_minutes, rt, recipes)
    return df


def measured(done: pd.DataFrame, name: str, epochs: int, said: dict) -> bool:
    """Whether ``done`` holds all ``epochs`` of recipe ``name`` trained with the settings ``said``."""
    rows = done[done.recipe == name]
    if len(rows) != epochs:
        return False
    defaults = {"schedule": "onecycle", "norm": "none"}  # columns the first rows of the search did not write
    for col, want in said.items():
        if col not in rows or rows[col].isna().all():
            if col in defaults and want != defaults[col]:
                return False
            continue
        have = rows[col]
        same = (pd.to_numeric(have).eq(want).all() if isinstance(want, (int, float))
                else have.astype(str).eq(str(want)).all())
        if not same:
            return False
    return True


def write_markdown(df: pd.DataFrame, path: Path, profile: str, epochs: int, n_train: int, n_val: int,
                   budget_minutes: float, rt: dict, recipes: dict) -> None:
    last = df[df.epoch == epochs].set_index("recipe")
    table = []
    for name in [r for r in recipes if r in last.index]:
        r = last.loc[name]
        s_epoch = r["train_seconds"] / epochs
        norm = r["norm"] if "norm" in r and isinstance(r["norm"], str) else "none"  # early rows: no column
        table.append({"recipe": name, "lr (peak)": r["lr"], "batch": int(r["batch_size"]), "clip": r["clip"],
                      "norm": norm,
                      **{f"at epoch {e}": round(float(df[(df.recipe == name) & (df.epoch == e)].val_psnr.iloc[0]), 2)
                         for e in (epochs // 3, 2 * epochs // 3) if 0 < e < epochs},
                      f"val PSNR at {epochs} epochs (dB)": round(r["val_psnr"], 3),
                      "s / epoch": round(s_epoch, 1), "images / s": round(n_train / s_epoch),
                      f"epochs in {budget_minutes:g} min": math.floor(budget_minutes * 60 / s_epoch),
                      "why": recipes[name][1]})
    t = pd.DataFrame(table)
    best = t.loc[t[f"val PSNR at {epochs} epochs (dB)"].idxmax()]
    ref = t.set_index("recipe").loc["profile"]
    lines = [f"# Pretraining recipe search ({profile} profile)", "",
             f"Written by `python -m benchmarks.recipes --profile {profile} --epochs {epochs}`. Every recipe "
             f"trains {epochs} epochs from the same seed on the same {n_train} base training images through "
             "`pipeline.pretraining.train_base` (its schedule spans those epochs), one after another on "
             f"this machine ({rt['device_name']}, {rt['threads']} threads, {rt['precision']}); PSNR is measured "
             f"on the {n_val} base **validation** images after every epoch (fp32, fixed channel noise); no test "
             "image is read. Seconds are training only (evaluation excluded).", "",
             t.to_markdown(index=False), "",
             f"Chosen on validation: **{best.recipe}** ({best[f'val PSNR at {epochs} epochs (dB)']:.3f} dB, "
             f"{best[f'val PSNR at {epochs} epochs (dB)'] - ref[f'val PSNR at {epochs} epochs (dB)']:+.3f} dB "
             f"against the recipe `profile` (batch 128) at the same epochs; {best['s / epoch']:.1f} vs "
             f"{ref['s / epoch']:.1f} s per epoch).", "",
             "Per-epoch curves: `pretrain_recipes.csv`."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    a = ap.parse_args(argv)
    df = run(profiles.render(a.profile), a.epochs, a.root)
    print(df[df.epoch == a.epochs][["recipe", "val_psnr", "train_seconds"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
