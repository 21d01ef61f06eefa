"""equalizer: full fine-tuning on the domain (shared with ``tuning``), then at each receiver B a small
equalizer per partner A, trained on base images to map A's received symbols to what B's decoder
expects (B's decoder and A's encoder frozen).

Memory (SPEC.md: what an agent stores beyond the shared W0 and actually needs): its K - 1 equalizers
only, one per partner, their tensors' real bytes. The agent serves its domain with its tuned weights
and talks through its equalizers; it never uses a copy of W0, so none is charged. (The tuned weights
replace W0 in the agent rather than sitting beside it, as for ``no_alignment``.)
"""
from __future__ import annotations

import statistics
import time
from typing import Annotated

import torch
from safetensors.torch import load_file
from torch import nn
from pydantic import Field

from ..config import Block, Epochs, LearningRate
from ..fingerprint import base_fingerprint
from ..metrics import fp32_bytes, memory_cost_pct, tensor_bytes
from ..model import apply_channel
from ..storage import nonfinite, save_safetensors, wrong_kind
from ..train import ModelFileError, data_fingerprint, fingerprint, fit
from . import BASE_AGENT, Context, Variant
from .tuning import tuned_models

NAME = "equalizer"
USES_SPARSITY = False
PARAMS = ("model", "train", "adapt.seed", "equalizer", "domains.n_train", "evaluate.noise_seed", "evaluate.snr_db")
NEEDS = ("tuning",)  # its cells read every domain's tuned agent (the adapt_tuning stage's outputs)


class Config(Block):
    """equalizer: a small network at each receiver mapping a partner's symbols to its own (``adapt.seed``)."""
    hidden: Annotated[int, Field(ge=1, le=1024)] = Field(description="hidden channels of each equalizer")
    blocks: Annotated[int, Field(ge=1, le=16)] = Field(description="residual blocks of each equalizer")
    epochs: Epochs = Field(description="training epochs of each equalizer")
    lr: LearningRate = Field(description="Adam learning rate of the equalizers")


