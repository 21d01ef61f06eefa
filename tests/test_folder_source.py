"""The folder data source end to end: `python -m pipeline.profile quick --source folder --folder PATH &&
dvc repro` on a dozen generated photos (slow: real dvc in a temporary copy)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipeline import profile

from .dvc_copy import RUN, copy_env, dvc_ok, dvc_status, make_copy, slow_params


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
    assert manifest["source"]["data_source"] == "folder"
    claims = json.loads((out / "claims.json").read_text())
    assert {c["id"]: c["status"] for c in claims["claims"]}["C1"] == "PASS"
    assert (out / "tables" / "main.md").is_file() and (out / "figures" / "domains_preview.png").is_file()
    snr = (out / "ablations" / "snr.csv").read_text().splitlines()
    assert snr[0].startswith("channel,snr_db,") and {line.split(",")[0] for line in snr[1:]} == {"awgn", "rayleigh"}
    assert dvc_status(repo) == {}
