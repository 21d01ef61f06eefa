"""Data sources (builtin photos, a folder of photos, CIFAR-10/100) and the splits: base and domain images
from disjoint base images (the domain transforms are ``pipeline/domains.py``).

Images travel as uint8 arrays ``(N, 32, 32, 3)`` (HWC RGB), saved with ``np.save`` and read with
``allow_pickle=False``. Nothing here runs arbitrary code from a file.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import io
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import BUILTIN_PHOTOS, InputError
from .domains import DEFAULT_LEVEL, THUMB, apply_domain, at_level
from .paths import Paths

if TYPE_CHECKING:
    from .config import Domains, Params



class DataError(InputError):
    """A data source or data file that cannot be used; the message says what to do."""


# ------------------------------------------------------------------------- photos cut into thumbnails
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


def _thumbnails(photos, scales: tuple[float, ...], count: int, rng: np.random.Generator, source: str,
                side: str) -> np.ndarray:
    """``count`` random 32x32 crops from the photos (an iterable of HWC arrays) at several scales,
    uniform over photo x scale. ``source`` and ``side`` (train, test) name the photos in errors."""
    from skimage.transform import rescale
    pyramid = []
    for photo in photos:
        photo = np.asarray(photo)[..., :3]
        for s in scales:
            img = photo if s == 1.0 else rescale(photo, s, channel_axis=-1, anti_aliasing=True, preserve_range=True)
            if min(img.shape[:2]) >= THUMB:
                pyramid.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    if not pyramid:
        raise DataError(f"{source}: no {side} photo is at least 32 pixels at the scales in data.{source}.scales")
    out = np.empty((count, THUMB, THUMB, 3), np.uint8)
    for i, which in enumerate(rng.integers(0, len(pyramid), size=count)):
        img = pyramid[which]
        r = rng.integers(0, img.shape[0] - THUMB + 1)
        c = rng.integers(0, img.shape[1] - THUMB + 1)
        out[i] = img[r:r + THUMB, c:c + THUMB]
    return out


def builtin_pools(params: Params, paths: Paths, n_train: int, n_test: int, n_val: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train thumbnails from the training photos, test thumbnails from photos training never sees, then
    validation thumbnails from the training photos (drawn last: train and test do not depend on n_val)."""
    split, cfg = photo_split(params, paths), params.data.builtin
    rng = np.random.default_rng(params.data.seed)
    train = _thumbnails((_photo(n) for n in split["train"]), cfg.scales, n_train, rng, "builtin", "train")
    test = _thumbnails((_photo(n) for n in split["test"]), cfg.scales, n_test, rng, "builtin", "test")
    val = _thumbnails((_photo(n) for n in split["train"]), cfg.scales, n_val, rng, "builtin", "train")
    return train, test, val


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


def _folder(params: Params, paths: Paths) -> Path:
    folder = paths.resolve(params.data.folder.path)
    if not folder.is_dir():
        raise DataError(f"folder: data.folder.path={params.data.folder.path!r} is not a folder ({folder}); "
                        "set it with `python -m pipeline.profile quick --folder PATH`")
    return folder


def _folder_photos(folder: Path) -> list[str]:
    """Every PNG/JPEG under ``folder`` (hidden files and folders skipped), as sorted relative paths."""
    found = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()]
    return sorted(n for n in found if not any(part.startswith(".") for part in n.split("/")))


def photo_split(params: Params, paths: Paths) -> dict[str, list[str]] | None:
    """Which photos the train and the test thumbnails come from (builtin: photo names; folder: paths
    relative to ``data.folder.path``); None for sources that are not cut from photos."""
    d = params.data
    if d.source == "builtin":
        return {"train": [p for p in BUILTIN_PHOTOS if p not in d.builtin.test_photos],
                "test": list(d.builtin.test_photos)}
    if d.source != "folder":
        return None
    folder = _folder(params, paths)
    names = _folder_photos(folder)
    if not names:
        raise DataError(f"folder: no PNG or JPEG image in {folder} (data.folder.path)")
    if len(names) < 2:
        raise DataError(f"folder: {folder} holds {len(names)} photo; at least 2 are needed so that train and "
                        "test tiles come from different photos")
    n_test = min(len(names) - 1, max(1, round(d.folder.test_fraction * len(names))))
    order = np.random.default_rng([d.seed, 1]).permutation(len(names))  # its own stream: the tiles' stays put
    return {"train": sorted(names[i] for i in order[n_test:]), "test": sorted(names[i] for i in order[:n_test])}


