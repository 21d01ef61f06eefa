"""The params schema and its loading: the one place that reads ``params.yaml``.

Every key is typed and ranged (pydantic); a wrong value fails with one line naming the key, the
value and what is allowed, before any stage does work. Paths are derived from the params in
``pipeline/paths.py``.
"""
from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .domains import DOMAINS
from .paths import REPO
from .selection import Search

BUILTIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "stereo_motorcycle", "china", "flower", "grace_hopper")


class InputError(ValueError):
    """Bad input (params, data, model or adapter files): reported in one line, exit code 2."""


class ConfigError(InputError):
    """Invalid params: the message is one line naming key, value and what is allowed."""


class Block(BaseModel):
    """A params block: typed, ranged, frozen, no unknown keys (method and study blocks subclass it)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, v):
        # No param is a boolean; YAML's yes/true must not pass as 1 epoch or 1 dB.
        if isinstance(v, bool) or (isinstance(v, (list, tuple)) and any(isinstance(x, bool) for x in v)):
            raise ValueError("a boolean is not allowed here")
        return v


_Block = Block

Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Count = Annotated[int, Field(ge=1, le=1_000_000)]
Epochs = Annotated[int, Field(ge=1, le=10_000)]
LearningRate = Annotated[float, Field(gt=0, le=100)]
# Plain SGD on the mask scores takes steps of lr x |g|, |g| ~ 1e-6 (pipeline/studies/recipe.py): it
# needs rates far above any Adam rate to move the mask at all.
ScoreLearningRate = Annotated[float, Field(gt=0, le=1e6)]


def _range(lo: float, hi: float):
    return Annotated[tuple[float, float], Field(description=f"[low, high] within [{lo}, {hi}]")]


Scales = Annotated[tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...], Field(min_length=1)]


def unique(v):
    """A list's validator: no entry twice (``Annotated[tuple[...], AfterValidator(unique)]``)."""
    if len(set(v)) != len(v):
        raise ValueError("entries must be unique")
    return v


class Builtin(_Block):
    """The embedded photos (scikit-image, scikit-learn, matplotlib), cut into 32x32 thumbnails."""
    test_photos: tuple[str, ...] = Field(description="photos kept for test thumbnails only")
    scales: Scales = Field(description="each photo is cut at these scales (1 = full size)")

    @field_validator("test_photos")
    @classmethod
    def _photos(cls, v):
        unknown = sorted(set(v) - set(BUILTIN_PHOTOS))
        if unknown or not v or len(v) >= len(BUILTIN_PHOTOS):
            raise ValueError(f"must be a non-empty proper subset of {list(BUILTIN_PHOTOS)}")
        return v


class Cifar(_Block):
    """CIFAR-10 or CIFAR-100: a local copy, else an earlier download, else torchvision's downloader."""
    root: str = Field(description="where torchvision downloads the data set when the network answers")
    local: str = Field(description="a local copy: the original python folder or the NumPy layout")


class Folder(_Block):
    """A directory of PNG/JPEG photos of any size, cut into 32x32 tiles; train and test from different photos."""
    path: str = Field(description="the folder (searched recursively); relative paths start at the project root")
    scales: Scales = Field(description="each photo is cut at these scales (1 = full size)")
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        description="share of the photos kept for test tiles only (at least one photo each side)")


class Data(_Block):
    source: Literal["builtin", "cifar100", "cifar10", "folder"] = Field(
        description="builtin: embedded photos; cifar100: the paper's data; cifar10; folder: your photos")
    n_pretrain: Count
    n_base_val: Count = Field(description="base validation images, disjoint from n_pretrain and n_base_test")
    n_base_test: Count
    seed: Seed
    builtin: Builtin
    cifar100: Cifar
    cifar10: Cifar
    folder: Folder


