"""Every path the pipeline reads or writes, derived in one place from the params and a project root.

``Paths.of(params, root)`` is built once by each stage's entry point and passed down; nothing else
joins path segments. ``dvc.yaml`` spells the same paths with ``${data.source}-${profile}`` (checked by
tests/test_paths.py). Tests build a ``Paths`` on ``tmp_path``: no module global points at the tree.

Layout under the root (``run`` = ``<source>-<profile>``):

- ``build/<run>/``: DVC-cached artefacts (git-ignored): ``params.ok``, ``data/``, ``models/``,
  ``adapt/<method>/<cell>.*``, ``eval/``;
- ``reports/<run>/``: git-tracked results: ``metrics/``, ``plots/``, ``tables/``, ``figures/``,
  ``ablations/``, ``claims.*``;
- ``.checkpoints/<run>/``: per-epoch training checkpoints, outside every DVC output so that a
  killed stage resumes;
- ``.cells/<run>/<method>/``: computed adapt cells by content key, outside every DVC output, so that
  an unchanged cell is never recomputed;
- ``mlflow.db``, ``mlartifacts/``: the MLflow store.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the default root: the checkout this code runs from

# Outputs of reports/<run>/ whose bytes name the run that wrote them (MLflow run id, git commit: their
# provenance lines) or the clock (seconds): two runs with the same inputs differ there and nowhere else.
# Every other output, in build/ and reports/, is a pure function of its stage's inputs.
VARYING_OUTPUTS = ("metrics/pretrain.json", "metrics/evaluate.json", "tables/*.md", "tables/*.tex",
                   "claims.json", "claims.md", "README.md", "ablations/*.md")


def cell_name(domain: str, sparsity: float | None, trial: str = "") -> str:
    """A cell's name: ``VA`` or ``VA-0.001``, then its trial's tag (``pipeline.selection.Trial``) if any:
    ``VA-0.001-s1`` (seed 1), ``VA-h2`` (grid point 2)."""
    name = domain if sparsity is None else f"{domain}-{sparsity:g}"
    return f"{name}-{trial}" if trial else name


@dataclass(frozen=True)
class Cell:
    """The outputs of one adapt cell (method x domain [x sparsity]), owned by the adapt stage."""
    folder: Path       # build/<run>/adapt/<method>
    name: str          # cell_name(domain, sparsity)
    checkpoints: Path  # .checkpoints/<run>/<method>/<name>: removed when the cell completes

    @property
    def metrics(self) -> Path:
        """The cell's metrics JSON (keys ``CELL_KEYS``)."""
        return self.folder / f"{self.name}.json"

    def artifact(self, variant: str = "") -> Path:
        """A safetensors file of the cell: ``<name>.safetensors`` or ``<name>-<variant>.safetensors``."""
        return self.folder / f"{self.name}{'-' + variant if variant else ''}.safetensors"

    def checkpoint(self, tag: str) -> Path:
        return self.checkpoints / f"{tag}.pt"


@dataclass(frozen=True)
class Paths:
    root: Path
    run: str  # "<source>-<profile>"

    @classmethod
    def of(cls, params, root: str | Path | None = None) -> "Paths":
        return cls(Path(root) if root is not None else REPO, params.run_name)

    @property
    def home(self) -> Path:
        """The project a run belongs to: the root itself, or, in the temporary copy where
        ``dvc exp run --queue`` / ``--temp`` runs an experiment (``<project>/.dvc/tmp/exps/<name>/``),
        the project that holds it, so that such a run logs to the project's MLflow store, shares its
        content-keyed cells and finds the data paths params give relative to it (``data/cifar100``)."""
        parts = self.root.resolve().parts
        if len(parts) > 4 and parts[-4:-1] == (".dvc", "tmp", "exps"):
            return Path(*parts[:-4])
        return self.root

    def resolve(self, path: str | Path) -> Path:
        """A path from params: absolute as given, relative to the project root otherwise (to the
        project ``home`` when the root is a temporary experiment copy that lacks it)."""
        p = Path(path)
        if p.is_absolute():
            return p
        here = self.root / p
        return here if here.exists() or self.home == self.root else self.home / p

    # ------------------------------------------------------------------ project-wide
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.home / "mlartifacts"

    # ------------------------------------------------------------------ build/<run>
    @property
    def build(self) -> Path:
        return self.root / "build" / self.run

    @property
    def stamp(self) -> Path:
        """Written by ``validate``; every other stage depends on it."""
        return self.build / "params.ok"

    @property
    def data(self) -> Path:
        return self.build / "data"

    def split(self, name: str) -> Path:
        """One data split (``base_train``, ``VA_test``...) as written by the domains stage."""
        return self.data / f"{name}.npy"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    @property
    def pretrained(self) -> Path:
        return self.build / "models" / "pretrained.safetensors"

    def adapt(self, method: str) -> Path:
        return self.build / "adapt" / method

    def cell(self, method: str, domain: str, sparsity: float | None = None, trial: str = "") -> Cell:
        name = cell_name(domain, sparsity, trial)
        return Cell(self.adapt(method), name, self.checkpoints / method / name)

    @property
    def reconstructions(self) -> Path:
        return self.build / "eval" / "reconstructions.npy"

    @property
    def per_image(self) -> Path:
        """Per-image PSNR/SSIM of evaluate's measurements (``pipeline.metrics.read_per_image``)."""
        return self.build / "eval" / "per_image.safetensors"

    # ------------------------------------------------------------------ reports/<run>
    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.run

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics"

    @property
    def evaluation_csv(self) -> Path:
        return self.metrics / "evaluation.csv"

    @property
    def validation_csv(self) -> Path:
        """Every method's search grid: validation PSNR per point (mean over seeds) and the chosen one."""
        return self.metrics / "validation.csv"

    @property
    def evaluate_json(self) -> Path:
        return self.metrics / "evaluate.json"

    @property
    def pretrain_json(self) -> Path:
        return self.metrics / "pretrain.json"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    @property
    def tables(self) -> Path:
        return self.reports / "tables"

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def ablations(self) -> Path:
        return self.reports / "ablations"

    @property
    def claims_json(self) -> Path:
        return self.reports / "claims.json"

    @property
    def claims_md(self) -> Path:
        return self.reports / "claims.md"

    # ------------------------------------------------------------------ .checkpoints/<run>, .cells/<run>
    @property
    def checkpoints(self) -> Path:
        return self.root / ".checkpoints" / self.run

    def cell_store(self, method: str) -> Path:
        """Shared by the project's experiment copies: a cell's key says all its result depends on."""
        return self.home / ".cells" / self.run / method