def _read_photo(path: Path) -> np.ndarray:
    """An RGB uint8 photo (EXIF orientation applied; grey, palette and alpha images converted)."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError... on broken files
        raise DataError(f"folder: {path} is not a readable PNG/JPEG image ({type(err).__name__}: {err})") from None


def folder_pools(params: Params, paths: Paths, n_train: int, n_test: int, n_val: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tiles of the folder's photos: train tiles from the train photos, test tiles from the others,
    validation tiles (drawn last) from the train photos."""
    split, folder, cfg = photo_split(params, paths), _folder(params, paths), params.data.folder
    rng = np.random.default_rng(params.data.seed)
    train = _thumbnails((_read_photo(folder / n) for n in split["train"]), cfg.scales, n_train, rng, "folder", "train")
    test = _thumbnails((_read_photo(folder / n) for n in split["test"]), cfg.scales, n_test, rng, "folder", "test")
    val = _thumbnails((_read_photo(folder / n) for n in split["train"]), cfg.scales, n_val, rng, "folder", "train")
    return train, test, val


# -------------------------------------------------------------------------------- CIFAR-10 / CIFAR-100
@dataclass(frozen=True)
class _CifarLayout:
    """Where torchvision's archive of one CIFAR data set puts its python-layout files."""
    title: str
    dataset: str  # the torchvision class: its url, filename and tgz_md5 drive the download
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]


CIFAR = {"cifar100": _CifarLayout("CIFAR-100", "CIFAR100", "cifar-100-python", ("train",), ("test",)),
         "cifar10": _CifarLayout("CIFAR-10", "CIFAR10", "cifar-10-batches-py",
                                 tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",))}


class _ArrayUnpickler(pickle.Unpickler):
    """Reads the original CIFAR python-layout files, allowing only NumPy array reconstruction.

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
            raise DataError(f"{path}: not a readable CIFAR python-layout file ({type(err).__name__}: {err})") from None
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


def cifar_copy(folder: Path, layout: _CifarLayout) -> tuple[str, Path] | None:
    """Which copy ``folder`` holds, without reading it: ("numpy", folder) for train_images.npy and
    test_images.npy, ("python", the data set's python folder), or None."""
    if (folder / "train_images.npy").is_file() and (folder / "test_images.npy").is_file():
        return "numpy", folder
    for py in (folder, folder / layout.folder):
        if all((py / name).is_file() for name in layout.train + layout.test):
            return "python", py
    return None


def _find_cifar(folder: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray] | None:
    """Train/test images from the NumPy layout or the data set's python folder, if ``folder`` holds one."""
    found = cifar_copy(folder, layout)
    if found is None:
        return None
    kind, where = found
    if kind == "numpy":
        return load_images(where / "train_images.npy"), load_images(where / "test_images.npy")
    return tuple(np.concatenate([_read_cifar_python(where / name) for name in names])
                 for names in (layout.train, layout.test))


def cifar_missing(params: Params, why: str) -> DataError:
    """The data stage's and the params check's words when neither a copy nor a download is at hand."""
    source = params.data.source
    layout, cfg = CIFAR[source], getattr(params.data, source)
    return DataError(
        f"{layout.title} is not at data.{source}.local={cfg.local!r} and the download into "
        f"data.{source}.root={cfg.root!r} failed ({why}); "
        f"remedies: connect to the network and rerun, or set data.{source}.local to a copy "
        f"(a {layout.folder}/ folder or the NumPy layout train_images.npy/test_images.npy)")


def cifar_pools(params: Params, paths: Paths, download_timeout: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10/100 train/test images (``data.source``): local copy, else an earlier download, else
    torchvision's downloader (MD5-checked); relative paths in params are taken from the project root."""
    source = params.data.source
    layout, cfg = CIFAR[source], getattr(params.data, source)
    local, root = paths.resolve(cfg.local), paths.resolve(cfg.root)
    for folder in (local, root):
        found = _find_cifar(folder, layout)
        if found is not None:
            return found
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive
    dataset = getattr(torchvision.datasets, layout.dataset)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout)  # an offline machine must fail fast, not hang
    try:
        download_and_extract_archive(dataset.url, str(root), filename=dataset.filename, md5=dataset.tgz_md5)
    except Exception as err:
        raise cifar_missing(params, f"{type(err).__name__}: {err}") from None
    finally:
        socket.setdefaulttimeout(previous)
    found = _find_cifar(root, layout)
    if found is None:
        raise DataError(f"{layout.title} downloaded into {root} but no {layout.folder} folder was found there")
    return found


def split_names(params: Params) -> list[str]:
    """Every array the ``domains`` stage writes: base_train, base_val, base_test, then per domain
    {d}_train, {d}_val, {d}_test and {d}_test_source (the same test images before the domain's transform:
    the paired-shift control)."""
    return ["base_train", "base_val", "base_test"] + [f"{d}_{s}" for d in params.domains.names
                                                      for s in ("train", "val", "test", "test_source")]


def pool_needs(params: Params) -> tuple[int, int, int]:
    """Images the splits take: from the train pool for fitting (pretraining + the domains' train blocks)
    and for validation (base + the domains'), and from the test pool."""
    k, dom, d = len(params.domains.names), params.domains, params.data
    return d.n_pretrain + k * dom.n_train, d.n_base_val + k * dom.n_val, d.n_base_test + k * dom.n_test


def cut_splits(params: Params, paths: Paths) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, ...]]]:
    """The base splits (base_train, base_val, base_test) and, per domain of ``domains.names``, its base images
    before the transform: (train, val, test), disjoint from each other and from the base splits.

    The train pool, after one seeded permutation, is cut in order into base_train, the domains' train
    blocks, base_val and the domains' validation blocks; the test pool into base_test and the domains'
    test blocks. Validation comes last so that the train and test splits are the same whatever its size
    (for sources cut from photos, the validation thumbnails are drawn after the others, from the train photos).
    """
    k, dom = len(params.domains.names), params.domains
    n_fit, n_vals, n_test = pool_needs(params)
    n_train = n_fit + n_vals
    val = None
    if params.data.source in ("builtin", "folder"):
        pools = builtin_pools if params.data.source == "builtin" else folder_pools
        train, test, val = pools(params, paths, n_fit, n_test, n_vals)
    else:
        train, test = cifar_pools(params, paths)
    for pool, need, what in ((train, n_train if val is None else n_fit, "train"), (test, n_test, "test")):
        if len(pool) < need:
            extra = " + data.n_base_val + domains x domains.n_val" if what == "train" else ""
            raise DataError(f"{params.data.source}: the {what} pool has {len(pool)} images, the params need {need} "
                            f"(data.n_pretrain/n_base_test + {k} domains x domains.n_{what}{extra})")
    rng = np.random.default_rng(params.data.seed)
    if val is None:
        train = train[rng.permutation(len(train))[:n_train]]
    else:  # generated to size: permute the fit part as before, append the validation draws
        train = np.concatenate([train[rng.permutation(len(train))[:n_fit]], val])
    test = test[rng.permutation(len(test))[:n_test]]
    v0 = n_fit + params.data.n_base_val
    base = {"base_train": train[:params.data.n_pretrain], "base_val": train[n_fit:v0],
            "base_test": test[:params.data.n_base_test]}
    sources = {}
    for i, name in enumerate(dom.names):
        tr0, te0 = params.data.n_pretrain + i * dom.n_train, params.data.n_base_test + i * dom.n_test
        va0 = v0 + i * dom.n_val
        sources[name] = (train[tr0:tr0 + dom.n_train], train[va0:va0 + dom.n_val], test[te0:te0 + dom.n_test])
    return base, sources


