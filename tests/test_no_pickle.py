"""No unsafe deserialisation anywhere in pipeline/ (and the detector can fail)."""
from __future__ import annotations

import ast
import re

from .conftest import REPO


# ------------------------------------------------------------------------------ no unsafe loads
def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _unsafe_uses(source: str, filename: str) -> list[str]:
    """Problems of one module: torch.load without weights_only=True, np.load without
    allow_pickle=False, any pickle-like module or call outside the restricted unpickler."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module.attr it stands for
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    problems.append(f"{filename}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                if node.module.split(".")[0] in UNSAFE_MODULES:
                    problems.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        full = full.replace("numpy.", "np.", 1) if full.startswith("numpy.") else full
        where = f"{filename}:{node.lineno}: {name}(...)"
        if full in ("torch.load", "torch.serialization.load"):
            if _keyword(node, "weights_only") is not True:
                problems.append(f"{where} without weights_only=True")
        elif full in ("np.load",):
            if _keyword(node, "allow_pickle") is not False:
                problems.append(f"{where} without allow_pickle=False")
        elif full.split(".")[0] in UNSAFE_MODULES or full.endswith(("read_pickle", "torch.jit.load")):
            problems.append(f"{where}: unpickling")
    return problems


def test_no_unsafe_deserialisation_in_pipeline():
    problems, torch_loads = [], 0
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        source = path.read_text()
        torch_loads += len(re.findall(r"\btorch\.load\(", source))
        for p in _unsafe_uses(source, rel):
            # the one allowed use: data.py's restricted unpickler (a subclass of pickle.Unpickler)
            if rel == "pipeline/data.py" and p.endswith(": import pickle"):
                continue
            problems.append(p)
    assert not problems, "unsafe deserialisation:\n" + "\n".join(problems)
    assert torch_loads >= 1  # the checkpoint loader is found, so the check above looked at it
    # data.py: pickle is used only through the restricted subclass, never pickle.load(s)
    tree = ast.parse((REPO / "pipeline" / "data.py").read_text())
    subclasses = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                  and any(_dotted(b) == "pickle.Unpickler" for b in n.bases)]
    assert [c.name for c in subclasses] == ["_ArrayUnpickler"]
    assert any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in subclasses[0].body)
    uses = {_dotted(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _dotted(n) and
            _dotted(n).startswith("pickle.")}
    assert uses == {"pickle.Unpickler"}, uses


def test_unsafe_use_detector_can_fail():
    bad = ("import torch, pickle\nimport numpy as np\nfrom torch import load as L\n"
           "torch.load(p)\nL(p, weights_only=False)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
           "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\n")
    found = _unsafe_uses(bad, "x.py")
    assert len(found) == 5, found


# =============================================================================================
# Slow tests: real `dvc repro` in temporary copies of the working tree
