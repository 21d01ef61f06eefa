"""Data sources (builtin photos, CIFAR-100 and CIFAR-10 in both layouts, a folder of photos) and the
splits (transforms: tests/test_domains.py)."""
from __future__ import annotations

import os
import pickle
import socket
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from pipeline import data
from pipeline.config import BUILTIN_PHOTOS
from pipeline.data import DataError
from pipeline.paths import Paths

from .conftest import REPO, make_params

DOMAINS = ("VA", "VP", "VC", "VH")
SHARED_CIFAR = Path("/work/shared/data/cifar100")
AT = Paths(REPO, "test")  # where relative data paths would be resolved (these tests give absolute ones)


@pytest.fixture
def params(tiny_params):
    return make_params(tiny_params)


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """Random colour blocks (8x8 upsampled to 32x32): structure that every transform visibly changes."""
    small = np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)


# ---------------------------------------------------------------------------------------- builtin
def _constant_photo(name: str) -> np.ndarray:
    """A synthetic photo whose every pixel says which photo it is."""
    return np.full((160, 200, 3), 20 * (BUILTIN_PHOTOS.index(name) + 1), np.uint8)


def _noise_photo(name: str) -> np.ndarray:
    rng = np.random.default_rng(BUILTIN_PHOTOS.index(name))
    return rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_builtin_test_thumbnails_come_only_from_test_photos(monkeypatch, tiny_params):
    monkeypatch.setattr(data, "_photo", _constant_photo)
    tiny_params["data"]["builtin"]["scales"] = [1.0, 0.5]
    params = make_params(tiny_params)
    train, test, _ = data.builtin_pools(params, AT, 200, 100)
    assert train.shape == (200, 32, 32, 3) and test.shape == (100, 32, 32, 3)
    assert train.dtype == np.uint8 and test.dtype == np.uint8
    test_ids = {20 * (BUILTIN_PHOTOS.index(n) + 1) for n in params.data.builtin.test_photos}
    train_ids = {20 * (i + 1) for i in range(len(BUILTIN_PHOTOS))} - test_ids
    seen_train = set(np.unique(train).tolist())
    seen_test = set(np.unique(test).tolist())
    assert seen_train <= train_ids and seen_test <= test_ids
    assert seen_test == test_ids  # every test photo is used
    assert len(seen_train) >= len(train_ids) - 1


def test_builtin_pools_are_deterministic_for_a_seed(monkeypatch, tiny_params):
    monkeypatch.setattr(data, "_photo", _noise_photo)
    tiny_params["data"]["builtin"]["scales"] = [1.0]
    a = data.builtin_pools(make_params(tiny_params), AT, 40, 20)
    b = data.builtin_pools(make_params(tiny_params), AT, 40, 20)
    tiny_params["data"]["seed"] = 1
    c = data.builtin_pools(make_params(tiny_params), AT, 40, 20)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_builtin_refuses_scales_that_leave_no_thumbnail(monkeypatch, tiny_params):
    monkeypatch.setattr(data, "_photo", lambda name: np.zeros((40, 40, 3), np.uint8))
    tiny_params["data"]["builtin"]["scales"] = [0.5]
    with pytest.raises(DataError, match=r"data\.builtin\.scales"):
        data.builtin_pools(make_params(tiny_params), AT, 4, 4)


@pytest.mark.parametrize("name", BUILTIN_PHOTOS)
def test_every_builtin_photo_loads_offline(name):
    img = np.asarray(data._photo(name))
    assert img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 128
    assert img.dtype == np.uint8


# ------------------------------------------------------------------------------------------ splits
def test_build_splits_returns_every_split_with_the_configured_size(tiny_splits, params):
    names = data.split_names(params)
    assert list(tiny_splits) == names
    assert names[:3] == ["base_train", "base_val", "base_test"] and len(names) == 3 + 4 * len(params.domains.names)
    sizes = {"base_train": params.data.n_pretrain, "base_val": params.data.n_base_val,
             "base_test": params.data.n_base_test}
    for d in params.domains.names:
        sizes[f"{d}_train"], sizes[f"{d}_test"] = params.domains.n_train, params.domains.n_test
        sizes[f"{d}_val"], sizes[f"{d}_test_source"] = params.domains.n_val, params.domains.n_test
    for name, arr in tiny_splits.items():
        assert arr.shape == (sizes[name], 32, 32, 3) and arr.dtype == np.uint8, name
    train = {img.tobytes() for img in tiny_splits["base_train"]}
    assert not any(img.tobytes() in train for img in tiny_splits["base_test"])


