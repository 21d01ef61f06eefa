"""Reliability: kill -9 and resume under real ``dvc repro``, determinism of clean runs, a locked
MLflow store, offline CIFAR-100, bad data and SAM files, and no unsafe deserialisation.

The slow tests (``-m slow``) run ``dvc repro`` in temporary copies of the working tree (never in the
repository itself) with a tiny config; the others run in-process in the isolated ``project`` of
conftest.py.
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline import data, profile
from pipeline.sam import SAMFileError
from pipeline.stages import run

from .conftest import REPO, _pipeline_modules, adapt_every_cell

# Import every pipeline module now, before any `project` fixture runs: that fixture patches
# pipeline.config.ROOT first and then walks the package; a module imported for the first time during
# the walk (pipeline.tracking, when nothing imported it yet) copies the already-patched ROOT, is not
# recognised as pointing into the repository, and the fixture fails ("pipeline.tracking.ROOT not patched").
PIPELINE_MODULES = list(_pipeline_modules())

RUN = "builtin-quick"  # <source>-<profile> of every config used here


# =============================================================================================
# Fast tests
# =============================================================================================

# ------------------------------------------------------------------------------ README: mlflow ui
def _readme_commands(text: str) -> list[str]:
    """Shell lines of fenced code blocks, then inline code spans of the prose."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    lines = [line for block in fenced for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", prose)