class Domains(_Block):
    names: tuple[str, ...] = Field(min_length=2, description="local domains, keys of pipeline.domains.DOMAINS")
    n_train: Count
    n_val: Count = Field(description="per domain, validation images disjoint from train and test (hyper-parameter choice)")
    n_test: Count
    rotation_degrees: tuple[Annotated[float, Field(ge=0, le=180)], Annotated[float, Field(ge=0, le=180)]]
    perspective_distortion: Annotated[float, Field(gt=0, le=1)]
    contrast_factor: tuple[Annotated[float, Field(gt=0, le=5)], Annotated[float, Field(gt=0, le=5)]]
    hue_shift: tuple[Annotated[float, Field(ge=0, le=0.5)], Annotated[float, Field(ge=0, le=0.5)]]
    preview_count: Annotated[int, Field(ge=1, le=32)]
    seed: Seed

    @field_validator("names")
    @classmethod
    def _unique(cls, v):
        if unknown := [n for n in v if n not in DOMAINS]:
            raise ValueError(f"unknown domains {unknown}; known: {list(DOMAINS)} (pipeline/domains.py)")
        if len(set(v)) != len(v):
            raise ValueError("domain names must be unique")
        return v

    @field_validator("rotation_degrees", "contrast_factor", "hue_shift")
    @classmethod
    def _ordered(cls, v):
        if v[0] > v[1]:
            raise ValueError("must be [low, high] with low <= high")
        return v


class Model(_Block):
    width: Annotated[int, Field(ge=1, le=512)]
    bandwidth_ratio: Annotated[float, Field(gt=0, le=1)]
    snr_db: Annotated[float, Field(ge=-30, le=60)]
    channel: Literal["awgn", "rayleigh"] = Field(
        description="awgn; rayleigh: block fading per image, receiver knows the coefficient (pipeline/model.py)")
    norm: Literal["none", "gdn"] = Field(
        default="none", description="none: conv -> PReLU; gdn: conv -> GDN (IGDN in the decoder) -> PReLU")


class Train(_Block):
    batch_size: Annotated[int, Field(ge=1, le=65536)]
    device: Literal["auto", "cpu", "cuda"]
    threads: Annotated[int, Field(ge=0, le=1024)] = Field(description="torch threads; 0 = torch's default")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        description="training compute (evaluation is always fp32): bf16 autocasts forward and loss, weights "
                    "and optimizer state stay fp32; auto: bf16 on CUDA or a CPU with AVX512-BF16/AMX, else fp32")


class Pretrain(_Block):
    epochs: Epochs
    lr: LearningRate = Field(description="Adam lr (constant), or the one-cycle peak")
    schedule: Literal["constant", "onecycle"] = Field(description="onecycle: torch OneCycleLR over all steps")
    batch_size: Annotated[int, Field(ge=1, le=65536)]
    clip: Annotated[float, Field(ge=0, le=1e6)] = Field(description="gradient-norm clipping; 0: none")
    seed: Seed


class Adapt(_Block):
    epochs: Epochs
    sparsities: tuple[Annotated[float, Field(gt=0, le=1)], ...] = Field(min_length=1)
    allocation: Literal["linear", "uniform", "product"]
    score_lr: ScoreLearningRate
    value_lr: LearningRate
    value_grad: Literal["dense", "masked"] = Field(
        description="values' gradient: dense (straight-through g for every value) | masked (g ⊙ m, exact)")
    score_optimizer: Literal["adam", "sgd"] = Field(description="optimizer of the scores (values: always Adam)")
    freeze_epochs: Annotated[int, Field(ge=0, le=10_000)] = Field(
        description="the last N epochs train the values on the mask frozen at its top-k (scores not updated)")
    seed: Seed
    seeds: Annotated[int, Field(ge=1, le=100)] = Field(
        description="replicates: seed i (0..seeds-1) adapts with adapt.seed + i (data order, noise, init)")
    methods: tuple[str, ...] = Field(min_length=1, description="the methods the adapt stage runs and evaluate "
                                     "compares: names of pipeline/methods/<name>.py (their NEEDS included)")

    @field_validator("sparsities", "methods")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v


