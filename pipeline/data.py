"""Data sources (builtin photos, CIFAR-100) and the splits: base and domain images from disjoint base images
(the domain transforms are ``pipeline/domains.py``).

Images travel as uint8 arrays ``(N, 32, 32, 3)`` (HWC RGB), saved with ``np.save`` and read with
``allow_pickle=False``. Nothing here runs arbitrary code from a file.
"""
from __future__ import annotations

import io
import pickle
import socket
from pathlib import Path

import numpy as np
import torch

from .config import BUILTIN_PHOTOS, InputError, Params
from .domains import THUMB, apply_domain
from .paths import Paths



class DataError(InputError):
    """A data source or data file that cannot be used; the message says what to do."""


# ----------------------------------------------------------------------------------- builtin photos
def _photo(name: str) -> np.ndarray:
    """One colour photo bundled with scikit-image, scikit-learn or matplotlib (no network)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib.cbook
        import matplotlib.image
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return matplotlib.image.imread(f, format="jpg")
    import skimage.data
    img = getattr(skimage.data, name)()
    return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle returns (left, right, disparity)


def _thumbnails(names: list[str], scales: tuple[float, ...], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random 32x32 crops from the photos at several scales (uniform over photo x scale)."""
    from skimage.transform import rescale
    pyramid = []
    for name in names:
        photo = np.asarray(_photo(name))[..., :3]
        for s in scales:
            img = photo if s == 1.0 else rescale(photo, s, channel_axis=-1, anti_aliasing=True, preserve_range=True)
            if min(img.shape[:2]) >= THUMB:
                pyramid.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    if not pyramid:
        raise DataError("builtin: no photo is at least 32 pixels at the scales in data.builtin_scales")
    out = np.empty((count, THUMB, THUMB, 3), np.uint8)
    for i, which in enumerate(rng.integers(0, len(pyramid), size=count)):
        img = pyramid[which]
        r = rng.integers(0, img.shape[0] - THUMB + 1)
        c = rng.integers(0, img.shape[1] - THUMB + 1)
        out[i] = img[r:r + THUMB, c:c + THUMB]
    return out


def builtin_pools(params: Params, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Train thumbnails from the training photos, test thumbnails from photos training never sees."""
    d = params.data
    train_photos = [p for p in BUILTIN_PHOTOS if p not in d.builtin_test_photos]
    rng = np.random.default_rng(d.seed)
    train = _thumbnails(train_photos, d.builtin_scales, n_train, rng)
    test = _thumbnails(list(d.builtin_test_photos), d.builtin_scales, n_test, rng)
    return train, test


# --------------------------------------------------------------------------------------- CIFAR-100
class _ArrayUnpickler(pickle.Unpickler):
    """Reads the original ``cifar-100-python`` files, allowing only NumPy array reconstruction.

    Like ``torch.load(weights_only=True)``: any other global (``os.system``...) is refused, so a
    crafted file cannot run code.
    """
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed in CIFAR files")


def _read_cifar_python(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        try:
            entry = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{path}: not a readable cifar-100-python file ({type(err).__name__}: {err})") from None
    data = np.asarray(entry.get("data") if isinstance(entry, dict) else None)
    if data.ndim != 2 or data.shape[1] != 3 * THUMB * THUMB or data.dtype != np.uint8:
        raise DataError(f"{path}: expected 'data' of shape (N, 3072) uint8, got {data.shape} {data.dtype}")
    return data.reshape(-1, 3, THUMB, THUMB).transpose(0, 2, 3, 1).copy()


def check_images(arr: np.ndarray, what: str) -> np.ndarray:
    """Refuse arrays that are not ``(N, 32, 32, 3)`` uint8 with N >= 1."""
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (THUMB, THUMB, 3) or len(arr) == 0:
        raise DataError(f"{what}: expected images of shape (N, 32, 32, 3) uint8, got {arr.shape} {arr.dtype}")
    return arr


def load_images(path: Path) -> np.ndarray:
    """Read an image array saved by this project (no pickle), checking shape and dtype."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npy image array ({err})") from None
    return check_images(arr, str(path))


