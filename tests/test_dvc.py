"""dvc.yaml against the code: every stage's deps hold the code it runs, its paths are those of
``pipeline.paths``, its params keys exist; DVC and MLflow stay offline and out of git."""
from __future__ import annotations

import ast
import configparser
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipeline import profile
from pipeline.config import parse
from pipeline.paths import REPO, Paths

PROFILES = ("quick", "ci", "paper")


@cache
def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def entries(items) -> list[str]:
    """Paths of a dvc.yaml outs/deps/metrics/plots list (plain strings or one-key mappings)."""
    return [next(iter(i)) if isinstance(i, dict) else i for i in items or []]


def lookup(raw: dict, dotted: str):
    value = raw
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"{dotted} is not in params"
        value = value[part]
    return value


# ------------------------------------------------------------------------------ deps from the code
# Stages that load every module of a registry at run time (found by name, not imported): validate composes
# the params schema from the methods' Config blocks and the studies'; adapt runs the methods' cells; ablate
# runs a study. Every other stage reads params.yaml through the same schema, so it loads those files too,
# but a method's or study's Config only checks its own keys, which those stages do not read: they list
# pipeline/methods/__init__.py and pipeline/studies/__init__.py (the registries) and, where they evaluate
# methods, the whole methods folder.
REGISTRIES = {"pipeline.stages.validate": ("methods", "studies"), "pipeline.stages.adapt": ("methods",),
              "pipeline.stages.ablate": ("studies",)}


def registry_modules(package: str) -> list[str]:
    return sorted(f"pipeline.{package}.{p.stem}" for p in (REPO / "pipeline" / package).glob("*.py")
                  if p.stem != "__init__")


def stage_modules(cmd: str) -> list[str]:
    """The modules a stage command runs: its ``-m`` module, plus every module of the registries it loads."""
    m = re.fullmatch(r"python -m (pipeline\.stages\.\w+)(\s.*)?", cmd.strip())
    assert m, f"unexpected stage command {cmd!r}"
    return [m.group(1), *(mod for package in REGISTRIES.get(m.group(1), ()) for mod in registry_modules(package))]


_LOADED = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())
                        if (n == "pipeline" or n.startswith("pipeline.")) and getattr(m, "__file__", None))))
"""


def loaded_files(modules: list[str]) -> set[Path]:
    """The files of every ``pipeline.*`` module that importing ``modules`` loads, in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _LOADED, *modules], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=True)
    return {Path(f).resolve() for f in json.loads(done.stdout)}


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def deferred_imports(files: set[Path]) -> set[Path]:
    """Files of ``pipeline.*`` modules imported inside functions of ``files`` (and so on, transitively):
    an import at call time runs code that the fresh interpreter above never loaded."""
    todo, seen = list(files), set(files)
    while todo:
        path = todo.pop()
        package = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if path.name == "__init__.py":
            package = package.removesuffix(".__init__")
        else:
            package = package.rpartition(".")[0]
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
            for name in names:
                file = _module_file(name) if name == "pipeline" or name.startswith("pipeline.") else None
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def missing_code_deps(stage: str) -> list[str]:
    st = dvc_stages()[stage]
    files = deferred_imports(loaded_files(stage_modules(st["cmd"])))
    code = sorted(f.relative_to(REPO).as_posix() for f in files)
    return [f for f in code if not covered(f, entries(st["deps"]))]


@pytest.mark.parametrize("stage", list(dvc_stages()))
def test_every_module_a_stage_loads_is_among_its_deps(stage):
    """A change to any code a stage runs must re-run it: otherwise DVC serves stale results."""
    missing = missing_code_deps(stage)
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not list in deps: {missing}"


def test_the_deps_check_finds_a_missing_dep():
    """The check above can fail: the adapt stage of sam runs pipeline/sam, which a hand-written list forgot once."""
    files = deferred_imports(loaded_files(stage_modules("python -m pipeline.stages.adapt")))
    code = {f.relative_to(REPO).as_posix() for f in files}
    assert "pipeline/methods/sam.py" in code and "pipeline/paths.py" in code
    assert any(f.startswith("pipeline/sam") for f in code)
    assert not covered("pipeline/methods/sam.py", ["pipeline/methods/__init__.py", "pipeline/sam.py"])
    assert covered("pipeline/methods/sam.py", ["pipeline/methods"])


def test_deferred_imports_are_followed(tmp_path):
    """``provenance`` imports pipeline.tracking inside a function: still a dependency of every stage."""
    files = deferred_imports({(REPO / "pipeline" / "stages" / "__init__.py").resolve()})
    assert (REPO / "pipeline" / "tracking.py").resolve() in files


