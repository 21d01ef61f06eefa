"""Hyper-parameters chosen on validation data, never on test numbers (a verdict a reviewer accepts).

``search`` in params gives, per method, a small grid: dotted param keys and the values tried, e.g.
``search: {sam: {adapt.value_lr: [0.001, 0.003]}, tuning: {tuning.lr: [0.0001, 0.0003]}}``. The adapt
stage trains one cell per grid point, domain, sparsity and seed (a *trial*); every cell reports
``details.val_psnr``, the quality its hyper-parameters optimise, measured on validation images
(``{domain}_val``, ``base_val``: disjoint from train and test). ``choose`` then picks, per domain and
sparsity, the point with the best mean validation PSNR over seeds (ties: the first point), as in
DomainBed's training-domain validation; test numbers are measured for the chosen points only, and
the grid with its validation numbers and the choice is written into a report table.

A method without a grid has one point (its params as given). Grid keys must be training params of the
method (its ``PARAMS``), not the grid lists (``adapt.sparsities``, ``domains.names``) or the seeds.
"""
from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

RESERVED = ("adapt.sparsities", "adapt.seed", "adapt.seeds", "domains.names", "domains.n_val", "data")


def _method_files() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "methods").glob("*.py") if not p.stem.startswith("_"))


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            raise KeyError(dotted)
        tree = tree[part]
    return tree


def _set(tree: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for part in head:
        tree = tree[part]
    tree[last] = value


def check_search(params) -> None:
    """Raise ValueError (one line) on a grid that names an unknown method or key, or tries no value."""
    known = _method_files()
    tree = params.model_dump(mode="json")
    for method, grid in params.search.items():
        if method not in known:
            raise ValueError(f"search.{method}: unknown method; known: {known}")
        for key, values in grid.items():
            if any(key == r or key.startswith(r + ".") for r in RESERVED):
                raise ValueError(f"search.{method}.{key}: not a hyper-parameter (grid lists, seeds and data "
                                 "are not searched)")
            try:
                leaf = _lookup(tree, key)
            except KeyError:
                raise ValueError(f"search.{method}.{key}: no such param") from None
            if isinstance(leaf, (dict, list)):
                raise ValueError(f"search.{method}.{key}: must name a single param, not a block or list")
            if not values:
                raise ValueError(f"search.{method}.{key}: give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"search.{method}.{key}: values must be unique")
            for value in values:
                _check_value(params, f"search.{method}.{key}", key, value)
        _check_points(params, method)


def _check_points(params, method: str) -> None:
    """Every grid point's whole params through the schema (rules across keys: freeze_epochs < epochs), and
    every grid key among the method's PARAMS (else it would not reach its cells' content keys)."""
    from pydantic import ValidationError

    from .methods import registry
    module = registry()[method]
    for key in params.search[method]:
        if not any(key == p or key.startswith(p + ".") for p in module.PARAMS):
            raise ValueError(f"search.{method}.{key}: not among the method's params {list(module.PARAMS)}")
    for point in grid_points(params, method):
        tree = params.model_dump(mode="json")
        tree["search"] = {}
        for key, value in point.items():
            _set(tree, key, value)
        try:
            type(params).model_validate(tree)
        except ValidationError as err:
            msg = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"search.{method}: the grid point {point} is refused: {msg}") from None


def _check_value(params, where: str, key: str, value) -> None:
    """A grid value through the schema of the block it sets (type and range), as the adapt stage will."""
    from pydantic import ValidationError
    block, _, rest = key.partition(".")
    tree = getattr(params, block).model_dump(mode="json")
    _set(tree, rest, value)
    try:
        type(getattr(params, block)).model_validate(tree)
    except ValidationError as err:
        msg = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"{where} = {value!r}: {msg}") from None


def grid_points(params, method: str) -> list[dict]:
    """Every combination of the method's grid, in order (one empty point without a grid)."""
    grid = params.search.get(method, {})
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def trial_params(params, point: dict, seed: int):
    """The params of one trial: the grid point's values, and adapt.seed + seed (the replicate)."""
    from .config import parse
    if not point and seed == 0:
        return params
    tree = params.model_dump(mode="json")
    for key, value in point.items():
        _set(tree, key, value)
    tree["adapt"]["seed"] = params.adapt.seed + seed
    return parse(tree)


@dataclass(frozen=True)
class Trial:
    """One replicate (``seed``: 0..adapt.seeds-1) at one grid point (``point``: index into grid_points)."""
    seed: int = 0
    point: int = 0

    @property
    def tag(self) -> str:
        """Part of the cell's name: empty for seed 0 at point 0 (the names of a run without seeds or grid)."""
        return "-".join(([f"s{self.seed}"] if self.seed else []) + ([f"h{self.point}"] if self.point else []))


def trials(params, method: str) -> list[Trial]:
    return [Trial(s, h) for h in range(len(grid_points(params, method))) for s in range(params.adapt.seeds)]


def cell_grid(params, module, domains=None) -> list[tuple[str, float | None]]:
    """The (domain, sparsity) cells a method has, the one place the method contract's rules live:
    every domain of ``domains`` (default ``domains.names``), or the first only for ``PER_DOMAIN = False``;
    every ``adapt.sparsities`` for ``USES_SPARSITY``, else one cell per domain (sparsity None)."""
    names = tuple(params.domains.names if domains is None else domains)
    names = names if getattr(module, "PER_DOMAIN", True) else names[:1]
    sparsities = params.adapt.sparsities if module.USES_SPARSITY else (None,)
    return [(d, s) for d in names for s in sparsities]


def validation_table(params, paths, method: str, module) -> list[dict]:
    """Per domain, sparsity and grid point: the mean validation PSNR over seeds, and whether it is chosen."""
    points = grid_points(params, method)
    rows = []
    for d, s in cell_grid(params, module):
        scores = []
        for h, point in enumerate(points):
            vals = []
            for seed in range(params.adapt.seeds):
                cell = paths.cell(method, d, s, Trial(seed, h).tag)
                details = json.loads(cell.metrics.read_text())["details"]
                if "val_psnr" not in details:
                    raise ValueError(f"{cell.metrics}: no details.val_psnr (method {method} must report it)")
                vals.append(float(details["val_psnr"]))
            scores.append(statistics.fmean(vals))
        best = max(range(len(points)), key=lambda h: (scores[h], -h))
        for h, point in enumerate(points):
            rows.append({"method": method, "domain": d, "sparsity": "" if s is None else s, "point": h,
                         "setting": json.dumps(point, sort_keys=True) if point else "(as params)",
                         "val_psnr": round(scores[h], 4), "chosen": h == best})
    return rows


def choose(params, paths, method: str, module) -> dict[tuple[str, float | None], int]:
    """(domain, sparsity) -> the chosen grid point (from the cells' validation PSNR)."""
    if len(grid_points(params, method)) == 1:
        return {cell: 0 for cell in cell_grid(params, module)}
    return {(r["domain"], None if r["sparsity"] == "" else r["sparsity"]): r["point"]
            for r in validation_table(params, paths, method, module) if r["chosen"]}