def _mlflow_servers(line: str) -> list[list[str]]:
    """Every ``mlflow ui``/``mlflow server`` command in a shell line (comments dropped), as argv."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split("#")[0].split()
    commands, current = [], []
    for w in words:
        if w in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(w)
    commands.append(current)
    found = []
    for cmd in commands:
        for i in range(len(cmd) - 1):
            if Path(cmd[i]).name == "mlflow" and cmd[i + 1] in ("ui", "server"):
                found.append(cmd[i:])
    return found


def _host(argv: list[str]) -> str | None:
    for i, w in enumerate(argv):
        if w in ("--host", "-h") and i + 1 < len(argv):
            return argv[i + 1]
        if w.startswith("--host="):
            return w.split("=", 1)[1]
    return None


def test_readme_mlflow_ui_commands_bind_to_localhost_only():
    commands = [cmd for line in _readme_commands((REPO / "README.md").read_text())
                for cmd in _mlflow_servers(line)]
    assert commands, "README.md shows no `mlflow ui` / `mlflow server` command"
    wrong = [" ".join(c) for c in commands if _host(c) != "127.0.0.1"]
    assert not wrong, f"README commands that do not bind the MLflow UI to 127.0.0.1 only: {wrong}"


def test_readme_command_parser_catches_an_open_host():
    """The check above can fail: a command without a host, or with 0.0.0.0, is caught."""
    text = ("```bash\nmlflow ui --host 127.0.0.1   # ok\ncd x && mlflow server --port 5000\n```\n"
            "or `mlflow ui --host=0.0.0.0`\n")
    hosts = [_host(c) for line in _readme_commands(text) for c in _mlflow_servers(line)]
    assert hosts == ["127.0.0.1", None, "0.0.0.0"]


# ------------------------------------------------------------------------------ locked mlflow.db
LOCK_LIMIT_S = 30.0  # longer than this is a finding: an offline user would think the stage hangs


def test_locked_mlflow_db_costs_tracking_not_outputs(project, capsys):
    import mlflow.tracking  # noqa: F401 - imported up front: the clock below measures the lock, not imports
    from pipeline.stages import domains
    db = project.root / "mlflow.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{db}"
    params = project.params
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    probe = sqlite3.connect(db, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # the lock really holds
        probe.execute("SELECT count(*) FROM sqlite_master").fetchall()
    probe.close()

    outcome: dict = {}

    def stage():
        try:
            domains.main(params)
            outcome["done"] = True
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            outcome["error"] = err

    start = time.monotonic()
    worker = threading.Thread(target=stage, daemon=True)
    worker.start()
    worker.join(LOCK_LIMIT_S)
    elapsed = time.monotonic() - start
    blocked = worker.is_alive()
    holder.execute("ROLLBACK")
    holder.close()
    if blocked:
        worker.join(300)
        pytest.skip(f"FINDING: with mlflow.db locked the domains stage blocked > {LOCK_LIMIT_S:.0f} s "
                    f"(finished {time.monotonic() - start:.0f} s after start once the lock was released)")
    assert "error" not in outcome, f"the stage failed instead of going on untracked: {outcome.get('error')!r}"
    assert outcome.get("done")
    folder = params.build_dir / "data"
    for name in data.split_names(params):
        assert data.load_images(folder / f"{name}.npy").dtype == np.uint8
    assert (params.report_dir / "figures" / "domains_preview.png").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["provenance"]["mlflow_run_id"] == "not tracked"
    err = capsys.readouterr().err
    assert err.count("TRACKING FAILED") == 1 and "locked" in err, err
    print(f"locked mlflow.db: the stage finished in {elapsed:.1f} s")
    # the store is intact and usable once the lock is gone
    from mlflow.tracking import MlflowClient
    assert "Default" in [e.name for e in MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()]


# ------------------------------------------------------------------------------ offline CIFAR-100
def _cifar_params(tiny_params, tmp_path, source="cifar100"):
    from pipeline.config import parse
    raw = tiny_params
    raw["data"]["source"] = source
    raw["data"][source].update(local=str(tmp_path / "no-local-copy"), root=str(tmp_path / "download"))
    return parse(raw)


def _assert_both_remedies(msg: str, source="cifar100"):
    assert f"data.{source}.local" in msg and "network" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("source,dataset", [("cifar100", "CIFAR100"), ("cifar10", "CIFAR10")])
def test_offline_cifar_fails_fast_with_the_real_downloader(tmp_path, monkeypatch, tiny_params, source, dataset):
    import socket

    import torchvision.datasets
    # Port 9 (discard) on this machine: refused at once, whether or not the machine has a network.
    monkeypatch.setattr(getattr(torchvision.datasets, dataset), "url", f"http://127.0.0.1:9/{source}.tar.gz")
    params = _cifar_params(tiny_params, tmp_path, source)
    before = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(data.DataError) as exc:
        data.cifar_pools(params)
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"offline failure took {elapsed:.1f} s"
    _assert_both_remedies(str(exc.value), source)
    assert str(exc.value).startswith({"cifar100": "CIFAR-100 ", "cifar10": "CIFAR-10 "}[source])
    assert socket.getdefaulttimeout() == before
    assert not list((tmp_path / "download").glob("*.tar.gz")), "a partial download was left behind"


def test_offline_cifar100_a_server_that_never_answers_times_out(tmp_path, monkeypatch, tiny_params):
    """The network is up but the server accepts and then says nothing: the socket timeout must end it
    (without it, urllib would wait forever). A 1 s timeout keeps the test short."""
    import socket

    import torchvision.datasets
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nobody ever reads or answers
    try:
        port = silent.getsockname()[1]
        monkeypatch.setattr(torchvision.datasets.CIFAR100, "url", f"http://127.0.0.1:{port}/cifar-100-python.tar.gz")
        params = _cifar_params(tiny_params, tmp_path)
        start = time.monotonic()
        with pytest.raises(data.DataError) as exc:
            data.cifar_pools(params, download_timeout=1.0)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert elapsed < 5.0, f"a silent server held the download for {elapsed:.1f} s"
    _assert_both_remedies(str(exc.value))


# ------------------------------------------------------------------------------ bad data files
def _wrong_data(kind: str, good: np.ndarray, path: Path) -> None:
    if kind == "nchw":
        np.save(path, np.ascontiguousarray(good.transpose(0, 3, 1, 2)))
    elif kind == "float32":
        np.save(path, good.astype(np.float32) / 255)
    elif kind == "grey":
        np.save(path, good[..., 0])
    elif kind == "empty":
        np.save(path, good[:0])
    elif kind == "object":  # a pickled object array: np.load(allow_pickle=False) must refuse it
        np.save(path, np.array([{"x": 1}] * 4, dtype=object), allow_pickle=True)
    elif kind == "truncated":
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("split", ["base_train", "VA_test"])
@pytest.mark.parametrize("kind", ["nchw", "float32", "grey", "empty", "object", "truncated"])
def test_pretrain_refuses_a_data_file_of_wrong_shape_or_dtype(prepared, capsys, kind, split):
    from pipeline.stages import pretrain
    from pipeline.train import CHECKPOINTS
    params = prepared.params
    path = params.build_dir / "data" / f"{split}.npy"
    _wrong_data(kind, data.load_images(path), path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run(pretrain.main)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{split}.npy" in lines[0], lines
    assert not pretrain.model_path(params).exists()
    assert not (params.report_dir / "metrics").exists()
    assert not (CHECKPOINTS / params.run_name).exists()


# ------------------------------------------------------------------------------ bad SAM files
SAM_SPARSITY = 0.01


@pytest.fixture(scope="module")
def _adapted_build(tmp_path_factory):
    """Where the first test of the SAM refusals leaves its build/ for the others (built once)."""
    return {"dir": tmp_path_factory.mktemp("adapted") / "build", "ready": False}


@pytest.fixture
def adapted(prepared, _adapted_build):
    """The isolated project with two domains, pretrained, and every method's cells adapted."""
    raw = prepared.raw
    raw["domains"]["names"] = ["VA", "VH"]
    raw["adapt"]["sparsities"] = [SAM_SPARSITY]
    raw["ablate"]["domains"] = ["VH"]
    prepared.write_params(raw)
    return adapt_every_cell(prepared, _adapted_build)


