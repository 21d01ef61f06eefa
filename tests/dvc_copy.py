"""Helpers of the slow tests: real `dvc repro` in temporary git copies of the working tree (never in
the repository itself), with a tiny config; and the kill -9 machinery."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline import profile

from .conftest import REPO

RUN = "builtin-quick"  # <source>-<profile> of every config used here



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
    raw["adapt"].update(epochs=6, sparsities=[0.01], methods=["sam", "tuning", "equalizer"])
    raw["tuning"]["retune_epochs"] = 2
    raw["equalizer"]["epochs"] = 2
    raw["ablate"].update(domains=["VH"], studies=["snr"], snr_db=[10.0], sparsities=[0.003, 0.01, 0.03])
    return raw


def make_copy(dest: Path, mlflow_template: Path, raw: dict | None = None) -> Path:
    """A git repository holding the working tree (no build outputs, no store) and the tiny params
    (or the raw params ``raw``)."""
    shutil.copytree(REPO, dest, ignore=_ignore, symlinks=True)
    profile.write(slow_params() if raw is None else raw, dest / "params.yaml")
    git = ["git", "-c", "user.name=zfda-test", "-c", "user.email=zfda-test@localhost", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "reliability test copy"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True, timeout=120)
    shutil.copy(mlflow_template, dest / "mlflow.db")  # migrated once per test run, not per copy
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


def repro_after_kill(repo: Path, target: str | None = None) -> subprocess.CompletedProcess:
    """``dvc repro <target>`` (default: every stage) after a kill -9. A stale lock is removed only where
    dvc's own message tells the user to (and is then a finding, reported as a warning)."""
    targets = () if target is None else (target,)
    done = dvc(repo, "repro", *targets)
    text = done.stdout + done.stderr
    if done.returncode != 0 and ("lock" in text.lower()):
        hint = STALE_LOCK_HINT.search(text)
        if hint is None:
            pytest.fail(f"FINDING: after kill -9, `dvc repro {target}` fails on a lock and does not say what to "
                        f"do:\n{text}")
        warnings.warn(f"FINDING: after kill -9 `dvc repro {target}` failed on a stale lock; dvc says to remove "
                      f"{hint.group(1)} (done here):\n{text}")
        Path(repo, hint.group(1)).unlink()
        done = dvc(repo, "repro", *targets)
        text = done.stdout + done.stderr
    assert done.returncode == 0, f"dvc repro {target} after kill -9 failed ({done.returncode}):\n{text}"
    if "had been killed" in text:  # dvc cleaned its rwlock by itself: information, not a failure
        print("dvc after kill -9:", *[l for l in text.splitlines() if "had been killed" in l], sep="\n  ")
    return done




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
