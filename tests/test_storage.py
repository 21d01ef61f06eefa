"""pipeline/storage.py across a kill: a killed writer's temporary file is removed by the next write of
its file, and a dvc.lock cut short by a kill while DVC records a stage is restored from the whole copy
the stage kept as it started."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline import storage
from pipeline.paths import REPO


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_write_removes_a_killed_writers_tmp_file_and_leaves_a_live_ones(tmp_path):
    path = tmp_path / "tables" / "main.csv"
    path.parent.mkdir()
    dead, live = path.with_name(f"main.csv.tmp.{_dead_pid()}"), path.with_name("main.csv.tmp.1")  # pid 1 lives
    other = path.with_name(f"other.csv.tmp.{_dead_pid()}")  # another file's: left to that file's next write
    for p in (dead, live, other):
        p.write_text("half")
    storage.write_text(path, "a,b\n")
    assert path.read_text() == "a,b\n"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["main.csv", live.name, other.name])


@pytest.fixture
def project_lock(tmp_path):
    """A DVC project folder holding the repository's (whole) dvc.lock."""
    (tmp_path / ".dvc").mkdir()
    whole = (REPO / "dvc.lock").read_text()
    (tmp_path / "dvc.lock").write_text(whole)
    assert storage.lock_problem(tmp_path / "dvc.lock") is None
    return tmp_path, whole


def _cut_short(whole: str) -> str:
    """dvc.lock as a kill leaves it mid-write: cut inside an out's ``- path:`` line (a string where
    DVC's schema wants a mapping)."""
    at = whole.index("- path:", len(whole) // 2)
    return whole[:at + len("- pa")]


def test_a_dvc_lock_cut_short_is_restored_from_the_copy_kept_as_the_stage_started(project_lock):
    root, whole = project_lock
    storage.keep_lock(root)
    (root / "dvc.lock").write_text(_cut_short(whole))
    assert storage.lock_problem(root / "dvc.lock") is not None  # DVC's own schema refuses it
    done = subprocess.run([sys.executable, "-m", "pipeline.storage", "--restore-lock", str(root)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "restored" in done.stdout and done.stdout.count("\n") == 1, done.stdout
    assert (root / "dvc.lock").read_text() == whole
    assert storage.restore_lock(root) == "dvc.lock is whole: nothing to do"


def test_a_dvc_lock_cut_short_without_a_kept_copy_is_removed(project_lock):
    root, whole = project_lock
    (root / "dvc.lock").write_text(_cut_short(whole))
    assert "removed it" in storage.restore_lock(root)
    assert not (root / "dvc.lock").exists()
    storage.keep_lock(root)  # no lock: nothing kept, nothing fails
    assert not (root / storage.LOCK_COPY).exists()


@pytest.mark.parametrize("cut", ["", '{"read": {"build/x": [{"pid": 1, "cmd": "dvc'])
def test_a_rwlock_cut_short_is_removed_and_a_whole_one_kept(project_lock, cut):
    root, _ = project_lock
    rwlock = root / storage.RWLOCK
    rwlock.parent.mkdir(parents=True)
    rwlock.write_text('{"read": {}, "write": {}}')
    assert storage.restore_lock(root) == "dvc.lock is whole: nothing to do" and rwlock.is_file()
    rwlock.write_text(cut)
    assert storage.restore_lock(root) == ".dvc/tmp/rwlock was cut short; removed it"
    assert not rwlock.exists()