def test_stage_command_module_is_a_dependency_and_names_the_stage():
    for stage, st in dvc_stages().items():
        module = stage_modules(st["cmd"])[0]
        assert module.replace(".", "/") + ".py" in entries(st["deps"]), stage
        short = module.rsplit(".", 1)[1]
        assert stage == short or stage.startswith(short + "_"), stage


# ------------------------------------------------------------------------------ paths
def substitute(text: str, params, item: dict | None = None) -> str:
    out = text.replace("${data.source}", params.data.source).replace("${profile}", params.profile)
    for k, v in (item or {}).items():
        out = out.replace(f"${{item.{k}}}", str(v))
    assert "${" not in out, f"unresolved interpolation in {text!r}"
    return out


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("name,source", [(p, s) for p in PROFILES for s in ("builtin", "cifar100")])
def test_dvc_paths_are_the_paths_of_pipeline_paths(name, source):
    params = parse(profile.render(name, source))
    paths = Paths.of(params, REPO)
    st = dvc_stages()

    def outs(stage, kind="outs", item=None):
        return sorted(substitute(p, params, item) for p in entries(st[stage].get(kind)))

    assert outs("validate") == [rel(paths.stamp)]
    assert outs("domains") == sorted([rel(paths.data), rel(paths.figures / "domains_preview.png")])
    assert outs("pretrain") == [rel(paths.pretrained)]
    assert outs("pretrain", "metrics") == [rel(paths.pretrain_json)]
    assert outs("pretrain", "plots") == [rel(paths.plots / "pretrain_curve.csv")]
    assert outs("adapt") == [rel(paths.adapt("sam").parent)]  # one stage: a folder of cells per method
    for method in ("sam", "tuning", "equalizer"):
        cell = paths.cell(method, params.domains.names[0], params.adapt.sparsities[0] if method == "sam" else None)
        assert cell.folder == paths.adapt(method) and cell.metrics.parent == paths.adapt(method)
    assert sorted([*outs("evaluate"), *outs("evaluate", "metrics")]) == sorted(
        [rel(paths.reconstructions), rel(paths.per_image), rel(paths.evaluation_csv), rel(paths.validation_csv),
         rel(paths.evaluate_json)])
    assert rel(paths.tables) in outs("report") and rel(paths.claims_json) in outs("report")
    stamp = rel(paths.stamp)
    for stage in st:
        if stage != "validate":
            assert stamp in entries(st[stage].get("deps")) or any(
                substitute(p, params) == stamp for p in entries(st[stage].get("deps")) if "${item" not in p), stage


WHOLE_FILE = {"params.yaml": None}  # a params entry that tracks every param of the file


def test_dvc_params_keys_exist_in_params_yaml():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    listed = [k for stage in dvc_stages().values() for k in (stage.get("params") or [])]
    assert listed
    for key in listed:
        if key == WHOLE_FILE:
            continue
        assert isinstance(key, str), f"params file sections other than the whole params.yaml: {key!r}"
        lookup(raw, key)


@pytest.mark.parametrize("stage", ["validate", "adapt"])
def test_validate_and_adapt_track_every_param(stage):
    """validate guards every stage: it must re-run (and fail) when any block changes. adapt's cells are keyed
    by their methods' PARAMS, and a method's own block is found by the schema, never listed in dvc.yaml."""
    assert dvc_stages()[stage]["params"] == [WHOLE_FILE]


# ------------------------------------------------------------------------------ offline, out of git
def test_dvc_analytics_are_off():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".dvc" / "config")
    assert cfg.get("core", "analytics").strip().lower() == "false"


def test_tracking_store_is_kept_out_of_dvc_and_git():
    dvcignore = (REPO / ".dvcignore").read_text().split()
    gitignore = (REPO / ".gitignore").read_text().split()
    for name in ("mlflow.db", "mlartifacts/", ".checkpoints/"):
        assert name in dvcignore
    assert "/mlflow.db" in gitignore and "/.checkpoints/" in gitignore and "/build/" in gitignore


def test_every_code_dep_exists():
    """A renamed module (sam.py -> sam/) must not leave a dep that tracks nothing."""
    for stage, st in dvc_stages().items():
        for dep in entries(st["deps"]):
            if dep.startswith("pipeline/"):
                assert (REPO / dep).exists(), f"dvc.yaml stage {stage!r} lists {dep}, which does not exist"


def test_every_method_param_exists_and_the_grid_keys_are_kept_out_of_the_cell_keys():
    """A cell's content key hashes its method's PARAMS (less the lists that span the cells): each names a
    real key, and a key that only spans the cells is never hashed."""
    from pipeline.cells import GRID_KEYS
    from pipeline.methods import registry
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, module in registry().items():
        for key in module.PARAMS:
            lookup(raw, key)
            assert key not in GRID_KEYS, name