class Equalizer(nn.Module):
    """Residual stack of 1x1 convolutions on the channel symbols; starts as the identity."""

    def __init__(self, channels: int, hidden: int, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.PReLU(hidden),
                                                  nn.Conv2d(hidden, channels, 1)) for _ in range(blocks))
        for b in self.blocks:
            nn.init.zeros_(b[-1].weight)
            nn.init.zeros_(b[-1].bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            y = y + b(y)
        return y


def eq_path(ctx: Context, receiver: str):
    """Where the adapt stage had the equalizers of this receiver stored."""
    return ctx.cell(NAME, receiver).artifact()


def new_equalizer(ctx: Context, channels: int) -> Equalizer:
    return Equalizer(channels, ctx.params.equalizer.hidden, ctx.params.equalizer.blocks).to(ctx.device)


def train_equalizer(ctx: Context, tx, rx, images, tag: str) -> tuple[Equalizer, list[dict]]:
    p = ctx.params
    torch.manual_seed(p.adapt.seed)
    eq = new_equalizer(ctx, rx.channels)
    tx.requires_grad_(False)
    rx.requires_grad_(False)
    opt = torch.optim.Adam(eq.parameters(), lr=p.equalizer.lr)
    key = fingerprint(NAME, tag, base_fingerprint(tx), base_fingerprint(rx), data_fingerprint(images),
                      p.model_dump(include={"equalizer", "train", "model", "domains"}))

    def forward(x, g):  # on the channel and SNR the agents were trained on (model.channel, model.snr_db)
        return rx.decoder(eq(apply_channel(rx.channel, tx.transmit(x), rx.snr_db, g)))
    curve = fit(eq, opt, images, forward,
                epochs=p.equalizer.epochs, batch_size=p.train.batch_size, seed=p.adapt.seed, device=ctx.device,
                checkpoint=ctx.checkpoint(tag), key=key, desc=f"equalizer {tag}")
    return eq.eval(), curve


def adapt(ctx: Context, domain: str, sparsity: None, out, tracker) -> dict:
    tuned = tuned_models(ctx)
    images = ctx.split("base_train")[:ctx.params.domains.n_train]
    start = time.perf_counter()
    tensors, curves = {}, {}
    for partner in (d for d in ctx.params.domains.names if d != domain):
        eq, curves[partner] = train_equalizer(ctx, tuned[partner], tuned[domain], images, f"{partner}-to-{domain}")
        tracker.log_history(curves[partner], prefix=f"from_{partner}_")
        tensors.update({f"{partner}.{k}": v.detach().cpu().contiguous() for k, v in eq.state_dict().items()})
    save_safetensors(out.artifact(), tensors, {"receiver": domain})
    # What the equalizer's hyper-parameters optimise: its receiver's links from the partners, on base_val.
    eqs = load_equalizers(ctx, domain, tuned[domain].channels, path=out.artifact())
    val = statistics.fmean(ctx.psnr(ctx.link(tuned[a], tuned[domain], eq), ctx.split("base_val"))
                           for a, eq in eqs.items())
    base = ctx.pretrained()
    nbytes = tensor_bytes(tensors.values())  # the K - 1 equalizers only (module docstring)
    return {"method": NAME, "domain": domain, "sparsity": None,
            "domain_psnr": ctx.psnr(ctx.self_link(tuned[domain]), ctx.split(f"{domain}_test")),
            "memory_bytes": nbytes, "memory_cost_pct": memory_cost_pct(nbytes, fp32_bytes(base)),
            "details": {"val_psnr": val, "equalizer_parameters": sum(t.numel() for t in tensors.values()),
                        "train_seconds": time.perf_counter() - start, "curves": curves}}


def load_equalizers(ctx: Context, receiver: str, channels: int, path=None) -> dict[str, Equalizer]:
    """The receiver's equalizer per partner; ModelFileError in one line naming the file and what is wrong
    (another kind of file, unreadable, a partner's tensors not those of ``equalizer.hidden/blocks``, a
    weight not finite)."""
    path = path or eq_path(ctx, receiver)
    if problem := wrong_kind(path, NAME):
        raise ModelFileError(f"{path}: {problem}")
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: equalizer file not found (run the adapt stage for equalizer first)") from None
    except Exception as err:  # noqa: BLE001 - any parse failure means an unusable file
        raise ModelFileError(f"{path}: truncated or unreadable equalizer file ({type(err).__name__})") from None
    if problem := nonfinite(state, "weight"):
        raise ModelFileError(f"{path}: {problem}")
    out = {}
    for partner in (d for d in ctx.params.domains.names if d != receiver):
        eq = new_equalizer(ctx, channels)
        try:
            eq.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(partner + ".")})
        except RuntimeError as err:
            lines = str(err).splitlines()
            raise ModelFileError(f"{path}: partner {partner}: does not match equalizer.hidden/blocks in params "
                                 f"({(lines[1] if len(lines) > 1 else lines[0]).strip()})") from None
        out[partner] = eq.eval()
    return out


def variants(ctx: Context, sparsity: None) -> list[Variant]:
    tuned = tuned_models(ctx)
    channels = tuned[BASE_AGENT].channels
    eqs = {d: load_equalizers(ctx, d, channels) for d in ctx.params.domains.names}
    # Equalizers exist only between adapted agents: links with the base agent, or to oneself, are raw.
    # Memory: receiver d's K - 1 equalizers, as in its cell.
    return [Variant(NAME, None, lambda d: ctx.self_link(tuned[d]), None,
                    lambda d: sum(tensor_bytes(e.state_dict().values()) for e in eqs[d].values()),
                    transmit=lambda a: ctx.channel(tuned[a]),
                    receive=lambda a, b: ctx.receiver(tuned[b], eqs.get(b, {}).get(a)))]
