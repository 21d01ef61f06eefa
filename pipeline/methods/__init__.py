"""Adaptation methods, one file each, one shared shape.

A method module defines:

- ``NAME`` (str) and ``USES_SPARSITY`` (bool: its cells run over ``adapt.sparsities`` too);
- optionally ``SWITCH_OFF_EXACT = True``: its agents, switched off to talk, compute with W0 bit for bit
  (the evaluate stage checks it on every cell and seed; claim ZF fails CI when one does not);
- ``PARAMS``: the dotted param keys a cell's result depends on (its content key; dvc.yaml's stage
  lists the same), and optionally ``NEEDS``: methods whose outputs its cells read, and ``PER_DOMAIN``
  (default True; False: its result does not depend on the domain, so the adapt stage runs one cell,
  for the first of ``domains.names``, and its variants serve every domain from that cell);
- ``adapt(ctx, domain, sparsity, out, tracker) -> dict``: adapt one agent to ``domain``, write the
  method's artefacts at the paths of ``out`` (a ``pipeline.paths.Cell``, owned by the adapt stage:
  ``out.artifact()``, ``out.artifact("variant")``), return the cell's metrics (keys: ``CELL_KEYS``);
- optionally ``adapt_cells(ctxs, domains, sparsities, outs, trackers, fit_all) -> list[dict]``: ``adapt`` of
  several cells, every ``pipeline.train.fit`` call of theirs made through ``fit_all`` (a list of ``fit``'s
  keyword arguments less ``forward`` -> their histories): the adapt stage then trains the method's cells K at
  a time in one stacked step (``pipeline.batched.fit_cells``, ``execute.batch``; keyed apart, ``pipeline.cells``);
- ``variants(ctx, sparsity) -> list[Variant]``: the method's agents after its alignment step,
  for the ``evaluate`` stage (a method may offer several ways back to alignment); it finds each
  domain's artefacts at ``ctx.cell(NAME, domain, sparsity)`` (the context's seed, the chosen grid point).

``details`` must hold ``val_psnr``: the quality the method's hyper-parameters optimise, on validation
images (``{domain}_val`` or ``base_val``), from which ``pipeline.selection`` chooses the grid point.

A method may also define ``Config``: a ``pipeline.config.Block`` (pydantic) holding its own params, found by the
schema under the method's NAME (``lora.lr``), and ``check(params)``: a rule across blocks, raising ValueError.

Adding a method = one new file here + its name in the profile's ``adapt.methods``.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..config import ConfigError
from ..data import load_images, to_tensor
from ..model import SCModel, apply_channel
from ..metrics import Quality
from ..paths import Cell, Paths
from ..selection import Trial
from ..train import evaluate_psnr, evaluate_quality, evaluate_quality_fanout, load_model

if TYPE_CHECKING:
    from ..config import Params

# Every cell's metrics JSON has exactly these keys, whatever the method (evaluation treats all alike).
CELL_KEYS = ("method", "domain", "sparsity", "domain_psnr", "memory_bytes", "memory_cost_pct", "details")

BASE_AGENT = "base"  # the unadapted agent (pretrained model); every method's pair() accepts it
Decode = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # images (+ noise) -> images or symbols
Receive = Callable[[torch.Tensor], torch.Tensor]  # received channel symbols -> images


@dataclass
class Variant:
    """One way an adapted agent population serves its domains and talks to the others.

    ``local(d)`` prepares and returns agent d's own link (its Tx -> channel -> its Rx);
    ``pair(a, b)`` returns the link from agent a's Tx to agent b's Rx after the alignment step;
    ``memory_bytes(d)`` is what agent d stores beyond the shared pretrained model and actually needs to
    serve its domain and talk to the others (real bytes; SPEC.md's memory cost).

    A method whose pair links are "a's Tx -> channel -> b's Rx side" gives ``transmit(a)`` (images,
    generator -> received symbols) and ``receive(a, b)`` (received symbols -> images) instead of
    ``pair``: ``pair`` is then their composition, and ``Context.pair_psnrs`` encodes each Tx's
    batches once for all its receivers (the same numbers, about a third less compute).
    """
    method: str
    sparsity: float | None
    local: Callable[[str], Decode]
    pair: Callable[[str, str], Decode] | None
    memory_bytes: Callable[[str], int]
    notes: dict = field(default_factory=dict)
    transmit: Callable[[str], Decode] | None = None
    receive: Callable[[str, str], Receive] | None = None

    def __post_init__(self):
        if (self.transmit is None) != (self.receive is None):
            raise TypeError(f"Variant {self.method}: give transmit and receive together")
        if self.pair is None:
            if self.transmit is None:
                raise TypeError(f"Variant {self.method}: give pair, or transmit and receive")
            self.pair = lambda a, b: _compose(self.transmit(a), self.receive(a, b))


def _compose(tx: Decode, rx: Receive) -> Decode:
    return lambda x, g: rx(tx(x, g))


@dataclass
class Context:
    """What every method needs: params, paths, device, data splits and the pretrained model."""
    params: Params
    paths: Paths
    device: torch.device
    snr_db: float | None = None  # evaluation SNR; None: params.evaluate.snr_db
    checkpoints: Path | None = None  # this cell's checkpoint folder (removed when the cell completes)
    channel_type: str | None = None  # evaluation channel; None: params.model.channel (what agents train on)
    trial: Trial = field(default_factory=Trial)  # the replicate (seed) and grid point this context serves
    chosen: dict = field(default_factory=dict)  # method -> {(domain, sparsity): chosen grid point}

    def __post_init__(self):
        if self.snr_db is None:
            self.snr_db = self.params.evaluate.snr_db
        if self.channel_type is None:
            self.channel_type = self.params.model.channel

    def cell(self, method: str, domain: str, sparsity: float | None = None) -> Cell:
        """Where the adapt stage had ``method``'s cell for this context's seed stored: at the grid point
        chosen on validation data when ``chosen`` has the method, else at this context's own point."""
        point = self.chosen[method][(domain, sparsity)] if method in self.chosen else self.trial.point
        return self.paths.cell(method, domain, sparsity, Trial(self.trial.seed, point).tag)

    def split(self, name: str) -> torch.Tensor:
        return _split(self.paths.split(name))

    def pretrained(self) -> SCModel:
        """A fresh copy of the pretrained model on the device (callers may adapt it)."""
        return load_model(self.params, self.paths.pretrained).to(self.device).eval()

    def checkpoint(self, tag: str) -> Path:
        folder = self.checkpoints or self.paths.checkpoints / "adhoc"
        return folder / f"{tag}.pt"

    def self_link(self, model: SCModel) -> Decode:
        """An agent's own Tx -> channel (evaluation SNR and channel) -> Rx."""
        return lambda x, g: model(x, g, snr_db=self.snr_db, channel=self.channel_type)

    def link(self, tx: SCModel, rx: SCModel, equalizer: torch.nn.Module | None = None) -> Decode:
        """Agent tx's encoder -> channel -> (equalizer) -> agent rx's decoder."""
        return _compose(self.channel(tx), self.receiver(rx, equalizer))

    def channel(self, tx: SCModel) -> Decode:
        """Agent tx's encoder -> channel (evaluation SNR and channel): the symbols a receiver gets."""
        return lambda x, g: apply_channel(self.channel_type, tx.transmit(x), self.snr_db, g)

    def receiver(self, rx: SCModel, equalizer: torch.nn.Module | None = None) -> Receive:
        """(Equalizer ->) agent rx's decoder, on received symbols."""
        return (lambda y: rx.decoder(y)) if equalizer is None else (lambda y: rx.decoder(equalizer(y)))

    def psnr(self, decode: Decode, images: torch.Tensor) -> float:
        """Mean PSNR with the evaluation noise seed: every method sees the same noise."""
        return evaluate_psnr(decode, images, noise_seed=self.params.evaluate.noise_seed, batch_size=256,
                             device=self.device)

    def quality(self, decode: Decode, images: torch.Tensor, ssim: bool = True) -> Quality:
        """Per-image PSNR and SSIM in ``psnr``'s pass (same noise seed, same reconstructions):
        ``quality(d, x).mean_psnr == psnr(d, x)`` bit for bit."""
        return evaluate_quality(decode, images, noise_seed=self.params.evaluate.noise_seed, batch_size=256,
                                device=self.device, ssim=ssim)

    def pair_psnrs(self, variant: Variant, pairs: list[tuple[str, str]], images: torch.Tensor
                   ) -> dict[tuple[str, str], float]:
        """``psnr(variant.pair(a, b), images)`` for every pair; with transmit/receive, each Tx's
        batches are encoded once for all its receivers (same noise, same numbers)."""
        return {p: q.mean_psnr for p, q in self.pair_qualities(variant, pairs, images, ssim=False).items()}

    def pair_qualities(self, variant: Variant, pairs: list[tuple[str, str]],
                       images: torch.Tensor | Callable[[str], torch.Tensor], ssim: bool = True
                       ) -> dict[tuple[str, str], Quality]:
        """``quality(variant.pair(a, b), images)`` for every pair, in the order of ``pairs``.

        ``images``: one image set for every link (base test images: the pair metrics), or a function of
        the transmitting agent (``lambda a: ctx.split(f"{a}_test")``: cross traffic, A's own images).
        With transmit/receive, each Tx's batches are encoded once for all its receivers (same noise,
        same numbers as one ``quality`` per pair)."""
        of = images if callable(images) else (lambda a: images)
        if variant.transmit is None:
            return {(a, b): self.quality(variant.pair(a, b), of(a), ssim) for a, b in pairs}
        found = {}
        for a in dict.fromkeys(a for a, _ in pairs):
            rxs = [b for t, b in pairs if t == a]
            values = evaluate_quality_fanout(variant.transmit(a), [variant.receive(a, b) for b in rxs], of(a),
                                             noise_seed=self.params.evaluate.noise_seed, batch_size=256,
                                             device=self.device, ssim=ssim)
            found.update({(a, b): v for b, v in zip(rxs, values)})
        return {p: found[p] for p in pairs}


@cache
def _split(path: Path) -> torch.Tensor:
    return to_tensor(load_images(path))


def registry() -> dict[str, object]:
    """Every method module in this package, by NAME (discovered: a new file is enough)."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "adapt"):
            found[module.NAME] = module
    return found


def active(params: Params) -> dict[str, object]:
    """The methods of ``adapt.methods`` (the ones a run adapts and compares), by NAME."""
    known = registry()
    return {name: known[name] for name in params.adapt.methods}


def waves(params: Params, only: list[str] | None = None) -> list[list[str]]:
    """``adapt.methods`` (or the methods ``only``) in waves: a method runs in the wave after the last of its
    NEEDS (those outside ``only`` count as done)."""
    methods = active(params)
    if only:
        if unknown := sorted(set(only) - set(methods)):
            raise ConfigError(f"adapt: methods {unknown} are not among adapt.methods {list(methods)}")
        methods = {n: m for n, m in methods.items() if n in only}
    done, out = set(active(params)) - set(methods), []
    while not set(methods) <= done:
        wave = [n for n, m in methods.items() if n not in done and set(getattr(m, "NEEDS", ())) <= done]
        if not wave:
            raise ConfigError(f"adapt.methods: NEEDS form a cycle among {sorted(set(methods) - done)}")
        out.append(wave)
        done |= set(wave)
    return out