SPLIT_SEEDS = {"train": 0, "val": 3, "test": 1}  # a domain split's transform seed: domains.seed + this


def domain_splits(name: str, sources: tuple[np.ndarray, ...], dom: Domains, level: int = DEFAULT_LEVEL
                  ) -> dict[str, np.ndarray]:
    """``{name}_train``, ``{name}_val``, ``{name}_test``: the domain's base images (``cut_splits``) through its
    transform at severity ``level`` (``pipeline.domains.at_level``; the same seeds at every level, so only
    the magnitude changes)."""
    cfg = at_level(dom, level)
    return {f"{name}_{split}": apply_domain(name, images, cfg, dom.seed + SPLIT_SEEDS[split])
            for split, images in zip(("train", "val", "test"), sources)}


def build_splits(params: Params, paths: Paths) -> dict[str, np.ndarray]:
    """Base and domain splits from disjoint base images (``cut_splits``): pretraining, validation, each domain's
    train, validation and test (at the default severity level) and its test images before the transform."""
    splits, sources = cut_splits(params, paths)
    for name, blocks in sources.items():
        splits.update(domain_splits(name, blocks, params.domains))
        splits[f"{name}_test_source"] = blocks[2]
    return {n: splits[n] for n in split_names(params)}


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


__all__ = ["DataError", "apply_domain", "build_splits", "cut_splits", "domain_splits", "check_images", "cifar_pools",
           "builtin_pools", "folder_pools", "photo_split", "load_images", "split_names", "to_tensor", "grid"]
