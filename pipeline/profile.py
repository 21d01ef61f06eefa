"""Switch profiles: ``python -m pipeline.profile <quick|ci|paper> [--source builtin|cifar100] [--ablations]``.

``profiles/quick.yaml`` is complete; the other profiles are overlays on it. The command writes the
merged, validated result to ``params.yaml`` (what ``dvc repro`` reads). Nothing is written when the
result does not validate. ``profiles/tiny.yaml`` is no profile but the overlay ``shrink`` applies
(tests, benchmark scaling runs).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import get_args

import yaml

from .config import STUDIES, ConfigError, Params, parse
from .paths import REPO
from .storage import write_atomic

PROFILES = REPO / "profiles"  # definitions that ship with the code, like pipeline/ itself
NAMES = get_args(Params.model_fields["profile"].annotation)  # quick, paper, ci: the files that are profiles
HEADER = ("# Written by `python -m pipeline.profile {profile} --source {source}{flags}` from profiles/; "
          "edit profiles/*.yaml, not this file.\n")


def merge(base: dict, overlay: dict) -> dict:
    """Deep merge: overlay's leaves replace base's."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(profile: str, source: str | None = None, ablations: bool = False) -> dict:
    """The full params mapping of ``profile`` (validated), optionally with another data source and
    with every ablation study on (``ablate.studies``)."""
    path = PROFILES / f"{profile}.yaml"
    if profile not in NAMES or not path.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.yaml") if p.stem in NAMES)
        raise ConfigError(f"profile {profile!r} not found; known: {names}")
    raw = yaml.safe_load((PROFILES / "quick.yaml").read_text())
    if profile != "quick":
        raw = merge(raw, yaml.safe_load(path.read_text()))
    if source:
        raw["data"]["source"] = source
    if ablations:
        raw["ablate"]["studies"] = list(STUDIES)
    parse(raw)
    return raw


def shrink(raw: dict) -> dict:
    """A copy of the params mapping ``raw`` with ``profiles/tiny.yaml``'s sizes (not validated)."""
    return merge(copy.deepcopy(raw), yaml.safe_load((PROFILES / "tiny.yaml").read_text()))


def write(raw: dict, path: Path, flags: str = "") -> None:
    text = HEADER.format(profile=raw["profile"], source=raw["data"]["source"], flags=flags)
    text += yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110)
    write_atomic(path, text.encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--source", choices=["builtin", "cifar100"])
    ap.add_argument("--ablations", action="store_true",
                    help=f"every ablation study on ({', '.join(STUDIES)}); the quick profile has none by default")
    ap.add_argument("--out", type=Path, default=REPO / "params.yaml")
    args = ap.parse_args(argv)
    try:
        raw = render(args.profile, args.source, args.ablations)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write(raw, args.out, " --ablations" if args.ablations else "")
    studies = ", ".join(raw["ablate"]["studies"]) or "none"
    print(f"{args.out.name}: profile {raw['profile']}, source {raw['data']['source']}, ablations: {studies}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