def test_build_splits_uses_disjoint_base_images(monkeypatch, tiny_params):
    """Each split comes from its own base images: tag every pool image with its index, skip transforms."""
    def pools(params, paths, n_train, n_test, n_val):
        def tagged(n, offset):
            out = np.zeros((n, 32, 32, 3), np.uint8)
            ids = np.arange(n) + offset
            out[:, 0, 0, 0], out[:, 0, 0, 1] = ids % 256, ids // 256
            return out
        return tagged(n_train, 0), tagged(n_test, 10_000), tagged(n_val, 5_000)
    monkeypatch.setattr(data, "builtin_pools", pools)
    monkeypatch.setattr(data, "apply_domain", lambda name, images, cfg, seed: images.copy())
    params = make_params(tiny_params)
    splits = data.build_splits(params, Paths.of(params))

    def ids(arr):
        return (arr[:, 0, 0, 0].astype(int) + 256 * arr[:, 0, 0, 1].astype(int)).tolist()
    seen = []
    for name, arr in splits.items():
        got = ids(arr)
        assert len(set(got)) == len(got), f"{name} repeats a base image"
        if name.endswith("_test_source"):  # the paired-shift control: the domain's test images, untransformed
            assert got == ids(splits[name.removesuffix("_source")]), name
            continue
        if name.endswith(("train", "val")):  # validation: from the train pool, disjoint from train and test
            assert max(got) < 10_000, f"{name} uses test images"
        else:
            assert min(got) >= 10_000, f"{name} uses training images"
        seen += got
    assert len(seen) == len(set(seen)), "two splits share a base image"
    assert {n for n in splits if n.endswith("_val")} == {"base_val", *(f"{d}_val" for d in params.domains.names)}


def test_validation_does_not_move_the_train_and_test_splits(monkeypatch, tiny_params):
    """Validation is cut after the train blocks: the other splits are those of a run with less validation."""
    monkeypatch.setattr(data, "cifar_pools", lambda params, paths: (
        np.random.default_rng(1).integers(0, 256, (400, 32, 32, 3), dtype=np.uint8),
        np.random.default_rng(2).integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)))
    tiny_params["data"]["source"] = "cifar100"
    small = data.build_splits(make_params(tiny_params), None)
    n_val0 = tiny_params["data"]["n_base_val"]
    tiny_params["data"]["n_base_val"] = 40
    tiny_params["domains"]["n_val"] = 20
    large = data.build_splits(make_params(tiny_params), None)
    for name in small:
        if not name.endswith("_val"):
            assert np.array_equal(small[name], large[name]), name
    assert len(large["base_val"]) == 40 and len(small["base_val"]) == n_val0


