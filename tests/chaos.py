"""Random kill -9 of a whole `dvc repro`, resumed after every kill, in a temporary git copy.

    python -m tests.chaos --kills 20 --profile tiny [--seed 0] [--workdir DIR]

In one copy of the working tree (tests/dvc_copy.py): `dvc repro` once uninterrupted (the reference),
then from clean (no build/, reports/, dvc.lock, checkpoints, cell store or DVC cache) again, killing
the process group of `dvc repro` with SIGKILL at ``--kills`` seeded random moments spread over every
stage, in pipeline order (each kill either a random time into a stage or the moment the stage writes:
a temporary file or a new output appears), and resuming with `dvc repro` after each kill. Checked:

- after every kill: no process is left working in the copy, and every report file that existed
  before the killed `dvc repro` started is present and parses (JSON, CSV, PNG up to its IEND chunk);
  a dvc.lock that DVC's own schema refuses or a ``.dvc/tmp/rwlock`` that is not JSON (DVC rewrites
  both in place: a kill while it writes one cuts it short) is a finding, repaired as
  `python -m pipeline.storage --restore-lock` does;
- at the end: `dvc status` is clean, and the outputs (reports/<run>/, build/<run>/, dvc.lock) equal the
  reference byte for byte, apart from what ``VARIES`` lists (timings, run ids), compared without it;
- no MLflow run is left RUNNING, and every KILLED run is named by a later run's ``resumed_from``.

``--profile tiny``: the slow tests' params (``slow_params``: every stage, ablation study snr only);
``quick``: the real quick profile. Exit code 0 when every check held; a JSON summary on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline.storage import lock_problem, restore_lock

from .dvc_copy import (DVC_TIMEOUT, RUN, STALE_LOCK_HINT, copy_env, dvc_cmd, dvc_status, make_copy, processes_in,
                       repro_after_kill, slow_params)

# What differs between two equal runs, by file (relative to the copy; <run> = RUN). A JSON file is
# compared without these keys (at any depth); a text file with every match of these patterns masked;
# dvc.lock without the hashes of the files listed here and of the folders holding them. Both runs
# are of one commit, so the git commit of the provenance blocks is compared; everything not listed
# must be equal byte for byte.
RUN_ID = r"\b[0-9a-f]{32}\b"  # an MLflow run id
VARIES: dict[str, tuple[str, ...]] = {
    # the seconds of the epochs this run trained, and where it resumed (present only after a resume)
    "reports/<run>/metrics/pretrain.json": ("train_seconds", "images_per_second", "resumed_from_epoch",
                                            "mlflow_run_id"),
    "reports/<run>/metrics/evaluate.json": ("mlflow_run_id",),
    "reports/<run>/claims.json": ("mlflow_run_id",),
    "reports/<run>/README.md": (RUN_ID, r"train seconds: [\d.]+ s; [\d.]+ images/s"),  # quotes pretrain.json
    "reports/<run>/claims.md": (RUN_ID,),
    "reports/<run>/tables/*.md": (RUN_ID,),  # the provenance line above each table
    "reports/<run>/tables/*.tex": (RUN_ID,),
    "reports/<run>/ablations/*.md": (RUN_ID,),  # the provenance comment of line 1
    "dvc.lock": (),  # the hashes of the files above (pipeline.paths.VARYING_OUTPUTS lists them by file)
}
STAGES_KEY = re.compile(r"Running stage '([^']+)'")
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
POLL_S = 0.003


@dataclass
class Kill:
    planned: str    # the stage this kill was meant for
    mode: str       # "time" (a random fraction into the stage) or "write" (when the stage writes)
    fraction: float
    stage: str = ""    # the stage running when the kill came ("" : dvc before its first stage)
    trigger: str = ""  # what fired: "time", "tmp <file>", "new <file>", "lock update", ...
    seconds_into_stage: float = 0.0


@dataclass
class Summary:
    profile: str
    seed: int
    reference_s: float = 0.0
    chaos_s: float = 0.0
    stages: dict = field(default_factory=dict)   # stage -> seconds in the reference run
    kills: list = field(default_factory=list)
    missed: int = 0                               # kills planned after dvc had already finished
    findings: list = field(default_factory=list)  # stale locks dvc asked to remove, dvc.lock restored, ...
    lock_restores: int = 0                         # kills that cut dvc.lock or rwlock short (repaired)
    killed_runs: int = 0
    failures: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------ files
def _match(rel: str, pattern: str) -> bool:
    from fnmatch import fnmatch
    return fnmatch(rel, pattern.replace("<run>", RUN))


def varies(rel: str) -> tuple[str, ...] | None:
    for pattern, what in VARIES.items():
        if _match(rel, pattern):
            return what
    return None


def outputs(repo: Path) -> dict[str, Path]:
    """Every output file of the run: reports/<run>/, build/<run>/ and dvc.lock, by relative path."""
    found = {}
    for top in (repo / "reports" / RUN, repo / "build" / RUN):
        if top.is_dir():
            found.update({str(p.relative_to(repo)): p for p in top.rglob("*") if p.is_file()})
    if (repo / "dvc.lock").is_file():
        found["dvc.lock"] = repo / "dvc.lock"
    return found


def parse_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole file of its kind (None when it is)."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        return f"unreadable ({err})"
    try:
        if path.suffix == ".json":
            json.loads(blob)
        elif path.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(blob.decode())))
            if not rows or any(len(r) != len(rows[0]) for r in rows):
                return "CSV rows of unequal length"
        elif path.suffix == ".png":
            if not (blob.startswith(PNG_SIGNATURE) and blob.endswith(PNG_END)):
                return "PNG without its signature or IEND chunk"
        else:
            blob.decode()
    except (ValueError, UnicodeDecodeError) as err:
        return f"does not parse ({type(err).__name__}: {err})"
    return None if blob else "empty"


def _drop_keys(obj, keys: tuple[str, ...]):
    if isinstance(obj, dict):
        return {k: _drop_keys(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_drop_keys(v, keys) for v in obj]
    return obj


def _lock_without(text: str, varying: list[str]) -> dict:
    """dvc.lock without the hashes of varying files and of the directories that hold one."""
    lock = yaml.safe_load(text)
    for stage in lock.get("stages", {}).values():
        for kind in ("deps", "outs"):
            for entry in stage.get(kind, []):
                path = entry["path"]
                if any(v == path or v.startswith(path.rstrip("/") + "/") for v in varying):
                    for key in ("md5", "hash", "size", "nfiles"):
                        entry.pop(key, None)
    return lock


def comparable(rel: str, path: Path, varying: list[str]):
    """The content of an output that must equal the reference's."""
    what = varies(rel)
    if what is None:
        return path.read_bytes()
    text = path.read_text()
    if rel == "dvc.lock":
        return _lock_without(text, varying)
    if path.suffix == ".json":
        return _drop_keys(json.loads(text), what)
    for pattern in what:
        text = re.sub(pattern, "<varies>", text)
    return text