def _find_cifar(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Train/test images from the NumPy layout or a ``cifar-100-python`` folder, if ``folder`` holds one."""
    if (folder / "train_images.npy").is_file() and (folder / "test_images.npy").is_file():
        return load_images(folder / "train_images.npy"), load_images(folder / "test_images.npy")
    for py in (folder, folder / "cifar-100-python"):
        if (py / "train").is_file() and (py / "test").is_file():
            return _read_cifar_python(py / "train"), _read_cifar_python(py / "test")
    return None


def cifar100_pools(params: Params, paths: Paths, download_timeout: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 train/test images: local copy, else an earlier download, else torchvision's downloader
    (relative paths in params are taken from the project root)."""
    local, root = paths.resolve(params.data.cifar100_local), paths.resolve(params.data.cifar100_root)
    for folder in (local, root):
        found = _find_cifar(folder)
        if found is not None:
            return found
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout)  # an offline machine must fail fast, not hang
    try:
        download_and_extract_archive(CIFAR100.url, str(root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
    except Exception as err:
        raise DataError(
            f"CIFAR-100 is not at data.cifar100_local={params.data.cifar100_local!r} and the download into "
            f"data.cifar100_root={params.data.cifar100_root!r} failed ({type(err).__name__}: {err}); "
            "remedies: connect to the network and rerun, or set data.cifar100_local to a copy "
            "(a cifar-100-python/ folder or the NumPy layout, e.g. ../shared/data/cifar100)") from None
    finally:
        socket.setdefaulttimeout(previous)
    found = _find_cifar(root)
    if found is None:
        raise DataError(f"CIFAR-100 downloaded into {root} but no cifar-100-python folder was found there")
    return found


def split_names(params: Params) -> list[str]:
    """Every array the ``domains`` stage writes: base_train, base_test, then {domain}_{train,test}."""
    return ["base_train", "base_test"] + [f"{d}_{s}" for d in params.domains.names for s in ("train", "test")]


def build_splits(params: Params, paths: Paths) -> dict[str, np.ndarray]:
    """Base and domain splits from disjoint base images: pretraining, each domain's train and test."""
    k, dom = len(params.domains.names), params.domains
    n_train, n_test = params.data.n_pretrain + k * dom.n_train, params.data.n_base_test + k * dom.n_test
    if params.data.source == "builtin":
        train, test = builtin_pools(params, n_train, n_test)
    else:
        train, test = cifar100_pools(params, paths)
    for pool, need, what in ((train, n_train, "train"), (test, n_test, "test")):
        if len(pool) < need:
            raise DataError(f"{params.data.source}: the {what} pool has {len(pool)} images, the params need {need} "
                            f"(data.n_pretrain/n_base_test + {k} domains x domains.n_{what})")
    rng = np.random.default_rng(params.data.seed)
    train, test = train[rng.permutation(len(train))[:n_train]], test[rng.permutation(len(test))[:n_test]]
    splits = {"base_train": train[:params.data.n_pretrain], "base_test": test[:params.data.n_base_test]}
    for i, name in enumerate(dom.names):
        tr0, te0 = params.data.n_pretrain + i * dom.n_train, params.data.n_base_test + i * dom.n_test
        splits[f"{name}_train"] = apply_domain(name, train[tr0:tr0 + dom.n_train], dom, dom.seed)
        splits[f"{name}_test"] = apply_domain(name, test[te0:te0 + dom.n_test], dom, dom.seed + 1)
    return splits


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC array -> uint8 NCHW tensor (converted to float per batch, on the device)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def grid(rows: list[np.ndarray]) -> np.ndarray:
    """Tile rows of equally many uint8 HWC images into one image with 2-pixel gutters."""
    n, gap = len(rows[0]), 2
    h = len(rows) * (THUMB + gap) - gap
    w = n * (THUMB + gap) - gap
    canvas = np.full((h, w, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            canvas[r * (THUMB + gap):r * (THUMB + gap) + THUMB, c * (THUMB + gap):c * (THUMB + gap) + THUMB] = img
    return canvas


__all__ = ["DataError", "apply_domain", "build_splits", "check_images", "cifar100_pools", "builtin_pools",
           "domain_transform", "load_images", "split_names", "to_tensor", "grid"]
