"""pipeline/claims/cli.py: ``python -m pipeline.claims check`` and its exit codes (0 ok, 1 a guarantee
failed, 2 unreadable)."""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline import claims

from ..synthetic import entry, write


def test_check_exits_1_only_when_a_guarantee_fails(tmp_path, df, capsys):
    entries = claims.check_all(df, {})
    assert entry(entries, "H")["status"] == "FAIL"  # a failed finding ...
    assert claims.main(["check", write(tmp_path, entries)]) == 0  # ... does not fail the check
    assert "H   finding   FAIL" in capsys.readouterr().out
    entry(entries, "C2")["status"] = "FAIL"
    assert claims.main(["check", write(tmp_path, entries)]) == 1
    assert "FAILED C2" in capsys.readouterr().out


def test_an_inconclusive_finding_is_read_back_and_does_not_fail_the_check(tmp_path, df, capsys):
    entries = claims.check_all(df, {})
    next(e for e in entries if e["id"] == "C3")["status"] = "INCONCLUSIVE"
    path = write(tmp_path, entries)
    assert claims.main(["check", path]) == 0
    assert "C3  finding   INCONCLUSIVE" in capsys.readouterr().out
    next(e for e in entries if e["id"] == "C1")["status"] = "INCONCLUSIVE"  # a guarantee is PASS or it fails
    assert claims.main(["check", write(tmp_path, entries)]) == 1


def test_check_exits_2_on_an_unreadable_file(tmp_path, capsys):
    assert claims.main(["check", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert claims.main(["check", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "shape.json").write_text(json.dumps({"claims": [{"id": "C1", "status": "OK"}]}))
    assert claims.main(["check", str(tmp_path / "shape.json")]) == 2
    assert capsys.readouterr().err.count("error:") == 3


def test_check_command_exit_status(tmp_path, df):
    entries = claims.check_all(df, {})
    entry(entries, "C1")["status"] = "FAIL"
    done = subprocess.run([sys.executable, "-m", "pipeline.claims", "check", write(tmp_path, entries)],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    entry(entries, "C1")["status"] = "PASS"
    done = subprocess.run([sys.executable, "-m", "pipeline.claims", "check", write(tmp_path, entries)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "guarantees: all PASS" in done.stdout, done.stderr