class Evaluate(_Block):
    snr_db: Annotated[float, Field(ge=-30, le=60)]
    noise_seed: Seed
    reconstructions: Annotated[int, Field(ge=1, le=16)]


class Execute(_Block):
    """How the adapt stages run their cells (pipeline/executors.py); the numbers do not depend on it, but for
    ``batch``: a stacked step rounds otherwise, so its cells are keyed apart (``pipeline.cells``)."""
    executor: Literal["local", "pool", "ray"] = Field(description="local: in the stage process; pool: worker "
                                                      "processes; ray: Ray tasks (RAY_ADDRESS or a local Ray)")
    workers: Annotated[int, Field(ge=0, le=4096)] = Field(description="pool workers; 0: cores // train.threads")
    gpus_per_cell: Annotated[float, Field(gt=0, le=1)] = Field(description="ray on CUDA: GPU share of a cell")
    batch: Literal["auto", "always", "never"] = Field(description="K cells of a method with adapt_cells in one stacked step (pipeline/batched.py): auto: "
        "on CUDA, and on the CPU from the measured crossover (batched.CPU_CROSSOVER); equal within rounding")


class AblateBase(_Block):
    """The ablate block's shared keys; ``Ablate`` (composed by ``params_model``) adds every study's own fields
    (pipeline/studies/)."""
    studies: tuple[str, ...] = Field(description="the ablate matrix: names of pipeline/studies/<name>.py; "
                                     "empty: no ablations")
    domains: tuple[str, ...] = Field(min_length=1, description="among domains.names")
    sparsity: Annotated[float, Field(gt=0, le=1)] = Field(
        description="sparsity of the allocation, mask, recipe and bases studies")

    @field_validator("studies", "domains")
    @classmethod
    def _shared_unique(cls, v):  # a name no study's validator takes (validators are inherited by name)
        return unique(v)


class ParamsBase(_Block):
    """Every block but the methods'; ``Params`` adds one block per method that has a ``Config``."""
    profile: Literal["quick", "paper", "ci", "full"]
    data: Data
    domains: Domains
    model: Model
    train: Train
    execute: Execute
    pretrain: Pretrain
    adapt: Adapt
    evaluate: Evaluate
    ablate: AblateBase
    search: Search = Field(description="per method, dotted param -> values tried, and max_extend; chosen on "
                           "validation data (pipeline/selection.py)")

    def __hash__(self) -> int:  # frozen, but ``search`` holds dicts: hash the canonical JSON
        return hash(self.model_dump_json())

    @model_validator(mode="after")
    def _search(self):
        from .selection import check_search
        check_search(self)
        return self

    @model_validator(mode="after")
    def _methods(self):
        from .methods import registry
        known = registry()
        for name in self.adapt.methods:
            if name not in known:
                raise ValueError(f"adapt.methods: unknown method {name!r}; known: {sorted(known)} (pipeline/methods/)")
            missing = [n for n in getattr(known[name], "NEEDS", ()) if n not in self.adapt.methods]
            if missing:
                raise ValueError(f"adapt.methods: {name} needs {missing} (its NEEDS) among adapt.methods")
            for block in {key.split(".")[0] for key in known[name].PARAMS}:
                if hasattr(known.get(block), "Config") and getattr(self, block, None) is None:
                    raise ValueError(f"{block}: the block is missing; {name} (in adapt.methods) reads it")
        return self

    @model_validator(mode="after")
    def _freeze(self):
        if self.adapt.freeze_epochs >= self.adapt.epochs:
            raise ValueError(f"adapt.freeze_epochs = {self.adapt.freeze_epochs} must be below adapt.epochs = "
                             f"{self.adapt.epochs} (the scores train in the epochs before the frozen ones)")
        return self

    @model_validator(mode="after")
    def _ablate(self):
        extra = sorted(set(self.ablate.domains) - set(self.domains.names))
        if extra:
            raise ValueError(f"ablate.domains {extra} must be among domains.names {list(self.domains.names)}")
        from .studies import registry
        known = registry()
        for name in self.ablate.studies:
            if name not in known:
                raise ValueError(f"ablate.studies: unknown study {name!r}; known: {list(known)} (pipeline/studies/)")
            if hasattr(known[name], "check"):
                known[name].check(self)
        return self

    @model_validator(mode="after")
    def _finite(self):
        for key, value in _flatten(self.model_dump()).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key} must be finite")
        return self

    @property
    def run_name(self) -> str:
        """``<source>-<profile>``: the folder of this run's build and reports (``pipeline/paths.py``)."""
        return f"{self.data.source}-{self.profile}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def flat_params(params: ParamsBase) -> dict:
    """Dotted-key view of every param (what MLflow logs)."""
    return _flatten(params.model_dump(mode="json"))


