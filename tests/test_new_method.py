"""Adding a method is one file and one name: a toy method (only the decoder's last bias adapts) written
into a temporary copy of the project, listed in ``adapt.methods``, and `dvc repro` of a tiny profile
finds it in every table, claim, figure and the network view; taking the name out removes it again."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from pipeline import profile

from .dvc_copy import build, dvc_ok, make_copy, reports, slow_params

TOY = '''"""last_bias: only the decoder's last bias adapts (a toy method: the whole file a new method needs)."""
from __future__ import annotations

import time

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from ..config import Block, LearningRate
from ..metrics import fp32_bytes, memory_cost_pct
from ..train import fit
from . import Context, Variant

NAME = "last_bias"
USES_SPARSITY = False
SWITCH_OFF_EXACT = True  # switched off, the agent is W0: claim ZF checks it bit for bit
PARAMS = ("model", "train", "adapt.epochs", "adapt.seed", "last_bias", "evaluate.noise_seed", "evaluate.snr_db")


class Config(Block):
    """last_bias: Adam on the decoder's last bias only."""
    lr: LearningRate = Field(description="Adam learning rate of the last bias")


def last_bias(model) -> torch.nn.Parameter:
    return [p for n, p in model.decoder.named_parameters() if n.endswith("bias")][-1]


def agent(ctx: Context, domain: str):
    model = ctx.pretrained()
    with torch.no_grad():
        last_bias(model).add_(load_file(ctx.cell(NAME, domain).artifact())["delta"].to(ctx.device))
    return model


def adapt(ctx: Context, domain: str, sparsity: None, out, tracker) -> dict:
    model, base = ctx.pretrained().requires_grad_(False), ctx.pretrained()
    bias = last_bias(model).requires_grad_(True)
    start = time.perf_counter()
    curve = fit(model, torch.optim.Adam([bias], lr=ctx.params.last_bias.lr), ctx.split(f"{domain}_train"),
                lambda x, g: model(x, g), epochs=ctx.params.adapt.epochs, batch_size=ctx.params.train.batch_size,
                seed=ctx.params.adapt.seed, device=ctx.device, checkpoint=ctx.checkpoint(out.name),
                key=f"{NAME}-{domain}", desc=f"{NAME} {out.name}")
    save_file({"delta": (bias - last_bias(base)).detach().cpu().contiguous()}, str(out.artifact()))
    nbytes, served = out.artifact().stat().st_size, ctx.pretrained()
    with torch.no_grad():
        last_bias(served).add_(load_file(out.artifact())["delta"].to(ctx.device))
    return {"method": NAME, "domain": domain, "sparsity": None,
            "domain_psnr": ctx.psnr(ctx.self_link(served), ctx.split(f"{domain}_test")),
            "memory_bytes": nbytes, "memory_cost_pct": memory_cost_pct(nbytes, fp32_bytes(base)),
            "details": {"val_psnr": ctx.psnr(ctx.self_link(served), ctx.split(f"{domain}_val")),
                        "train_seconds": time.perf_counter() - start, "curve": curve}}


def variants(ctx: Context, sparsity: None) -> list[Variant]:
    """Each agent serves its domain with its bias on and talks with W0 (the bias off)."""
    agents, base = {d: agent(ctx, d) for d in ctx.params.domains.names}, ctx.pretrained()
    return [Variant(NAME, None, lambda d: ctx.self_link(agents[d]), None,
                    lambda d: ctx.cell(NAME, d).artifact().stat().st_size,
                    transmit=lambda a: ctx.channel(base), receive=lambda a, b: ctx.receiver(base))]
'''


def _params(with_toy: bool) -> dict:
    raw = slow_params(profile.render("quick"))
    raw["ablate"]["studies"] = []
    if with_toy:
        raw["adapt"]["methods"] = [*raw["adapt"]["methods"], "last_bias"]
        raw["last_bias"] = {"lr": 0.01}
    return raw


def _mentions(repo, name: str) -> dict[str, bool]:
    rep = reports(repo)
    found = {p.relative_to(rep).as_posix(): name in p.read_text()
             for p in sorted(rep.rglob("*")) if p.suffix in (".md", ".csv", ".json") and p.is_file()}
    found["build adapt folder"] = (build(repo) / "adapt" / name).is_dir()
    return found


@pytest.mark.slow
def test_a_method_added_in_one_file_reaches_every_table_claim_and_the_network_view(tmp_path, mlflow_template):
    repo = make_copy(tmp_path / "project", mlflow_template)
    (repo / "pipeline" / "methods" / "last_bias.py").write_text(TOY)
    profile.write(_params(True), repo / "params.yaml")
    dvc_ok(repo, "repro")
    rep = reports(repo)
    evaluation = pd.read_csv(rep / "metrics" / "evaluation.csv")
    assert set(evaluation.loc[evaluation["method"] == "last_bias", "metric"]) >= {
        "domain_psnr", "pair_psnr", "misalignment", "memory_bytes"}
    assert (evaluation.loc[(evaluation["method"] == "last_bias") & (evaluation["metric"] == "misalignment"),
                           "value"] == 0).all()  # switched off it is W0: no misalignment
    found = _mentions(repo, "last_bias")
    for must in ("tables/main.md", "tables/domain_psnr.md", "tables/validation.md", "metrics/validation.csv",
                 "ablations/network.csv", "claims.json", "README.md", "build adapt folder"):
        assert found.get(must), f"last_bias missing from {must}"
    zf = next(c for c in json.loads((rep / "claims.json").read_text())["claims"] if c["id"] == "ZF")
    assert "last_bias" in json.dumps(zf) and zf["status"] == "PASS"
    figures = {p.name: p.read_bytes() for p in (rep / "figures").glob("*.png")}

    profile.write(_params(False), repo / "params.yaml")  # the name out: the method leaves every output
    dvc_ok(repo, "repro")
    assert not any(_mentions(repo, "last_bias").values())
    changed = {n for n, b in figures.items() if (rep / "figures" / n).read_bytes() != b}
    assert {"psnr_vs_bytes.png", "misalignment.png", "memory_network.png", "network.png"} <= changed
    assert yaml.safe_load((repo / "params.yaml").read_text())["adapt"]["methods"] == _params(False)["adapt"]["methods"]
