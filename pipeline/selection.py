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

Extension to interior optima (``search.max_extend``). A *searched* key has two or more numeric values.
Where a (domain, sparsity)'s choice sits on an edge of the values its key was tried at, the adapt stage
trains one more point beyond that edge -- the chosen point with that key one step further: the grid's
own ratio at that edge for positive floats (log-spaced learning rates), its own difference for ints
and other numbers -- for that (domain, sparsity) only, every scoring seed (below), and chooses again; at most
``max_extend`` steps per key and direction. A step the key's schema refuses (its range, or a rule
across keys) is not taken. The extended points are stored with the method's cells
(``build/<run>/adapt/<method>/grid.json``, written only when there is one) and numbered after the
grid's (``…-h2``, ``…-h3``); every reader (``grid_points`` with ``paths``, ``choose``, the studies)
sees them. Each choice is then *interior* (tried values on both sides), *capped (max_extend)*,
*capped (range)* or *edge-unsearched* (on an edge, max_extend 0). String values are not extended.

Scoring seeds (``search.seeds``). By default every seed of ``adapt.seeds`` trains at every point and the
choice reads their mean. With ``search.seeds: N`` (fewer than ``adapt.seeds``) only the first N seeds
train at every point (the extension's included) and score it; once the choice is made, the remaining
seeds train at the chosen point alone. The choice is still made on validation data only, from N seeds;
the test numbers keep every seed. A cell's key does not depend on N: a seed at a point is the same cell
either way, so N = adapt.seeds is the default's run exactly.
"""
from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

GridValue = int | float | str
Grid = dict[str, tuple[GridValue, ...]]
INTERIOR, CAPPED, RANGE, EDGE = "interior", "capped (max_extend)", "capped (range)", "edge-unsearched"
STATUSES = (INTERIOR, CAPPED, RANGE, EDGE)
EXTEND = "extend"  # a step to train (the adapt stage's extension has not taken it yet)
FIELDS = ["method", "domain", "sparsity", "point", "setting", "val_psnr", "seeds", "chosen", "origin", "choice"]
GRID_FILE = "grid.json"


class Search(BaseModel):
    """``search``: per method (its name as key) a grid of dotted param -> values, and ``max_extend``."""
    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Grid]
    max_extend: Annotated[int, Field(ge=0, le=10, strict=True)] = Field(
        default=0, description="steps beyond a grid edge a choice on that edge may extend its key, per direction")
    seeds: Annotated[int, Field(ge=0, le=100, strict=True)] = Field(
        default=0, description="the first N adaptation seeds score the grid's points (0: every seed); the "
                               "other seeds train at the chosen point only")

    def grids(self) -> dict[str, Grid]:
        return dict(self.__pydantic_extra__ or {})

    def get(self, method: str, default=None):
        return self.grids().get(method, default)

    def items(self):
        return self.grids().items()

    def __getitem__(self, method: str) -> Grid:
        return self.grids()[method]

    def __contains__(self, method: str) -> bool:
        return method in self.grids()


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
    from .methods import registry
    module = registry()[method]
    for key in params.search[method]:
        if not any(key == p or key.startswith(p + ".") for p in module.PARAMS):
            raise ValueError(f"search.{method}.{key}: not among the method's params {list(module.PARAMS)}")
    for point in grid_points(params, method):
        if (msg := _refusal(params, point)) is not None:
            raise ValueError(f"search.{method}: the grid point {point} is refused: {msg}")


def _refusal(params, point: dict) -> str | None:
    """Why the schema refuses the whole params with ``point``'s values set (None: it accepts them)."""
    from pydantic import ValidationError
    tree = params.model_dump(mode="json")
    tree["search"] = {}
    for key, value in point.items():
        _set(tree, key, value)
    try:
        type(params).model_validate(tree)
    except ValidationError as err:
        return err.errors()[0]["msg"].removeprefix("Value error, ")
    return None


def _check_value(params, where: str, key: str, value) -> None:
    """A grid value through the schema of the block it sets (type and range), as the adapt stage will."""
    from pydantic import ValidationError
    block, _, rest = key.partition(".")
    if getattr(params, block, None) is None:
        raise ValueError(f"{where}: the params have no {block} block")
    tree = getattr(params, block).model_dump(mode="json")
    _set(tree, rest, value)
    try:
        type(getattr(params, block)).model_validate(tree)
    except ValidationError as err:
        msg = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"{where} = {value!r}: {msg}") from None