def test_build_splits_is_deterministic(monkeypatch, tiny_params):
    monkeypatch.setattr(data, "_photo", _noise_photo)
    tiny_params["data"].update(n_pretrain=8, n_base_test=4)
    tiny_params["data"]["builtin"]["scales"] = [1.0]
    tiny_params["domains"].update(n_train=4, n_test=2)
    a = data.build_splits(make_params(tiny_params), Paths(REPO, "test"))
    b = data.build_splits(make_params(tiny_params), Paths(REPO, "test"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    tiny_params["domains"]["seed"] = 5
    c = data.build_splits(make_params(tiny_params), Paths(REPO, "test"))
    assert np.array_equal(a["base_train"], c["base_train"])  # the domain seed only changes the transforms
    assert not np.array_equal(a["VA_train"], c["VA_train"])


# ------------------------------------------------------------------------------------------ CIFAR-100
def cifar_params(tiny_params, local, root="never-used", source="cifar100"):
    tiny_params["data"]["source"] = source
    tiny_params["data"][source].update(local=str(local), root=str(root))
    return make_params(tiny_params)


def write_numpy_layout(folder: Path, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
              "train_labels": rng.integers(0, 100, n_train), "test_labels": rng.integers(0, 100, n_test)}
    for k, v in arrays.items():
        np.save(folder / f"{k}.npy", v)
    return arrays


class _Py2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2's cPickle wrote ``str`` (BINSTRING), as in the original CIFAR files."""

    def save_py2_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_py2_str}


def dump_py2(obj, path: Path) -> None:
    import io
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"_codecs" not in raw and b"numpy.core.multiarray" in raw
    path.write_bytes(raw)


def write_python_layout(folder: Path, n_train=12, n_test=6, style="py3", seed=0, source="cifar100"):
    """The original python layout of ``source``: CIFAR-100's train/test files, or CIFAR-10's
    data_batch_1..5/test_batch (the train images spread over the five batches, in order)."""
    layout = data.CIFAR[source]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, files in (("train", n_train, layout.train), ("test", n_test, layout.test)):
        flat = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        for name, part in zip(files, np.array_split(flat, len(files))):
            m = len(part)
            labels = rng.integers(0, 100, m).tolist()
            if style == "py2":  # the original files: protocol 2 from Python 2, str (bytes) keys
                entry = {b"filenames": [b"img_%d.png" % i for i in range(m)], b"batch_label": b"batch 1 of 1",
                         b"fine_labels": labels, b"coarse_labels": [x // 5 for x in labels], b"data": part}
                dump_py2(entry, folder / name)
            else:
                with open(folder / name, "wb") as f:
                    pickle.dump({"data": part, "labels": labels}, f)
        out[split] = flat
    return out


def assert_hwc(images: np.ndarray, flat: np.ndarray):
    assert images.shape == (len(flat), 32, 32, 3) and images.dtype == np.uint8
    i, r, c, ch = np.indices(images.shape)
    assert np.array_equal(images, flat[i, ch * 1024 + r * 32 + c])
    assert images[0, 0, 1, 2] == flat[0, 2 * 1024 + 1]  # one pixel spelled out: red/green/blue planes


def test_cifar_numpy_layout(tmp_path, tiny_params):
    arrays = write_numpy_layout(tmp_path / "copy")
    train, test = data.cifar_pools(cifar_params(tiny_params, tmp_path / "copy"), Paths(tmp_path, "test"))
    assert np.array_equal(train, arrays["train_images"]) and np.array_equal(test, arrays["test_images"])


@pytest.mark.parametrize("style", ["py3", "py2"])
@pytest.mark.parametrize("nested", [True, False])
def test_cifar_python_layout_is_read_hwc_pixel_exact(tmp_path, tiny_params, style, nested):
    folder = tmp_path / "copy" / "cifar-100-python" if nested else tmp_path / "copy"
    flat = write_python_layout(folder, style=style)
    train, test = data.cifar_pools(cifar_params(tiny_params, tmp_path / "copy"), Paths(tmp_path, "test"))
    assert_hwc(train, flat["train"])
    assert_hwc(test, flat["test"])


def test_cifar_local_copy_relative_to_the_project_root(tmp_path, monkeypatch, tiny_params):
    arrays = write_numpy_layout(tmp_path / "shared" / "c100")
    train, _ = data.cifar_pools(cifar_params(tiny_params, "shared/c100"), Paths(tmp_path, "test"))
    assert np.array_equal(train, arrays["train_images"])


def test_cifar_local_copy_wins_over_an_earlier_download(tmp_path, tiny_params):
    local = write_numpy_layout(tmp_path / "local", seed=1)
    write_python_layout(tmp_path / "root" / "cifar-100-python", seed=2)
    train, _ = data.cifar_pools(cifar_params(tiny_params, tmp_path / "local", tmp_path / "root"), Paths(tmp_path, "test"))
    assert np.array_equal(train, local["train_images"])


class _Evil:
    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return self.payload


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_malicious_cifar_pickle_is_refused_and_does_not_run(tmp_path, tiny_params, kind):
    marker = tmp_path / "pwned"
    folder = tmp_path / "copy" / "cifar-100-python"
    folder.mkdir(parents=True)
    payload = ((os.system, (f"echo pwned > {marker}",)) if kind == "os.system"
               else (exec, (f"open({str(marker)!r}, 'w').write('pwned')",)))
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": _Evil(payload), "fine_labels": [0]}, f)
    with pytest.raises(DataError, match="refusing to unpickle"):
        data.cifar_pools(cifar_params(tiny_params, tmp_path / "copy"), Paths(tmp_path, "test"))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"not a pickle at all", pickle.dumps({"data": np.zeros((2, 1024), np.uint8)}),
                                     pickle.dumps({"data": np.zeros((2, 3072), np.float32)}),
                                     pickle.dumps({"pixels": np.zeros((2, 3072), np.uint8)}), pickle.dumps([1, 2])])
def test_unusable_cifar_python_files_are_refused(tmp_path, content):
    (tmp_path / "train").write_bytes(content)
    with pytest.raises(DataError) as exc:
        data._read_cifar_python(tmp_path / "train")
    assert str(tmp_path / "train") in str(exc.value)


def test_offline_without_a_copy_fails_fast_naming_both_remedies(tmp_path, monkeypatch, tiny_params):
    import torchvision.datasets.utils as tv_utils
    calls = []

    def unreachable(url, download_root, *args, **kwargs):
        calls.append((url, download_root, socket.getdefaulttimeout()))
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", unreachable)
    before = socket.getdefaulttimeout()
    params = cifar_params(tiny_params, tmp_path / "no-copy", tmp_path / "download")
    with pytest.raises(DataError) as exc:
        data.cifar_pools(params, Paths(tmp_path, "test"))
    msg = str(exc.value)
    assert "network" in msg and "data.cifar100.local" in msg and "\n" not in msg
    assert len(calls) == 1 and Path(calls[0][1]) == tmp_path / "download"
    assert calls[0][2] is not None and calls[0][2] <= 30, "no socket timeout while downloading: offline would hang"
    assert socket.getdefaulttimeout() == before
    with pytest.raises(DataError, match=r"data\.cifar100\.local"):
        data.build_splits(params, Paths(tmp_path, "test"))


def test_download_branch_reads_what_was_downloaded(tmp_path, monkeypatch, tiny_params):
    import torchvision.datasets.utils as tv_utils
    flat = {}

    def fake_download(url, download_root, *args, **kwargs):
        flat.update(write_python_layout(Path(download_root) / "cifar-100-python", style="py2"))
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    train, test = data.cifar_pools(cifar_params(tiny_params, tmp_path / "no-copy", tmp_path / "download"), Paths(tmp_path, "test"))
    assert_hwc(train, flat["train"])
    assert_hwc(test, flat["test"])


def test_cifar_pool_too_small_for_the_params_is_refused(tmp_path, tiny_params):
    write_numpy_layout(tmp_path / "copy", n_train=10, n_test=10)
    with pytest.raises(DataError, match="train pool has 10 images"):
        data.build_splits(cifar_params(tiny_params, tmp_path / "copy"), Paths(tmp_path, "test"))


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="no shared CIFAR-100 copy on this machine")
def test_shared_cifar_copy():
    found = data._find_cifar(SHARED_CIFAR, data.CIFAR["cifar100"])
    assert found is not None
    train, test = found
    assert train.shape == (25000, 32, 32, 3) and test.shape == (10000, 32, 32, 3)
    assert train.dtype == np.uint8 and test.dtype == np.uint8