def compare(reference: Path, repo: Path) -> list[str]:
    """What differs between the reference outputs (a saved copy of its tree) and the repo's."""
    ref, got = outputs(reference), outputs(repo)
    problems = [f"missing: {r}" for r in sorted(ref.keys() - got.keys())]
    problems += [f"extra: {r}" for r in sorted(got.keys() - ref.keys())]
    varying = [r for r in ref if varies(r) is not None and r != "dvc.lock"]
    for rel in sorted(ref.keys() & got.keys()):
        if comparable(rel, ref[rel], varying) != comparable(rel, got[rel], varying):
            problems.append(f"differs: {rel}")
    return problems


def save_outputs(repo: Path, dest: Path) -> None:
    for rel, path in outputs(repo).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)


def clean(repo: Path) -> None:
    """The copy as before any run: no outputs, checkpoints, cell store or DVC cache (mlflow.db stays)."""
    for rel in ("build", "reports", ".checkpoints", ".cells", ".dvc/cache", ".dvc/tmp"):
        shutil.rmtree(repo / rel, ignore_errors=True)
    (repo / "dvc.lock").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------- dvc runs
class Repro:
    """`dvc repro` in its own process group, its output lines timestamped as they come."""

    def __init__(self, repo: Path, log: Path):
        self.repo, self.lines, self.log = repo, [], open(log, "a")
        self.proc = subprocess.Popen(dvc_cmd("repro"), cwd=repo, env=copy_env(repo), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self.log.write(line)
        self.log.flush()

    def stage(self) -> tuple[str, float]:
        """The stage running now (the last one dvc announced) and since when ("" before the first)."""
        for t, line in reversed(list(self.lines)):
            if m := STAGES_KEY.search(line):
                return m.group(1), t
        return "", 0.0

    def lock_updated_since(self, t0: float) -> bool:
        return any(t >= t0 and "Updating lock file" in line for t, line in list(self.lines))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(60)
        self.reader.join(30)
        self.log.close()

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"dvc repro ran past {timeout:.0f} s:\n{self.text()[-4000:]}") from None
        self.reader.join(30)
        self.log.close()
        return rc