def grid_points(params, method: str, paths=None) -> list[dict]:
    """Every combination of the method's grid, in order (one empty point without a grid); with ``paths``,
    then the points the extension added (``grid.json``), numbered after them."""
    grid = params.search.get(method, {})
    keys = sorted(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    return points + [e["setting"] for e in extended(params, paths, method)] if paths is not None else points


def extended(params, paths, method: str) -> list[dict]:
    """The extension's points of ``method``: ``{"point", "setting", "cells": [[domain, sparsity], ...]}``."""
    path = paths.adapt(method) / GRID_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["extended"]
        points = [(e["point"], sorted(e["setting"]), e["cells"]) for e in entries]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} unusable ({type(err).__name__}: {err}); re-run the adapt stage") from None
    first, keys = len(grid_points(params, method)), sorted(params.search.get(method, {}))
    for h, (point, setting, _) in enumerate(points, first):
        if point != h or setting != keys:
            raise ValueError(f"{path}: point {point} (keys {setting}) is not an extension of search.{method} "
                             f"(keys {keys}, points from {first}); re-run the adapt stage")
    return entries


def write_extended(paths, method: str, entries: list[dict], first: int) -> None:
    """``grid.json`` beside the method's cells (only when the extension added a point)."""
    from .storage import write_json
    if entries:
        write_json(paths.adapt(method) / GRID_FILE,
                   {"extended": [{"point": h, **e} for h, e in enumerate(entries, first)]})


def available(params, paths, method: str, module) -> dict[tuple[str, float | None], list[int]]:
    """(domain, sparsity) -> the points it has cells of: the whole grid, then its extended points."""
    first = len(grid_points(params, method))
    out = {cell: list(range(first)) for cell in cell_grid(params, module)}
    for e in extended(params, paths, method):
        for d, s in e["cells"]:
            if (d, s) not in out:
                raise ValueError(f"{paths.adapt(method) / GRID_FILE}: point {e['point']} names the cell {d} {s}, "
                                 f"not one of {method}'s; re-run the adapt stage")
            out[(d, s)].append(e["point"])
    return out


# ------------------------------------------------------------------------------------------ extension
def searched_keys(grid: Grid) -> list[str]:
    """The keys the extension may step: two values or more, every one a number."""
    return [k for k in sorted(grid) if len(grid[k]) > 1 and not any(isinstance(v, str) for v in grid[k])]


def next_value(values, up: bool, n: int):
    """The (n+1)-th step beyond the edge of ``values``: the grid's own ratio at that edge for positive
    values with a float among them, else its own difference (ints stay ints)."""
    v = sorted(values)
    edge, inner = (v[-1], v[-2]) if up else (v[0], v[1])
    if all(isinstance(x, int) for x in v):
        return edge + (n + 1) * (edge - inner)
    x = edge * (edge / inner) ** (n + 1) if all(x > 0 for x in v) else edge + (n + 1) * (edge - inner)
    return float(f"{x:.12g}")  # 0.003 * 3 is 0.009, not 0.009000000000000001


def pick(scores: dict[int, float]) -> int:
    """The best mean validation PSNR (ties: the first point)."""
    return max(sorted(scores), key=lambda h: (scores[h], -h))


def line_search(params, method: str, points: list[dict], scores: dict[int, float]
                ) -> tuple[int, dict[str, tuple[str, dict | None]]]:
    """The chosen point among ``scores`` (point -> mean validation PSNR of one (domain, sparsity)) and, per
    searched key, its status and the point to train next (EXTEND), else None."""
    grid, cap = params.search.get(method, {}), params.search.max_extend
    best = pick(scores)
    at, out = points[best], {}
    for key in searched_keys(grid):
        tried, value, initial = {points[h][key] for h in scores}, points[best][key], sorted(grid[key])
        if min(tried) < value < max(tried):
            out[key] = (INTERIOR, None)
            continue
        up = value == max(tried)
        n = sum(t > initial[-1] if up else t < initial[0] for t in tried)
        if cap == 0 or n >= cap:
            out[key] = (EDGE if cap == 0 else CAPPED, None)
            continue
        step = {**at, key: next_value(initial, up, n)}
        out[key] = (RANGE, None) if _refusal(params, step) is not None else (EXTEND, step)
    return best, out


