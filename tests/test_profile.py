"""``python -m pipeline.profile``'s ``--local PATH`` and the defaults it overrides: the CIFAR sources'
local copy is the download folder of the repository (``data/<source>``) unless a flag points elsewhere.
(The other tests of the profile command are in tests/test_config.py.)"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import data, profile
from pipeline.config import ConfigError, parse
from pipeline.paths import REPO, Paths


def _run(tmp_path, *argv) -> tuple[int, Path]:
    out = tmp_path / "params.yaml"
    return profile.main([*argv, "--out", str(out)]), out


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


# ------------------------------------------------------------------------------------------ defaults
@pytest.mark.parametrize("name", ("quick", "ci", "full", "paper"))
def test_every_default_data_path_is_a_folder_of_the_repository(name):
    """No default names a folder outside the clone (a user's clone has nothing beside it)."""
    d = profile.render(name)["data"]
    paths = [d["cifar100"]["root"], d["cifar100"]["local"], d["cifar10"]["root"], d["cifar10"]["local"],
             d["folder"]["path"]]
    outside = [p for p in paths if Path(p).is_absolute() or ".." in Path(p).parts]
    assert not outside, outside
    for source in profile.LOCAL_SOURCES:  # the local copy is, by default, where the downloader puts it
        assert d[source]["local"] == d[source]["root"] == f"data/{source}"


def test_the_committed_params_keep_the_default_local_copies():
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert committed == profile.render("quick")
    assert committed["data"]["source"] == "builtin"
    assert committed["data"]["cifar100"]["local"] == "data/cifar100"


def _torchvision_download(root: Path, n_train=7, n_test=3) -> dict[str, np.ndarray]:
    """What torchvision's CIFAR-100 downloader leaves in ``root``: a cifar-100-python/ folder of pickles."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    flat = {}
    for split, n in (("train", n_train), ("test", n_test)):
        flat[split] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": flat[split], "fine_labels": [0] * n}, f)
    return flat


def test_a_download_in_the_default_folder_is_found_as_the_local_copy(tmp_path, monkeypatch):
    import torchvision.datasets
    # Any attempt to download would fail at once: the copy must be found without one.
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "url", "http://127.0.0.1:9/cifar100.tar.gz")
    flat = _torchvision_download(tmp_path / "data" / "cifar100")
    params = parse(profile.render("quick", "cifar100"))
    train, test = data.cifar_pools(params, Paths(tmp_path, "cifar100-quick"))
    assert train.shape == (7, 32, 32, 3) and test.shape == (3, 32, 32, 3)
    assert np.array_equal(train, flat["train"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_no_copy_in_the_default_folder_names_both_remedies(tmp_path, monkeypatch):
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "url", "http://127.0.0.1:9/cifar100.tar.gz")
    params = parse(profile.render("quick", "cifar100"))
    with pytest.raises(data.DataError) as exc:
        data.cifar_pools(params, Paths(tmp_path, "cifar100-quick"))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("CIFAR-100 is not at data.cifar100.local='data/cifar100'"), msg
    assert "connect to the network" in msg and "set data.cifar100.local to a copy" in msg, msg


# ------------------------------------------------------------------------------------------- --local
def test_local_points_the_cifar_source_at_a_copy(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    rc, out = _run(tmp_path, "quick", "--source", "cifar100", "--local", str(copy))
    assert rc == 0
    text = out.read_text()
    assert text.startswith(f"# Written by `python -m pipeline.profile quick --source cifar100 --local {copy}`")
    raw = yaml.safe_load(text)
    assert raw["data"]["cifar100"]["local"] == str(copy)
    parse(raw)
    raw["data"]["cifar100"]["local"] = "data/cifar100"
    assert raw == profile.render("quick", "cifar100")  # the flag changes nothing else


def test_local_sets_the_block_of_the_profiles_own_source(tmp_path):
    """ci and full read CIFAR-100 without --source; cifar10 gets its own block, cifar100's keeps its default."""
    copy = tmp_path / "copy"
    copy.mkdir()
    assert _run(tmp_path, "ci", "--local", str(copy))[0] == 0
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert (raw["data"]["source"], raw["data"]["cifar100"]["local"]) == ("cifar100", str(copy))
    assert _run(tmp_path, "quick", "--source", "cifar10", "--local", str(copy), "--ablations")[0] == 0
    text = (tmp_path / "params.yaml").read_text()
    assert f"--source cifar10 --local {copy} --ablations`" in text.splitlines()[0]
    raw = yaml.safe_load(text)
    assert raw["data"]["cifar10"]["local"] == str(copy)
    assert raw["data"]["cifar100"]["local"] == "data/cifar100"


def test_local_inside_the_project_stays_relative_to_its_root(tmp_path, monkeypatch):
    monkeypatch.setattr(profile, "REPO", tmp_path)
    (tmp_path / "copies" / "c100").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "copies")
    rc, out = _run(tmp_path, "quick", "--source", "cifar100", "--local", "c100")
    assert rc == 0
    assert yaml.safe_load(out.read_text())["data"]["cifar100"]["local"] == "copies/c100"


@pytest.mark.parametrize("argv,source", [(("quick",), "builtin"), (("quick", "--source", "builtin"), "builtin"),
                                         (("quick", "--source", "folder"), "folder")])
def test_local_is_refused_for_the_sources_without_a_local_copy(tmp_path, capsys, argv, source):
    out = tmp_path / "params.yaml"
    out.write_text("old\n")
    assert _run(tmp_path, *argv, "--local", str(tmp_path))[0] == 2
    _one_line_error(capsys, "--local", repr(source))
    assert out.read_text() == "old\n"


def test_local_with_folder_is_refused(tmp_path, capsys):
    assert _run(tmp_path, "quick", "--folder", str(tmp_path), "--local", str(tmp_path))[0] == 2
    _one_line_error(capsys, "--local", "'folder'")
    assert not (tmp_path / "params.yaml").exists()


def test_local_that_is_not_a_folder_is_refused(tmp_path, capsys):
    missing = tmp_path / "no-such-copy"
    assert _run(tmp_path, "quick", "--source", "cifar100", "--local", str(missing))[0] == 2
    _one_line_error(capsys, "--local", str(missing), "no such folder")
    (tmp_path / "a-file").write_text("x")
    assert _run(tmp_path, "quick", "--source", "cifar100", "--local", str(tmp_path / "a-file"))[0] == 2
    _one_line_error(capsys, "no such folder")
    assert not (tmp_path / "params.yaml").exists()


def test_render_refuses_local_for_the_builtin_source():
    with pytest.raises(ConfigError, match="--local"):
        profile.render("quick", local="somewhere")
    assert profile.render("quick", "cifar10", local="somewhere")["data"]["cifar10"]["local"] == "somewhere"
