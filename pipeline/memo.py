"""Stages keyed by content: a stage whose inputs are unchanged restores its outputs instead of recomputing.

DVC re-runs a stage when any of its deps changes, bytes included: a comment added to a module re-runs
every stage that lists it. The key here hashes what can move a stage's numbers, read from the stage's own
entry in ``dvc.yaml`` (so it names exactly what DVC tracks): the values of its params, the code of its
code deps as syntax trees without docstrings (``pipeline.sources``: comments, docstrings and layout do
not count) and the bytes of its other deps (data, models, upstream outputs). A stage that computed stores
a copy of its outputs under ``.cells/<run>/stages/<stage>/<key>/``, outside every DVC output; a later run
with the same key copies them back (each file by atomic rename) and is done in seconds. A stage killed
mid-compute stores nothing; one killed mid-restore restores again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .sources import _code
from .storage import file_sha256

if TYPE_CHECKING:
    from .config import Params
    from .paths import Paths


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _entries(items) -> list[str]:
    """Paths of a dvc.yaml outs/deps/metrics/plots list (plain strings or one-key mappings)."""
    return [next(iter(i)) if isinstance(i, dict) else i for i in items or []]


def _lookup(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


class Memo:
    """The content cache of one stage (``stage``: a dvc.yaml stage, ``name@item`` for a matrix entry)."""

    def __init__(self, params: Params, paths: Paths, stage: str):
        self.params, self.paths, self.stage = params, paths, stage
        self.spec = self._spec()

    def _spec(self) -> dict | None:
        dvc = self.paths.root / "dvc.yaml"
        if not dvc.is_file():
            return None
        name, _, item = self.stage.partition("@")
        entry = (yaml.safe_load(dvc.read_text()) or {}).get("stages", {}).get(name)
        if entry is None:
            return None

        def sub(text: str) -> str:
            text = text.replace("${data.source}", self.params.data.source).replace("${profile}", self.params.profile)
            return text.replace("${item.study}", item)

        outs = [sub(p) for kind in ("outs", "metrics", "plots") for p in _entries(entry.get(kind))]
        return {"deps": [sub(p) for p in _entries(entry.get("deps"))], "outs": outs,
                "params": entry.get("params") or [], "cmd": sub(entry["cmd"])}

    @property
    def enabled(self) -> bool:
        return self.spec is not None

    def key(self) -> str:
        tree = self.params.model_dump(mode="json")
        params = {}
        for p in self.spec["params"]:
            if isinstance(p, dict):  # a whole params file
                params["*"] = tree
            else:
                params[p] = _lookup(tree, p)
        code, data = {}, {}
        for dep in self.spec["deps"]:
            path = self.paths.root / dep
            for f in _files(path):
                rel = f.relative_to(self.paths.root).as_posix()
                if dep.startswith("pipeline/"):
                    if f.suffix == ".py":
                        code[rel] = hashlib.sha256(_code(f).encode()).hexdigest()
                else:
                    data[rel] = file_sha256(f)
        parts = {"stage": self.stage, "cmd": self.spec["cmd"], "params": params, "code": code, "data": data}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    def _store(self, key: str) -> Path:
        return self.paths.home / ".cells" / self.paths.run / "stages" / self.stage.replace("@", "-") / key

    def restore(self) -> bool:
        """Copy a stored result of this key back into place; False when there is none."""
        if not self.enabled:
            return False
        store = self._store(self.key())
        if not (store / "complete").is_file():
            return False
        for out in self.spec["outs"]:
            src, dest = store / out, self.paths.root / out
            if src.is_dir():
                tmp = dest.with_name(f".{dest.name}.restore-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tmp, dest)
            elif src.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.restore-{os.getpid()}")
                shutil.copy2(src, tmp)
                os.replace(tmp, dest)
        print(f"{self.stage}: inputs unchanged (content key {store.name}): outputs restored, nothing recomputed",
              flush=True)
        return True

    def save(self) -> None:
        """Keep a copy of the outputs the stage just wrote, under this key (complete, or not at all)."""
        if not self.enabled:
            return
        store = self._store(self.key())
        tmp = store.with_name(f".tmp-{store.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for out in self.spec["outs"]:
            src = self.paths.root / out
            if src.is_dir():
                shutil.copytree(src, tmp / out)
            elif src.is_file():
                (tmp / out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / out)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "complete").write_text("")
        shutil.rmtree(store, ignore_errors=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, store)