def extend(params, method: str, entries: list[dict], scores: dict[tuple, dict[int, float]]) -> list[dict]:
    """The extension's points after one more round: ``entries`` (``{"setting", "cells"}``, in point order)
    with every (domain, sparsity) of ``scores`` whose choice is on an edge given its next step."""
    first = len(grid_points(params, method))
    points = grid_points(params, method) + [e["setting"] for e in entries]
    out = [{"setting": e["setting"], "cells": [list(c) for c in e["cells"]]} for e in entries]
    for cell, cell_scores in scores.items():
        for status, step in line_search(params, method, points, cell_scores)[1].values():
            if status != EXTEND:
                continue
            if step not in points:
                points.append(step)
                out.append({"setting": step, "cells": []})
            out[points.index(step) - first]["cells"].append(list(cell))
    return out


def picks(params, method: str, entries: list[dict], scores: dict[tuple, dict[int, float]]) -> dict[tuple, int]:
    """(domain, sparsity) -> the point chosen from ``scores`` (the scoring seeds' mean validation PSNR per
    point), the extension's points (``entries``) included: what ``choose`` reads back from the cells."""
    points = grid_points(params, method) + [e["setting"] for e in entries]
    return {cell: line_search(params, method, points, cell_scores)[0] for cell, cell_scores in scores.items()}


def status(keys: dict[str, tuple[str, dict | None]]) -> str:
    """One choice's status: one word when every searched key agrees, else per key ("" without a key)."""
    per = {k: EDGE if s == EXTEND else s for k, (s, _) in keys.items()}
    if len(set(per.values())) <= 1:
        return next(iter(per.values()), "")
    return "; ".join(f"{k}: {s}" for k, s in per.items())


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


def scoring_seeds(params, method: str) -> int:
    """How many seeds score a grid point of ``method`` (the first ones): ``search.seeds`` (0: all) where the
    method has a grid, every seed otherwise (one point: nothing to choose, so nothing to save)."""
    n, seeds = params.search.seeds, params.adapt.seeds
    return seeds if n == 0 or len(grid_points(params, method)) == 1 else min(n, seeds)


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
    """Per domain, sparsity and grid point (the extended ones included): the mean validation PSNR over the
    scoring seeds, whether it is chosen, where the point comes from and, on the chosen row, the choice's
    status."""
    points, first = grid_points(params, method, paths), len(grid_points(params, method))
    rows = []
    for (d, s), hs in available(params, paths, method, module).items():
        scores, n = {}, scoring_seeds(params, method)
        for h in hs:
            vals = []
            for seed in range(n):
                cell = paths.cell(method, d, s, Trial(seed, h).tag)
                details = json.loads(cell.metrics.read_text())["details"]
                if "val_psnr" not in details:
                    raise ValueError(f"{cell.metrics}: no details.val_psnr (method {method} must report it)")
                vals.append(float(details["val_psnr"]))
            scores[h] = statistics.fmean(vals)
        best, keys = line_search(params, method, points, scores)
        for h in hs:
            rows.append({"method": method, "domain": d, "sparsity": "" if s is None else s, "point": h,
                         "setting": json.dumps(points[h], sort_keys=True) if points[h] else "(as params)",
                         "val_psnr": round(scores[h], 4), "seeds": n, "chosen": h == best,
                         "origin": "grid" if h < first else "extension", "choice": status(keys) if h == best else ""})
    return rows


def choose(params, paths, method: str, module) -> dict[tuple[str, float | None], int]:
    """(domain, sparsity) -> the chosen grid point, the extended ones included (from the cells' validation PSNR)."""
    if len(grid_points(params, method)) == 1:
        return {cell: 0 for cell in cell_grid(params, module)}
    return {(r["domain"], None if r["sparsity"] == "" else r["sparsity"]): r["point"]
            for r in validation_table(params, paths, method, module) if r["chosen"]}