def reference(repo: Path, log: Path) -> dict[str, float]:
    """An uninterrupted `dvc repro`; each stage's seconds (announcement to the next one)."""
    run = Repro(repo, log)
    rc = run.wait(DVC_TIMEOUT * 3)
    if rc != 0:
        raise RuntimeError(f"the reference dvc repro failed ({rc}):\n{run.text()[-4000:]}")
    marks = [(m.group(1), t) for t, line in run.lines if (m := STAGES_KEY.search(line))]
    end = run.lines[-1][0]
    return {s: round((marks[i + 1][1] if i + 1 < len(marks) else end) - t, 2) for i, (s, t) in enumerate(marks)}


def plan(stages: dict[str, float], n: int, rng: random.Random) -> list[Kill]:
    """``n`` kills spread evenly over the stages in pipeline order (each stage at least one when n
    covers them), each at a random fraction of the stage or when it writes."""
    order = list(stages)
    kills = [Kill(order[i * len(order) // n], rng.choice(("time", "write")), round(rng.uniform(0.05, 0.9), 3))
             for i in range(n)]
    if kills:  # the last kill well inside the last stage: after it dvc must still have work to do
        kills[-1].mode, kills[-1].fraction = "time", min(kills[-1].fraction, 0.6)
    return kills


def _scan(repo: Path) -> set[str]:
    found = set()
    for top in (repo / "reports" / RUN, repo / "build" / RUN, repo / ".cells" / RUN, repo / ".checkpoints" / RUN):
        for folder, dirs, files in os.walk(top):
            found.update(os.path.join(folder, n) for n in dirs + files)
    return found


def strike(repo: Path, kill: Kill, stages: dict[str, float], log: Path) -> tuple[Repro, bool]:
    """Start `dvc repro`, SIGKILL its process group as ``kill`` says; (the run, whether it was killed)."""
    order = list(stages)
    run = Repro(repo, log)
    deadline = time.monotonic() + DVC_TIMEOUT
    seen: set[str] | None = None
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            return run, False
        stage, since = run.stage()
        if stage and order.index(stage) >= order.index(kill.planned):
            now, dur = time.monotonic(), stages[stage]
            if stage != kill.planned:  # the planned stage is done already: strike early in this one
                kill.mode, kill.fraction = "time", min(kill.fraction, 0.3)
            if run.lock_updated_since(since):
                kill.trigger = "lock update"  # the stage ended: dvc is recording it
            elif kill.mode == "time" and now - since >= kill.fraction * dur:
                kill.trigger = "time"
            elif kill.mode == "write":
                current = _scan(repo)
                if seen is None:
                    seen = current
                elif tmp := sorted(p for p in current - seen if ".tmp" in Path(p).name):
                    kill.trigger = f"tmp {os.path.relpath(tmp[0], repo)}"
                elif new := sorted(current - seen):
                    kill.trigger = f"new {os.path.relpath(new[0], repo)}"
                elif now - since >= 1.5 * dur:
                    kill.trigger = "time (no write seen)"
            if kill.trigger:
                kill.stage, kill.seconds_into_stage = stage, round(now - since, 3)
                run.kill()
                return run, True
        time.sleep(POLL_S)
    run.kill()
    raise RuntimeError(f"no kill within {DVC_TIMEOUT} s:\n{run.text()[-4000:]}")


def lock_broken(repo: Path) -> str | None:
    """Why DVC would refuse the copy's dvc.lock (None: whole, or none yet)."""
    return lock_problem(repo / "dvc.lock") if (repo / "dvc.lock").is_file() else None


def running_runs(repo: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(repo / "mlflow.db") as db:
        return db.execute("SELECT run_uuid, name FROM runs WHERE status = 'RUNNING'").fetchall()


def killed_runs_unresumed(repo: Path) -> tuple[int, list[str]]:
    """How many runs are KILLED, and those that no run names in its ``resumed_from`` tag."""
    with sqlite3.connect(repo / "mlflow.db") as db:
        killed = [r for (r,) in db.execute("SELECT run_uuid FROM runs WHERE status = 'KILLED'")]
        named = {i for (v,) in db.execute("SELECT value FROM tags WHERE key = 'resumed_from'") for i in v.split(",")}
    return len(killed), sorted(set(killed) - named)


# ------------------------------------------------------------------------------------------ chaos
def chaos(repo: Path, kills: int, seed: int, profile: str, work: Path) -> Summary:
    out = Summary(profile, seed)
    start = time.monotonic()
    out.stages = reference(repo, work / "reference.log")
    out.reference_s = round(time.monotonic() - start, 1)
    ref = work / "reference"
    save_outputs(repo, ref)
    clean(repo)
    rng = random.Random(seed)
    pending = plan(out.stages, kills, rng)
    start = time.monotonic()
    log = work / "chaos.log"
    while pending:
        kill = pending[0]
        # the committed report files (a killed writer's .tmp file is none: the next write removes it)
        before = {rel: p for rel, p in outputs(repo).items() if rel.startswith("reports/") and ".tmp." not in rel}
        run, killed = strike(repo, kill, out.stages, log)
        if not killed:
            rc, text = run.wait(60), run.text()
            if rc == 0:  # dvc finished before the kill: nothing left to kill
                out.missed = len(pending)
                break
            if (hint := STALE_LOCK_HINT.search(text)) and "lock" in text.lower():
                out.findings.append(f"stale lock after a kill: dvc asked to remove {hint.group(1)}")
                Path(repo, hint.group(1)).unlink()
                continue
            raise RuntimeError(f"dvc repro failed after a kill ({rc}):\n{text[-4000:]}")
        pending.pop(0)
        out.kills.append(asdict(kill))
        # DVC rewrites dvc.lock and its rwlock in place: killed while writing one, it leaves it cut short
        if (repaired := restore_lock(repo)) != "dvc.lock is whole: nothing to do":
            out.findings.append(f"kill {len(out.kills)} ({kill.stage}, {kill.trigger}): {repaired} "
                                "(python -m pipeline.storage --restore-lock)")
            out.lock_restores += 1
            if problem := lock_broken(repo):
                out.failures.append(f"kill {len(out.kills)}: dvc.lock still broken after the repair: {problem}")
        survivors = processes_in(repo, grace_s=5.0)
        if survivors:
            out.failures.append(f"kill {len(out.kills)}: processes left running: {survivors}")
        for rel, path in before.items():
            if not path.is_file():
                out.failures.append(f"kill {len(out.kills)} ({kill.stage}): committed {rel} vanished")
            elif problem := parse_problem(path):
                out.failures.append(f"kill {len(out.kills)} ({kill.stage}): committed {rel} {problem}")
        print(f"kill {len(out.kills)}/{kills}: {kill.stage or 'dvc'} +{kill.seconds_into_stage:.2f} s "
              f"({kill.trigger})", file=sys.stderr, flush=True)
    done = repro_after_kill(repo)
    with open(log, "a") as f:
        f.write(done.stdout + done.stderr)
    out.findings += [l.strip() for l in (done.stdout + done.stderr).splitlines() if "had been killed" in l]
    out.chaos_s = round(time.monotonic() - start, 1)
    if status := dvc_status(repo):
        out.failures.append(f"dvc status after the last resume: {status}")
    out.failures += compare(ref, repo)
    out.failures += [f"MLflow run left RUNNING: {name} ({rid})" for rid, name in running_runs(repo)]
    out.killed_runs, unresumed = killed_runs_unresumed(repo)
    out.failures += [f"KILLED run {r} named by no run's resumed_from" for r in unresumed]
    return out


def params_of(profile: str) -> dict:
    from pipeline import profile as profiles
    if profile == "tiny":
        return slow_params()
    return profiles.render(profile)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="how many SIGKILLs (default 20)")
    ap.add_argument("--profile", choices=("tiny", "quick"), default="tiny")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments (default 0)")
    ap.add_argument("--workdir", type=Path, help="where the copy and logs go (default: a temporary folder, kept)")
    args = ap.parse_args(argv)
    if args.kills < 1:
        ap.error(f"--kills {args.kills}: at least 1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="zfda-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the summary alone
        summary = run(work, args.kills, args.seed, args.profile)
    print(json.dumps(asdict(summary), indent=2))
    print(f"{len(summary.kills)} kills survived, {len(summary.failures)} failures; logs in {work}", file=sys.stderr)
    return 1 if summary.failures or summary.missed else 0


def run(work: Path, kills: int, seed: int, profile: str, mlflow_template: Path | None = None) -> Summary:
    """The whole check in ``work`` (a fresh folder): the copy, its reference run and the killed run."""
    if mlflow_template is None:
        import mlflow.tracking
        mlflow_template = work / "template" / "mlflow.db"
        mlflow_template.parent.mkdir(parents=True, exist_ok=True)
        mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{mlflow_template}").search_experiments()
    repo = make_copy(work / "repo", mlflow_template, params_of(profile))
    return chaos(repo, kills, seed, profile, work)


if __name__ == "__main__":
    sys.exit(main())