def _one_line(err: ValidationError, raw: dict) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    value = raw
    for part in first["loc"]:
        value = value.get(part, "<missing>") if isinstance(value, dict) else (
            value[part] if isinstance(value, (list, tuple)) and isinstance(part, int) and part < len(value) else "<missing>")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if not first["loc"]:  # a rule across several keys: its message names them
        return f"params: {first['msg'].removeprefix('Value error, ')}{more}"
    # The schema holds lists as tuples (frozen); params.yaml, and the user, speak of lists.
    msg = (first["msg"].replace("a valid tuple", "a list").replace("Tuple should", "The list should")
           .replace(" after validation", ""))
    return f"params: {key} = {value!r}: {msg}{more}"


def parse(raw: object) -> ParamsBase:
    """Validate a params mapping; raise ConfigError with one line on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return params_model().model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err, raw)) from None


def load(path: str | Path | None = None) -> ParamsBase:
    """Read and validate ``params.yaml`` (or ``path``)."""
    path = Path(path) if path else REPO / "params.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"params: file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"params: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse(raw)


# ------------------------------------------------------------------------------------------ Params
_composing = False


@cache
def params_model() -> type[ParamsBase]:
    """``Params``: ``ParamsBase`` plus one block per method whose file defines a ``Config`` (the block's
    key is the method's NAME), and the ``ablate`` block with every study's ``Config`` fields merged in
    (flat: ``ablate.snr_db``), composed from the registries (``pipeline/methods/``, ``pipeline/studies/``)
    on first use."""
    global _composing
    if _composing:
        raise RuntimeError("pipeline.config.Params was used while the method or study registry loads: import "
                           "it under TYPE_CHECKING in modules that the methods and studies import")
    _composing = True
    try:
        from .methods import registry as methods
        from .studies import registry as studies
        # optional here: a method's block is required when a method of adapt.methods reads it (_methods)
        blocks = {name: (m.Config | None, None) for name, m in sorted(methods().items()) if hasattr(m, "Config")}
        ablate = _compose_ablate({name: m.Config for name, m in studies().items() if hasattr(m, "Config")})
    finally:
        _composing = False
    return create_model("Params", __base__=ParamsBase, __module__=__name__, ablate=(ablate, ...), **blocks)


def _compose_ablate(configs: dict[str, type[Block]]) -> type[AblateBase]:
    """``Ablate``: ``AblateBase`` plus the fields (and validators) of every study's ``Config``, in the studies'
    order."""
    owner = {key: "the shared ablate block" for key in AblateBase.model_fields}
    for name, config in configs.items():
        for key in config.model_fields:
            if key in owner:
                raise RuntimeError(f"ablate.{key}: defined by study {name} and by {owner[key]}")
            owner[key] = f"study {name}"
    # pydantic collects fields along the reversed MRO: AblateBase's first, then each study's in order
    return create_model("Ablate", __base__=(*reversed(configs.values()), AblateBase), __module__=__name__)


def __getattr__(name: str):  # the composed models, by the names pickle looks up
    if name == "Params":
        return params_model()
    if name == "Ablate":
        return params_model().model_fields["ablate"].annotation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers: the composed models have the base's fields and the plug-ins' blocks
    Params = ParamsBase
    Ablate = AblateBase
