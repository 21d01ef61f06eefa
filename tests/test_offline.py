"""Offline CIFAR-10/100: no copy and no network fails within seconds, naming both remedies."""
from __future__ import annotations

import time

import pytest

from pipeline import data
from pipeline.paths import Paths


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
        data.cifar_pools(params, Paths(tmp_path, "test"))
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
            data.cifar_pools(params, Paths(tmp_path, "test"), download_timeout=1.0)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert elapsed < 5.0, f"a silent server held the download for {elapsed:.1f} s"
    _assert_both_remedies(str(exc.value))
