"""Stage ``adapt_<method>``: one DVC matrix cell = one agent adapted to one domain (and sparsity).

``python -m pipeline.stages.adapt --method sam --domain VA --sparsity 0.001``
Writes the method's artefacts and ``build/<run>/adapt/<method>/<cell>.json`` (keys: CELL_KEYS).
"""
from __future__ import annotations

import argparse
import shutil

import torch

from ..config import ConfigError, Params
from ..methods import CELL_KEYS, Context, registry
from ..paths import Paths
from ..tracking import Tracker
from ..train import setup_runtime
from . import run, write_json


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--sparsity", type=float)
    return ap.parse_args(argv)


def check_cell(params: Params, method: str, domain: str, sparsity: float | None):
    """Refuse a cell that params.yaml does not define (one line, before any work)."""
    methods = registry()
    if method not in methods:
        raise ConfigError(f"adapt: unknown method {method!r}; known: {sorted(methods)}")
    if domain not in params.domains.names:
        raise ConfigError(f"adapt: domain {domain!r} not in domains.names {list(params.domains.names)}")
    uses = methods[method].USES_SPARSITY
    if uses and sparsity not in params.adapt.sparsities:
        raise ConfigError(f"adapt: --sparsity {sparsity} not in adapt.sparsities {list(params.adapt.sparsities)}")
    if not uses and sparsity is not None:
        raise ConfigError(f"adapt: method {method!r} takes no --sparsity")
    return methods[method]


def main(params: Params, paths: Paths, argv=None) -> None:
    args = parse_args(argv)
    module = check_cell(params, args.method, args.domain, args.sparsity)
    rt = setup_runtime(params)
    cell = paths.cell(args.method, args.domain, args.sparsity)  # the stage owns the cell's outputs
    cell.folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(params, paths, rt.pop("device_obj"), checkpoints=cell.checkpoints)
    torch.manual_seed(params.adapt.seed)
    with Tracker(params, paths, f"adapt_{args.method}", cell.name) as tracker:
        tracker.set_tags({**rt, "method": args.method, "domain": args.domain, "sparsity": str(args.sparsity)})
        result = module.adapt(ctx, args.domain, args.sparsity, cell, tracker)
        assert tuple(result) == CELL_KEYS, f"{args.method}.adapt returned keys {tuple(result)}, expected {CELL_KEYS}"
        tracker.log_metrics({k: v for k, v in result.items() if k in ("domain_psnr", "memory_bytes", "memory_cost_pct")})
        tracker.log_metrics({k: v for k, v in result["details"].items() if isinstance(v, (int, float))})
        # No run id or commit here: a cached intermediate must be byte-identical across equal runs.
        write_json(cell.metrics, result)
    shutil.rmtree(cell.checkpoints, ignore_errors=True)  # the cell is complete: its checkpoints have served
    print(f"adapt {args.method} {cell.name}: domain PSNR {result['domain_psnr']:.2f} dB, "
          f"memory {result['memory_cost_pct']:.3f} %")


if __name__ == "__main__":
    run(main)