# ------------------------------------------------------------------------------------------ CIFAR-10
def test_cifar10_numpy_layout(tmp_path, tiny_params):
    arrays = write_numpy_layout(tmp_path / "copy", seed=3)
    train, test = data.cifar_pools(cifar_params(tiny_params, tmp_path / "copy", source="cifar10"), Paths(tmp_path, "test"))
    assert np.array_equal(train, arrays["train_images"]) and np.array_equal(test, arrays["test_images"])


@pytest.mark.parametrize("style", ["py3", "py2"])
@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_python_layout_joins_the_five_batches_hwc_pixel_exact(tmp_path, tiny_params, style, nested):
    folder = tmp_path / "copy" / "cifar-10-batches-py" if nested else tmp_path / "copy"
    flat = write_python_layout(folder, n_train=15, n_test=4, style=style, source="cifar10")
    assert sorted(p.name for p in folder.iterdir()) == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    train, test = data.cifar_pools(cifar_params(tiny_params, tmp_path / "copy", source="cifar10"), Paths(tmp_path, "test"))
    assert_hwc(train, flat["train"])
    assert_hwc(test, flat["test"])


def test_cifar10_reads_only_its_own_params_and_layout(tmp_path, tiny_params):
    """A CIFAR-100 copy where cifar10 looks is not taken for CIFAR-10 (it would be the wrong data set)."""
    import torchvision.datasets.utils as tv_utils
    write_python_layout(tmp_path / "copy" / "cifar-100-python")
    tiny_params["data"]["cifar100"].update(local=str(tmp_path / "copy"))  # cifar100's block: not read
    params = cifar_params(tiny_params, tmp_path / "elsewhere", tmp_path / "copy", source="cifar10")

    def unreachable(url, *args, **kwargs):
        assert "cifar-10-python" in url
        raise URLError("offline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tv_utils, "download_and_extract_archive", unreachable)
        with pytest.raises(DataError, match=r"^CIFAR-10 is not at data\.cifar10\.local"):
            data.cifar_pools(params, Paths(tmp_path, "test"))


def test_cifar10_malicious_pickle_is_refused(tmp_path, tiny_params):
    folder = tmp_path / "copy"
    write_python_layout(folder, source="cifar10")
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": _Evil((os.system, (f"echo pwned > {marker}",))), "labels": [0]}, f)
    with pytest.raises(DataError, match="refusing to unpickle"):
        data.cifar_pools(cifar_params(tiny_params, folder, source="cifar10"), Paths(tmp_path, "test"))
    assert not marker.exists()


# -------------------------------------------------------------------------------- folder of photos
def write_photos(folder: Path, n: int = 12, seed: int = 0) -> dict[str, int]:
    """``n`` photos of different sizes (PNG and JPEG, RGB, grey and RGBA), each a flat colour whose
    red value says which photo it is; returns {relative path: red value}."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        h, w = int(rng.integers(48, 160)), int(rng.integers(48, 200))
        value = 10 + 20 * i
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = value, 255 - value, 128
        sub = folder / ("nested" if i % 4 == 3 else "")
        sub.mkdir(exist_ok=True)
        name = f"photo_{i:02d}." + ("png" if i % 2 else "jpg")
        if i == 5:  # a PNG with alpha: the alpha channel is dropped
            Image.fromarray(np.dstack([img, np.full((h, w), 200, np.uint8)])).save(sub / name)
        elif i % 2:
            Image.fromarray(img).save(sub / name)
        else:
            Image.fromarray(img).save(sub / name, quality=100, subsampling=0)
        out[(sub / name).relative_to(folder).as_posix()] = value
    return out


def folder_params(tiny_params, path, **folder):
    tiny_params["data"]["source"] = "folder"
    tiny_params["data"]["folder"].update(path=str(path), scales=[1.0, 0.5], **folder)
    return make_params(tiny_params)


def _photo_of(tile: np.ndarray) -> int:
    """The red value of a flat-colour photo's tile, rounded to the photos' grid (JPEG moves it a little)."""
    return int(10 + 20 * round((float(tile[..., 0].mean()) - 10) / 20))


def test_folder_tiles_come_from_disjoint_photos_and_the_split_is_recorded(tmp_path, tiny_params):
    photos = write_photos(tmp_path / "photos")
    params = folder_params(tiny_params, tmp_path / "photos", test_fraction=0.25)
    split = data.photo_split(params, AT)
    assert sorted(split["train"] + split["test"]) == sorted(photos)
    assert not set(split["train"]) & set(split["test"])
    assert len(split["test"]) == 3 and len(split["train"]) == 9
    train, test, _ = data.folder_pools(params, AT, 300, 100)
    assert train.shape == (300, 32, 32, 3) and test.shape == (100, 32, 32, 3) and train.dtype == np.uint8
    seen_train, seen_test = {_photo_of(t) for t in train}, {_photo_of(t) for t in test}
    assert seen_train <= {photos[n] for n in split["train"]}
    assert seen_test == {photos[n] for n in split["test"]}  # every test photo is used, and nothing else
    assert not seen_train & seen_test
    assert len(seen_train) >= len(split["train"]) - 1


def test_folder_split_and_tiles_are_deterministic_for_a_seed(tmp_path, tiny_params):
    write_photos(tmp_path / "photos")
    params = folder_params(tiny_params, tmp_path / "photos", test_fraction=0.5)
    a, b = data.folder_pools(params, AT, 40, 20), data.folder_pools(params, AT, 40, 20)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    split = data.photo_split(params, AT)
    tiny_params["data"]["seed"] = 7
    other = make_params(tiny_params)
    assert data.photo_split(other, AT) != split
    assert not np.array_equal(data.folder_pools(other, AT, 40, 20)[0], a[0])


def test_build_splits_from_a_folder_and_the_domains_manifest_records_the_photo_split(project, tmp_path):
    import json

    from pipeline.stages import domains
    photos = write_photos(tmp_path / "photos")
    raw = project.raw
    raw["data"]["source"] = "folder"
    raw["data"]["folder"]["path"] = str(tmp_path / "photos")
    project.write_params(raw)
    params, paths = project.params, project.paths
    domains.main(params, paths)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["photos"] == data.photo_split(params, AT)
    assert sorted(manifest["photos"]["train"] + manifest["photos"]["test"]) == sorted(photos)
    assert manifest["source"]["data_source"] == "folder"
    assert paths.reports == project.root / "reports" / "folder-quick"
    test_photos = {photos[n] for n in manifest["photos"]["test"]}
    base_train = data.load_images(paths.split("base_train"))
    assert base_train.shape == (params.data.n_pretrain, 32, 32, 3)
    assert not {_photo_of(t) for t in base_train} & test_photos


@pytest.mark.parametrize("case", ["missing", "a file", "empty", "no images", "one photo", "all too small",
                                  "unreadable", "truncated"])
def test_folder_errors_are_one_line_naming_the_problem(tmp_path, tiny_params, case):
    from PIL import Image
    folder = tmp_path / "photos"
    expect = {"missing": "is not a folder", "a file": "is not a folder", "empty": "no PNG or JPEG image",
              "no images": "no PNG or JPEG image", "one photo": "at least 2", "all too small": "at least 32 pixels",
              "unreadable": "not a readable PNG/JPEG image", "truncated": "not a readable PNG/JPEG image"}[case]
    if case == "a file":
        folder.write_text("not a folder")
    elif case != "missing":
        folder.mkdir()
    if case == "no images":
        (folder / "notes.txt").write_text("hello")
        (folder / ".hidden.png").write_bytes(b"not an image")  # hidden files are skipped
    if case == "one photo":
        write_photos(folder, n=1)
    if case == "all too small":
        for i in range(4):
            Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(folder / f"small_{i}.png")
    if case in ("unreadable", "truncated"):
        write_photos(folder, n=4)
        bad = folder / "photo_00.jpg"
        bad.write_bytes(b"GIF89a not really" if case == "unreadable" else bad.read_bytes()[:300])
    params = folder_params(tiny_params, folder, test_fraction=0.5)
    with pytest.raises(DataError) as exc:
        data.build_splits(params, Paths(tmp_path, "test"))
    msg = str(exc.value)
    assert msg.startswith("folder: ") and expect in msg and "\n" not in msg, msg
    if case in ("unreadable", "truncated"):
        assert "photo_00.jpg" in msg


def test_folder_path_relative_to_the_project_root(tmp_path, tiny_params):
    photos = write_photos(tmp_path / "data" / "kodak", n=4)
    split = data.photo_split(folder_params(tiny_params, "data/kodak", test_fraction=0.25), Paths(tmp_path, "test"))
    assert sorted(split["train"] + split["test"]) == sorted(photos) and len(split["test"]) == 1


# ---------------------------------------------------------------------------------------- npy files
@pytest.mark.parametrize("bad", ["float32", "28x28", "object", "chw", "empty", "gray", "text"])
def test_load_images_refuses_wrong_shape_or_dtype(tmp_path, bad):
    path = tmp_path / "x.npy"
    if bad == "float32":
        np.save(path, np.zeros((4, 32, 32, 3), np.float32))
    elif bad == "28x28":
        np.save(path, np.zeros((4, 28, 28, 3), np.uint8))
    elif bad == "object":
        np.save(path, np.array([np.zeros((32, 32, 3), np.uint8), "x"], dtype=object), allow_pickle=True)
    elif bad == "chw":
        np.save(path, np.zeros((4, 3, 32, 32), np.uint8))
    elif bad == "empty":
        np.save(path, np.zeros((0, 32, 32, 3), np.uint8))
    elif bad == "gray":
        np.save(path, np.zeros((4, 32, 32), np.uint8))
    else:
        path.write_text("base_train\n")
    with pytest.raises(DataError) as exc:
        data.load_images(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_load_images_missing_file(tmp_path):
    with pytest.raises(DataError):
        data.load_images(tmp_path / "missing.npy")


def test_load_images_roundtrip(tmp_path):
    imgs = smooth_images(3)
    np.save(tmp_path / "ok.npy", imgs)
    assert np.array_equal(data.load_images(tmp_path / "ok.npy"), imgs)


def test_to_tensor_is_nchw_uint8():
    imgs = smooth_images(2)
    t = data.to_tensor(imgs)
    assert t.dtype == torch.uint8 and tuple(t.shape) == (2, 3, 32, 32)
    assert torch.equal(t.permute(0, 2, 3, 1), torch.from_numpy(imgs))


def test_grid_tiles_rows_with_gutters():
    rows = [smooth_images(3, seed=s) for s in range(2)]
    g = data.grid(rows)
    assert g.shape == (2 * 32 + 2, 3 * 32 + 4, 3)
    assert np.array_equal(g[34:66, 68:100], rows[1][2])
    assert (g[32:34] == 255).all()
