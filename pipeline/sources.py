"""The source files a computation runs: a module's ``pipeline.*`` imports, followed statically.

Content keys hash these files' bytes, so that a change to one method's file changes only that method's
keys. Imports are read from the syntax tree, deferred ones (inside functions) included; a module found
at run time by name (``pipeline.methods.registry``) is not followed: name it.
"""
from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the folder holding the ``pipeline`` package


def module_file(name: str) -> Path | None:
    """The file of module ``name`` (``pipeline.x.y``), or None when it is no module of the project."""
    if name != "pipeline" and not name.startswith("pipeline."):
        return None
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports(path: Path) -> tuple[Path, ...]:
    package = ".".join(path.relative_to(ROOT).parts[:-1])  # what a relative import starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [f for f in map(module_file, names) if f is not None]
        # a submodule's package runs first: pipeline.a.b imports pipeline/a/__init__.py
        for name in names:
            parts = name.split(".")
            found += [f for i in range(1, len(parts)) if (f := module_file(".".join(parts[:i]))) is not None]
    return tuple(dict.fromkeys(found))


def closure(*modules: str) -> list[Path]:
    """Every project file that importing ``modules`` may run, sorted."""
    todo = [f for f in map(module_file, modules) if f is not None]
    seen = set(todo)
    while todo:
        for f in _imports(todo.pop()):
            if f not in seen:
                seen.add(f)
                todo.append(f)
    return sorted(seen)


def _code(path: Path) -> str:
    """The module's syntax tree without docstrings: comments, docstrings and layout do not count."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def digest(*modules: str) -> str:
    """sha256 over the relative names and the code (``_code``) of ``closure(*modules)``: an edit of comments
    or docstrings leaves it unchanged, any change to what runs changes it."""
    h = hashlib.sha256()
    for f in closure(*modules):
        h.update(f"{f.relative_to(ROOT).as_posix()}\n".encode())
        h.update(_code(f).encode())
    return h.hexdigest()
