"""What the params ask of this machine, checked before any stage computes (the ``validate`` stage).

The schema (``pipeline.config``) checks each value's type and range; these checks need the machine:
the device, the data a source reads (a local copy, an earlier download, the download's server, the
photo folder), how many images a source can give, and whether the image arrays fit in memory. Each
refusal is one line naming the key, with the remedy, in a few seconds: no stage has written anything.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .config import ConfigError
from .data import CIFAR, DataError, cifar_copy, cifar_missing, photo_split, pool_needs

if TYPE_CHECKING:
    from .config import Params
    from .paths import Paths

IMAGE_BYTES = 32 * 32 * 3  # one uint8 thumbnail
# The domains stage holds the source's pools, the splits cut from them and one transformed copy at a time;
# later stages hold the splits they read (uint8) and a batch in float: three times the splits bounds them.
MEMORY_FACTOR = 3
CIFAR_SIZES = {"cifar100": (50_000, 10_000), "cifar10": (50_000, 10_000)}  # the python layout's train/test


def check_device(params: Params) -> None:
    if params.train.device != "cuda":
        return
    import torch
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA"
        raise ConfigError(f"params: train.device = 'cuda': no CUDA device is available here (torch "
                          f"{torch.__version__}, built with {built}); use auto or cpu")


def check_memory(params: Params, available: int | None = None) -> None:
    """The image arrays of every split, times MEMORY_FACTOR, against the memory available now."""
    if available is None:
        import psutil
        available = psutil.virtual_memory().available
    fit, val, test = pool_needs(params)
    images = fit + val + test + len(params.domains.names) * params.domains.n_test  # + the paired-shift copies
    need = images * IMAGE_BYTES * MEMORY_FACTOR
    if need > available:
        raise ConfigError(f"params: data.n_* and domains.n_* ask for {images:,} images of 32x32x3, about "
                          f"{need / 2**30:.1f} GiB while they are cut, but {available / 2**30:.1f} GiB of memory "
                          f"is available; lower the counts")


def _reachable(url: str, timeout: float) -> str | None:
    """None when the download's server answers a TCP connection, else why not."""
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as err:
        return f"{host} unreachable: {type(err).__name__}: {err}"


def _cifar_counts(kind: str, where, source: str) -> tuple[int, int]:
    if kind == "python":
        return CIFAR_SIZES[source]
    import numpy as np
    return tuple(np.load(where / f"{s}_images.npy", mmap_mode="r", allow_pickle=False).shape[0] for s in ("train", "test"))


def check_data(params: Params, paths: Paths, timeout: float = 3.0) -> None:
    """The source's files are there (or its download can start) and hold as many images as the splits take."""
    source = params.data.source
    if source in ("builtin", "folder"):
        photo_split(params, paths)  # the folder exists and holds at least two photos
        return
    layout, cfg = CIFAR[source], getattr(params.data, source)
    found = cifar_copy(paths.resolve(cfg.local), layout) or cifar_copy(paths.resolve(cfg.root), layout)
    if found is None:
        import torchvision.datasets
        why = _reachable(getattr(torchvision.datasets, layout.dataset).url, timeout)
        if why:
            raise cifar_missing(params, why)
        return  # the domains stage downloads it
    fit, val, test = pool_needs(params)
    have_train, have_test = _cifar_counts(*found, source)
    for key, need, have in (("train", fit + val, have_train), ("test", test, have_test)):
        if need > have:
            raise DataError(f"{source}: the {key} pool of {found[1]} has {have:,} images, the params need {need:,} "
                            f"(data.n_pretrain/n_base_val/n_base_test and domains.n_train/n_val/n_test)")


def preflight(params: Params, paths: Paths) -> None:
    """Every check of this module, cheapest first."""
    check_device(params)
    check_memory(params)
    check_data(params, paths)
