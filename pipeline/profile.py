"""Switch profiles: ``python -m pipeline.profile <profile> [--source S] [--folder PATH] [--local PATH] [--ablations]``.

``profiles/quick.yaml`` is complete; the other profiles are overlays on it. The command writes the
merged, validated result to ``params.yaml`` (what ``dvc repro`` reads). Nothing is written when the
result does not validate. ``profiles/tiny.yaml`` is no profile but the overlay ``shrink`` applies
(tests, benchmark scaling runs).

``--local PATH`` points the CIFAR source at a copy already on disk (``data.<source>.local``); by default
that is the download folder ``data/<source>``, so a copy downloaded there once is found again.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import get_args

import yaml

from .config import ConfigError, ParamsBase, parse
from .paths import REPO
from .studies import names as study_names
from .storage import write_atomic

PROFILES = REPO / "profiles"  # definitions that ship with the code, like pipeline/ itself
NAMES = get_args(ParamsBase.model_fields["profile"].annotation)  # quick, paper, ci: the files that are profiles
SOURCES = ("builtin", "cifar100", "cifar10", "folder")
LOCAL_SOURCES = ("cifar100", "cifar10")  # the sources read from a local copy (data.<source>.local)
HEADER = ("# Written by `python -m pipeline.profile {profile} --source {source}{flags}` from profiles/; "
          "edit profiles/*.yaml, not this file.\n")


def merge(base: dict, overlay: dict) -> dict:
    """Deep merge: overlay's leaves replace base's."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(profile: str, source: str | None = None, ablations: bool = False, folder: str | None = None,
           local: str | None = None) -> dict:
    """The full params mapping of ``profile`` (validated), optionally with another data source, the
    folder source's photos (``data.folder.path``), a local copy of a CIFAR source (``data.<source>.local``)
    and every ablation study on (``ablate.studies``: the names of pipeline/studies/, in their order)."""
    path = PROFILES / f"{profile}.yaml"
    if profile not in NAMES or not path.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.yaml") if p.stem in NAMES)
        raise ConfigError(f"profile {profile!r} not found; known: {names}")
    raw = yaml.safe_load((PROFILES / "quick.yaml").read_text())
    if profile != "quick":
        raw = merge(raw, yaml.safe_load(path.read_text()))
    if source:
        raw["data"]["source"] = source
    if folder:
        raw["data"]["folder"]["path"] = folder
    if local:
        chosen = raw["data"]["source"]
        if chosen not in LOCAL_SOURCES:
            raise ConfigError(f"--local sets data.<source>.local of {' or '.join(LOCAL_SOURCES)}; source {chosen!r} "
                              f"reads no local copy (give --source cifar100 or cifar10)")
        raw["data"][chosen]["local"] = local
    if ablations:
        raw["ablate"]["studies"] = list(study_names())
    parse(raw)
    return raw


def shrink(raw: dict) -> dict:
    """A copy of the params mapping ``raw`` with ``profiles/tiny.yaml``'s sizes (not validated)."""
    return merge(copy.deepcopy(raw), yaml.safe_load((PROFILES / "tiny.yaml").read_text()))


def write(raw: dict, path: Path, flags: str = "") -> None:
    text = HEADER.format(profile=raw["profile"], source=raw["data"]["source"], flags=flags)
    text += yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110)
    write_atomic(path, text.encode())


def _project_path(path: Path) -> str:
    """A path given on the command line as params hold it: relative to the project root when inside it."""
    path = path.resolve()
    return path.relative_to(REPO).as_posix() if REPO in path.parents else str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--source", choices=SOURCES)
    ap.add_argument("--folder", help="a folder of PNG/JPEG photos (data.folder.path); implies --source folder")
    ap.add_argument("--local", help="a local copy of the CIFAR source (data.<source>.local): a cifar-100-python/ "
                    "or cifar-10-batches-py/ folder, or train_images.npy/test_images.npy")
    ap.add_argument("--ablations", action="store_true",
                    help=f"every ablation study on ({', '.join(study_names())}); the quick profile has none by default")
    ap.add_argument("--out", type=Path, default=REPO / "params.yaml")
    args = ap.parse_args(argv)
    folder = None if args.folder is None else _project_path(Path(args.folder))
    local = None if args.local is None else _project_path(Path(args.local))
    try:
        if local is not None and not Path(args.local).is_dir():
            raise ConfigError(f"--local {args.local}: no such folder")
        if folder is not None and args.source not in (None, "folder"):
            raise ConfigError(f"--folder is the folder source's; it cannot go with --source {args.source}")
        raw = render(args.profile, "folder" if folder is not None else args.source, args.ablations, folder, local)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    flags = ((f" --folder {folder}" if folder is not None else "") + (f" --local {local}" if local is not None else "")
             + (" --ablations" if args.ablations else ""))
    write(raw, args.out, flags)
    studies = ", ".join(raw["ablate"]["studies"]) or "none"
    print(f"{args.out.name}: profile {raw['profile']}, source {raw['data']['source']}, ablations: {studies}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
