"""The validate stage refuses, in one line naming the key and within seconds, every value a later stage
would refuse or choke on (``pipeline.checks`` and the schema's search check), and writes nothing."""
from __future__ import annotations

import copy
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline import checks, profile
from pipeline.stages import EXIT_BAD_INPUT, run, validate

REFUSAL_S = 5.0  # the goal: every malformed value refused within this, on 2 cores


def _set(raw: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for part in head:
        raw = raw[part]
    raw[last] = value


def _offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)


def _small_memory(monkeypatch):
    import psutil
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=24 * 2**30))


def _numpy_cifar(root, n_train: int, n_test: int):
    root.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        np.save(root / f"{name}_images.npy", np.zeros((n, 32, 32, 3), np.uint8))
    return str(root)


# (case, edits of the tiny params, what the one line must name, environment)
CASES = [
    ("a search value out of range", {"search": {"sam": {"adapt.value_lr": [-1.0, 0.003]}}},
     "search.sam.adapt.value_lr = -1.0: Input should be greater than 0", None),
    ("a search value of the wrong type", {"search": {"lora": {"lora.lr": ["abc"]}}},
     "search.lora.lora.lr = 'abc': Input should be a valid number", None),
    ("a search key outside the method's params", {"search": {"lora": {"tuning.lr": [0.001]}}},
     "search.lora.tuning.lr: not among the method's params", None),
    ("a grid point breaking a rule across keys", {"search": {"sam": {"adapt.freeze_epochs": [0, 5]}}},
     "search.sam: the grid point {'adapt.freeze_epochs': 5} is refused: adapt.freeze_epochs = 5 must be below", None),
    ("CUDA asked for where there is none", {"train.device": "cuda"}, "train.device = 'cuda': no CUDA device", None),
    ("more images than memory holds", {"domains.n_test": 900_000}, "GiB of memory is available", _small_memory),
    ("a missing CIFAR copy, offline", {"data.source": "cifar100", "data.cifar100.local": "nowhere/c100",
                                        "data.cifar100.root": "nowhere/dl"},
     "CIFAR-100 is not at data.cifar100.local='nowhere/c100'", _offline),
    ("a CIFAR copy smaller than the splits", {"data.source": "cifar100", "data.cifar100.local": "SMALL"},
     "cifar100: the test pool of", None),
    ("a missing photo folder", {"data.source": "folder", "data.folder.path": "no/such/folder"},
     "data.folder.path='no/such/folder' is not a folder", None),
]


@pytest.mark.parametrize("case,edits,message,env", CASES, ids=[c[0] for c in CASES])
def test_validate_refuses_in_one_line_within_seconds_and_writes_nothing(project, capsys, monkeypatch, case, edits,
                                                                        message, env):
    if case.startswith("CUDA") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: train.device = cuda is valid here")
    raw = copy.deepcopy(project.raw)
    for key, value in edits.items():
        if value == "SMALL":
            value = _numpy_cifar(project.root / "small", 10_000, 10)
        if key == "search":
            raw["search"] = value
        else:
            _set(raw, key, value)
    if env:
        env(monkeypatch)
    profile.write(raw, project.root / "params.yaml")  # as a user would edit it: not validated here
    before = project.files()
    capsys.readouterr()
    start = time.monotonic()
    with pytest.raises(SystemExit) as stop:
        run(validate.main, project.root)
    seconds = time.monotonic() - start
    assert stop.value.code == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert seconds <= REFUSAL_S, f"{case}: refused after {seconds:.1f} s"
    assert project.files() == before  # nothing written, nothing deleted


def test_valid_params_pass_every_check_and_write_the_stamp(project, monkeypatch):
    _offline(monkeypatch)  # the builtin source needs no network
    run(validate.main, project.root)
    assert project.paths.stamp.is_file()


def test_the_memory_estimate_counts_every_split():
    params = profile.render("quick")
    from pipeline.config import parse
    p = parse(params)
    fit, val, test = 8_000 + 4 * 1_000, 500 + 4 * 200, 500 + 4 * 400  # the quick profile's counts
    images = fit + val + test + 4 * 400
    checks.check_memory(p, available=images * checks.IMAGE_BYTES * checks.MEMORY_FACTOR)
    with pytest.raises(checks.ConfigError, match=f"ask for {images:,} images"):
        checks.check_memory(p, available=images * checks.IMAGE_BYTES * checks.MEMORY_FACTOR - 1)


def test_a_reachable_download_server_lets_a_missing_copy_through(project, monkeypatch):
    """With the network up the domains stage downloads the data set: validate must not refuse it."""
    class Conn:
        def close(self):
            pass
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Conn())
    raw = copy.deepcopy(project.raw)
    _set(raw, "data.source", "cifar100")
    _set(raw, "data.cifar100.local", "nowhere/c100")
    _set(raw, "data.cifar100.root", "nowhere/dl")
    from pipeline.config import parse
    checks.check_data(parse(raw), project.paths)