def _sam_for_another_base(params, path: Path) -> None:
    """A well-formed SAM file, made for a different pretrained model (another seed)."""
    from pipeline.sam import attach_sam, base_fingerprint, sam_state, save_sam
    from pipeline.train import build_model
    torch.manual_seed(12345)
    other = build_model(params)
    fp = base_fingerprint(other)
    attach_sam(other, SAM_SPARSITY, params.adapt.allocation)
    save_sam(path, sam_state(other), sparsity=SAM_SPARSITY, allocation=params.adapt.allocation,
             base_fingerprint=fp, extra_meta={"domain": "VA"})


def _spoil(kind: str, params, path: Path) -> str:
    """Spoil the SAM file at ``path``; return what load_sam's message must say."""
    blob = path.read_bytes()
    if kind == "other_base":
        _sam_for_another_base(params, path)
        return "wrong base"
    if kind == "truncated":
        path.write_bytes(blob[: len(blob) * 2 // 3])
        return "truncated or unreadable"
    if kind == "altered":  # one bit of the payload (the last tensor bytes), header left as it was
        spoilt = bytearray(blob)
        spoilt[-2] ^= 0x01
        path.write_bytes(bytes(spoilt))
        return "altered"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["other_base", "truncated", "altered"])
def test_evaluate_refuses_a_bad_sam_file(adapted, capsys, kind):
    from pipeline.methods import Context
    from pipeline.methods import sam as sam_method
    from pipeline.stages import evaluate
    params = adapted.params
    ctx = Context(params, torch.device("cpu"))
    assert len(sam_method.variants(ctx, SAM_SPARSITY)) == 1  # the good files pass
    path = sam_method.sam_path(ctx, "VA", SAM_SPARSITY)
    expected = _spoil(kind, params, path)
    with pytest.raises(SAMFileError, match=expected) as exc:
        sam_method.variants(ctx, SAM_SPARSITY)
    assert path.name in str(exc.value) and "\n" not in str(exc.value)
    # the whole evaluate stage: exit 2, one line, nothing written
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(evaluate.main)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not evaluate.csv_path(params).exists()
    assert not (params.report_dir / "metrics" / "evaluate.json").exists()


# ------------------------------------------------------------------------------ byte-reproducible files
@pytest.mark.parametrize("what", ["sam", "model"])
def test_same_content_gives_the_same_file_bytes(tmp_path, tiny_params, what):
    from pipeline.config import parse
    from pipeline.sam import attach_sam, base_fingerprint, sam_state, save_sam
    from pipeline.train import build_model, save_model
    params = parse(tiny_params)
    torch.manual_seed(0)
    model = build_model(params)
    fp, state = base_fingerprint(model), sam_state(attach_sam(copy.deepcopy(model), SAM_SPARSITY))
    blobs = set()
    for i in range(16):  # 16 writes: an unordered 2-key header repeats by chance with p = 2**-15
        path = tmp_path / f"{what}-{i}.safetensors"
        if what == "model":
            save_model(model, path, {"profile": params.profile, "source": params.data.source})
        else:
            save_sam(path, state, sparsity=SAM_SPARSITY, allocation="linear", base_fingerprint=fp,
                     extra_meta={"domain": "VA"})
        blobs.add(path.read_bytes())
    assert len(blobs) == 1, f"{len(blobs)} different files for one content"


# ------------------------------------------------------------------------------ resume and MLflow
class _Killed(Exception):
    """Stands for SIGKILL in the middle of a stage (in-process)."""


def test_a_resumed_run_logs_every_epoch_to_mlflow(prepared, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.stages import pretrain
    params = prepared.params
    assert params.pretrain.epochs == 2
    real_fit = pretrain.fit

    def dying_fit(*args, on_epoch, **kwargs):
        def die_in_epoch_2(epoch, loss):
            if epoch == 2:
                raise _Killed("killed in epoch 2")
            return on_epoch(epoch, loss)
        return real_fit(*args, on_epoch=die_in_epoch_2, **kwargs)

    monkeypatch.setattr(pretrain, "fit", dying_fit)
    with pytest.raises(_Killed):
        pretrain.main(params)
    monkeypatch.setattr(pretrain, "fit", real_fit)
    pretrain.main(params)  # resumes at epoch 1/2
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("zfda-bench")
    finished = [r for r in client.search_runs([exp.experiment_id], "tags.stage = 'pretrain'")
                if r.info.status == "FINISHED"]
    assert len(finished) == 1
    for metric in ("train_loss", "test_psnr"):
        steps = sorted(m.step for m in client.get_metric_history(finished[0].info.run_id, metric))
        assert steps == [1, 2], (metric, steps)


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
# =============================================================================================
COPY_IGNORED_AT_ROOT = {"build", ".checkpoints", "mlartifacts", "reports", ".git", "data", "dvc.lock"}
DVC_TIMEOUT = 420


def _ignore(folder: str, names: list[str]) -> list[str]:
    here = Path(folder)
    out = [n for n in names if n in ("__pycache__", ".pytest_cache") or n.startswith("mlflow.db")]
    if here == REPO:
        out += [n for n in names if n in COPY_IGNORED_AT_ROOT]
    if here == REPO / ".dvc":
        out += [n for n in names if n in ("cache", "tmp")]  # another run's cache and locks stay home
    return out


def slow_params(raw: dict | None = None) -> dict:
    """The quick profile (or ``raw``), shrunk so that a whole `dvc repro evaluate` is a couple of minutes on
    2 cores. Pretraining and adaptation run 6 epochs, so that a kill after the first checkpoint lands mid-stage."""
    raw = profile.render("quick") if raw is None else raw
    raw["data"].update(n_pretrain=128, n_base_test=32)
    raw["data"]["builtin"]["scales"] = [0.25]
    raw["domains"].update(names=["VA", "VH"], n_train=64, n_test=32)
    raw["model"]["width"] = 4
    raw["train"].update(batch_size=32, threads=1, device="cpu")
    raw["pretrain"]["epochs"] = 6
    raw["adapt"].update(epochs=6, sparsities=[0.01])
    raw["tuning"]["retune_epochs"] = 2
    raw["equalizer"]["epochs"] = 2
    raw["ablate"].update(domains=["VH"], studies=["snr"], snr_db=[10.0], sparsities=[0.003, 0.01, 0.03])
    return raw


def make_copy(dest: Path, mlflow_template: Path) -> Path:
    """A git repository holding the working tree (no build outputs, no store) and the tiny params."""
    shutil.copytree(REPO, dest, ignore=_ignore, symlinks=True)
    profile.write(slow_params(), dest / "params.yaml")
    git = ["git", "-c", "user.name=zfda-test", "-c", "user.email=zfda-test@localhost", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "reliability test copy"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True, timeout=120)
    shutil.copy(mlflow_template, dest / "mlflow.db")  # migrated once per session, not per copy
    return dest


def copy_env(repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ZFDA_EXECUTION", "PYTHONPATH")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="1", PYTHONPATH=str(repo), PYTHONUNBUFFERED="1")
    return env


def dvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def dvc(repo: Path, *args: str, timeout: float = DVC_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(dvc_cmd(*args), cwd=repo, env=copy_env(repo), capture_output=True, text=True,
                          timeout=timeout)


def dvc_ok(repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = dvc(repo, *args)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def dvc_status(repo: Path, *targets: str) -> dict:
    done = dvc_ok(repo, "status", "--json", *targets)
    return json.loads(done.stdout.strip().splitlines()[-1])


def reports(repo: Path) -> Path:
    return repo / "reports" / RUN


def build(repo: Path) -> Path:
    return repo / "build" / RUN


def checkpoints(repo: Path) -> Path:
    return repo / ".checkpoints" / RUN


def kill_when(repo: Path, args: list[str], appears: Path, log: Path, timeout: float = DVC_TIMEOUT) -> None:
    """Start ``dvc <args>`` in its own process group; SIGKILL the whole group the moment ``appears``
    exists (the first epoch's checkpoint)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(dvc_cmd(*args), cwd=repo, env=copy_env(repo), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not appears.exists():
                if proc.poll() is not None:
                    pytest.fail(f"dvc {' '.join(args)} ended ({proc.returncode}) before {appears.name} appeared:\n"
                                f"{log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{appears} did not appear within {timeout} s:\n{log.read_text()}")
                time.sleep(0.002)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(60)
    survivors = processes_in(repo, grace_s=5.0)
    assert not survivors, f"the kill left stage processes running (not in dvc's process group?): {survivors}"


def processes_in(repo: Path, grace_s: float) -> list[str]:
    """Processes still working in ``repo`` (cwd inside it) after ``grace_s`` seconds."""
    import psutil
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for p in psutil.process_iter(["pid", "cwd", "cmdline"]):
            try:
                cwd = p.info["cwd"]
                if cwd and (Path(cwd) == repo or repo in Path(cwd).parents):
                    found.append(f"{p.info['pid']}: {' '.join(p.info['cmdline'] or [])}")
            except (psutil.Error, OSError):
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


STALE_LOCK_HINT = re.compile(r"manually remove '([^']+)'")


def repro_after_kill(repo: Path, target: str) -> subprocess.CompletedProcess:
    """``dvc repro <target>`` after a kill -9. A stale lock is removed only where dvc's own message tells
    the user to (and is then a finding, reported as a warning)."""
    done = dvc(repo, "repro", target)
    text = done.stdout + done.stderr
    if done.returncode != 0 and ("lock" in text.lower()):
        hint = STALE_LOCK_HINT.search(text)
        if hint is None:
            pytest.fail(f"FINDING: after kill -9, `dvc repro {target}` fails on a lock and does not say what to "
                        f"do:\n{text}")
        warnings.warn(f"FINDING: after kill -9 `dvc repro {target}` failed on a stale lock; dvc says to remove "
                      f"{hint.group(1)} (done here):\n{text}")
        Path(repo, hint.group(1)).unlink()
        done = dvc(repo, "repro", target)
        text = done.stdout + done.stderr
    assert done.returncode == 0, f"dvc repro {target} after kill -9 failed ({done.returncode}):\n{text}"
    if "had been killed" in text:  # dvc cleaned its rwlock by itself: information, not a failure
        print("dvc after kill -9:", *[l for l in text.splitlines() if "had been killed" in l], sep="\n  ")
    return done


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, mlflow_template) -> Path:
    """Reference: one uninterrupted `dvc repro evaluate` in a fresh copy (shared by the slow tests)."""
    repo = make_copy(tmp_path_factory.mktemp("clean") / "repo", mlflow_template)
    start = time.monotonic()
    done = dvc_ok(repo, "repro", "evaluate")
    print(f"clean dvc repro evaluate: {time.monotonic() - start:.0f} s")
    assert "resumed" not in done.stdout
    return repo


@pytest.fixture(scope="module")
def kill_copy(tmp_path_factory, mlflow_template) -> Path:
    """The copy in which stages are killed and resumed."""
    return make_copy(tmp_path_factory.mktemp("killed") / "repo", mlflow_template)


def same_safetensors(a: Path, b: Path) -> bool:
    """The same tensors, bit for bit, and the same metadata."""
    def meta(path: Path) -> dict:
        blob = path.read_bytes()
        return json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    ta, tb = load_file(str(a)), load_file(str(b))
    return (meta(a) == meta(b) and ta.keys() == tb.keys()
            and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta))


def psnrs(repo: Path) -> dict:
    m = json.loads((reports(repo) / "metrics" / "pretrain.json").read_text())
    return {k: v for k, v in m.items() if k.startswith("psnr_")}


@pytest.mark.slow
def test_kill_9_during_pretrain_resumes_to_the_uninterrupted_result(kill_copy, clean_run, tmp_path):
    repo = kill_copy
    ckpt = checkpoints(repo) / "pretrain.pt"
    model = build(repo) / "models" / "pretrained.safetensors"
    kill_when(repo, ["repro", "pretrain"], ckpt, tmp_path / "killed.log")
    assert ckpt.is_file(), "the checkpoint vanished with the kill"
    assert not model.exists(), "the kill came after pretraining had finished: the test proved nothing"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert 1 <= state["epoch"] < 6, state["epoch"]

    done = repro_after_kill(repo, "pretrain")
    assert re.search(r"pretrain: resumed from checkpoint at epoch \d/6", done.stdout), done.stdout
    assert psnrs(repo) == psnrs(clean_run)
    assert (reports(repo) / "plots" / "pretrain_curve.csv").read_text() == \
        (reports(clean_run) / "plots" / "pretrain_curve.csv").read_text()
    assert same_safetensors(model, build(clean_run) / "models" / "pretrained.safetensors")
    assert not ckpt.exists(), "a finished stage leaves no checkpoint behind"
    assert dvc_status(repo, "pretrain") == {}


@pytest.mark.slow
def test_kill_9_during_an_adapt_cell_resumes_to_the_uninterrupted_result(kill_copy, clean_run, tmp_path):
    repo, cell = kill_copy, "VA-0.01"
    dvc_ok(repo, "repro", "pretrain")  # nothing to do when the test above ran
    ckpt = checkpoints(repo) / "sam" / cell / f"{cell}.pt"  # one checkpoint folder per cell
    result = build(repo) / "adapt" / "sam" / f"{cell}.json"
    kill_when(repo, ["repro", f"adapt_sam@{cell}"], ckpt, tmp_path / "killed.log")
    assert ckpt.is_file()
    assert not result.exists(), "the kill came after the cell had finished: the test proved nothing"
    assert 1 <= torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] < 6

    done = repro_after_kill(repo, f"adapt_sam@{cell}")
    assert re.search(rf"sam {cell}: resumed from checkpoint at epoch \d/6", done.stdout), done.stdout
    ours = json.loads(result.read_text())
    theirs = json.loads((build(clean_run) / "adapt" / "sam" / f"{cell}.json").read_text())
    assert ours["domain_psnr"] == theirs["domain_psnr"]
    for key in ("memory_bytes", "memory_cost_pct"):
        assert ours[key] == theirs[key], key
    for key in ("kept_per_layer", "mask_moved_fraction", "curve"):
        assert ours["details"][key] == theirs["details"][key], key
    # the stored SAM: same tensors and metadata (not the same bytes: see test_same_content_gives_the_same_file_bytes)
    sam_file = Path("adapt") / "sam" / f"{cell}.safetensors"
    assert same_safetensors(build(repo) / sam_file, build(clean_run) / sam_file)
    assert not ckpt.exists()
    assert dvc_status(repo, f"adapt_sam@{cell}") == {}


@pytest.mark.slow
def test_two_clean_runs_are_identical_and_leave_nothing_to_do(clean_run, tmp_path, mlflow_template):
    first = clean_run
    assert dvc_status(first, "evaluate") == {}, "dvc status right after a run: stages still to run"
    second = make_copy(tmp_path / "repo", mlflow_template)
    dvc_ok(second, "repro", "evaluate")
    assert dvc_status(second, "evaluate") == {}
    again = dvc_ok(second, "repro", "evaluate")
    assert "Running stage" not in again.stdout, f"`dvc repro` right after a run re-ran stages:\n{again.stdout}"

    csv_a, csv_b = (reports(c) / "metrics" / "evaluation.csv" for c in (first, second))
    assert csv_a.read_bytes() == csv_b.read_bytes()
    a, b = (json.loads((reports(c) / "metrics" / "evaluate.json").read_text()) for c in (first, second))
    prov_a, prov_b = a.pop("provenance"), b.pop("provenance")
    assert a == b
    assert prov_a["mlflow_run_id"] != prov_b["mlflow_run_id"]
    assert "not tracked" not in (prov_a["mlflow_run_id"], prov_b["mlflow_run_id"])


@pytest.mark.slow
def test_folder_source_end_to_end(tmp_path, mlflow_template):
    """`python -m pipeline.profile quick --source folder --folder PATH && dvc repro` on a dozen photos
    (the params then shrunk like the other slow tests', so that it takes a couple of minutes)."""
    import yaml

    from .test_data import write_photos
    photos = write_photos(tmp_path / "photos", n=12)
    repo = make_copy(tmp_path / "repo", mlflow_template)
    done = subprocess.run([sys.executable, "-m", "pipeline.profile", "quick", "--source", "folder", "--folder",
                           str(tmp_path / "photos")], cwd=repo, env=copy_env(repo), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    assert (raw["data"]["source"], raw["data"]["folder"]["path"]) == ("folder", str(tmp_path / "photos"))
    profile.write(slow_params(raw), repo / "params.yaml", f" --folder {tmp_path / 'photos'}")
    start = time.monotonic()
    dvc_ok(repo, "repro")
    print(f"folder source: dvc repro in {time.monotonic() - start:.0f} s")
    out, build_dir = repo / "reports" / "folder-quick", repo / "build" / "folder-quick"
    assert not (repo / "reports" / RUN).exists()
    manifest = json.loads((build_dir / "data" / "manifest.json").read_text())
    split = manifest["photos"]
    assert sorted(split["train"] + split["test"]) == sorted(photos) and not set(split["train"]) & set(split["test"])
    assert manifest["provenance"]["data_source"] == "folder"
    claims = json.loads((out / "claims.json").read_text())
    assert {c["id"]: c["status"] for c in claims["claims"]}["C1"] == "PASS"
    assert (out / "tables" / "main.md").is_file() and (out / "figures" / "domains_preview.png").is_file()
    snr = (out / "ablations" / "snr.csv").read_text().splitlines()
    assert snr[0].startswith("channel,snr_db,") and {line.split(",")[0] for line in snr[1:]} == {"awgn", "rayleigh"}
    assert dvc_status(repo) == {}
