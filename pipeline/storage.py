"""Byte-reproducible, atomic file writing: every file the pipeline writes goes through ``write_atomic``.

safetensors writes its JSON header from a hash map, so the same tensors and metadata can give
different bytes from one save to the next; DVC would then see a changed output where nothing
changed. ``safetensors_bytes`` rewrites the header with sorted keys (tensor offsets are relative to
the data section, so they stay valid). ``file_kind`` tells the pipeline's safetensors files apart
from their headers, so a loader can say what it was given instead of failing on a missing key.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:  # torch is imported where tensors are written: light modules share write_atomic
    import torch


def safetensors_bytes(tensors: dict[str, "torch.Tensor"], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save as _st_save
    data = _st_save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors aligns the data section to 8 bytes
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_stale_tmp(path: Path) -> None:
    """Remove the temporary files of ``path`` that a killed writer left (``<name>.tmp.<pid>``, the pid
    gone): inside a directory output (``reports/<run>/tables``) DVC would count them as part of it."""
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.tmp.*"):
        pid = tmp.name.rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file, then rename: a reader or a kill never sees half a file (a kill
    leaves the temporary file, removed by the next write of ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, text.encode())


def write_atomic_with(path: str | os.PathLike, write: Callable[[io.BytesIO], object]) -> None:
    """``write_atomic`` for writers that want a file object (np.save, torch.save, savefig, csv)."""
    buf = io.BytesIO()
    write(buf)
    write_atomic(path, buf.getvalue())


def save_safetensors(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"],
                     metadata: dict[str, str] | None = None) -> None:
    write_atomic(path, safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata))


# ------------------------------------------------------------------ what a safetensors file holds
# Told from what every such file already holds: no "kind" field is written into a SAM, because a SAM's
# memory cost is its file size (claim C2), which a field would change. The later adapter files (lora,
# bitfit) do carry metadata "kind" (their bytes, counted as their memory, include it).
KINDS = {"sam": "a SAM file (metadata format 'sam/<n>')",
         "model": "a model file (the SC model's state dict: encoder.*, decoder.*)",
         "equalizer": "an equalizer file (metadata 'receiver', tensors <partner>.blocks.*)",
         "lora": "a LoRA adapter file (metadata kind 'lora')",
         "bitfit": "a BitFit file (metadata kind 'bitfit')"}
KIND_KEY = "kind"  # metadata naming the kind outright (the adapters of pipeline/methods/lora.py, bitfit.py)
_EQUALIZER_TENSOR = re.compile(r"\w+\.blocks\.\d+\.")
_HEADER_LIMIT = 100 << 20  # safetensors' own bound on a header


def safetensors_header(path: str | os.PathLike) -> dict | None:
    """The JSON header of a safetensors file (tensor entries, ``__metadata__``); None if unreadable."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n <= _HEADER_LIMIT else None
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def file_kind(path: str | os.PathLike) -> str | None:
    """Which of the pipeline's safetensors files ``path`` is (a key of ``KINDS``), from its header: a
    ``kind`` metadata entry, a SAM's ``format`` metadata, an equalizer's ``receiver`` metadata or
    tensor names, a model's state-dict names. None: unreadable, or none of these."""
    header = safetensors_header(path)
    if header is None:
        return None
    meta = header.get("__metadata__") or {}
    names = [k for k in header if k != "__metadata__"]
    if meta.get(KIND_KEY) in KINDS:
        return meta[KIND_KEY]
    if str(meta.get("format", "")).startswith("sam/"):
        return "sam"
    if "receiver" in meta or (names and all(_EQUALIZER_TENSOR.match(n) for n in names)):
        return "equalizer"
    if names and all(n.startswith(("encoder.", "decoder.")) for n in names):
        return "model"
    return None


def wrong_kind(path: str | os.PathLike, expected: str) -> str | None:
    """What to say when ``path`` is another kind of pipeline file than ``expected``; None otherwise
    (the right kind, or no kind known: the loader's own checks then speak)."""
    kind = file_kind(path)
    if kind is None or kind == expected:
        return None
    return f"{KINDS[kind]} given where {KINDS[expected]} is expected"


def read_adapter(path: str | os.PathLike, kind: str, label: str, base_fp: str,
                 fail: Callable[[str], Exception]) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """The tensors and metadata of a stored adapter of ``kind`` (e.g. ``bitfit``, ``lora``) made for
    the base model whose fingerprint is ``base_fp``. Checked in order, each failure one line through
    ``fail(message)`` (the loader's own error type): the file kind (another pipeline file is named as
    such), the metadata kind, the base fingerprint, then the tensors parse. What the tensors must be
    (names, shapes, dtype) is the loader's to check."""
    if problem := wrong_kind(path, kind):
        raise fail(problem)
    header = safetensors_header(path)
    meta = (header or {}).get("__metadata__") or {}
    if header is None or meta.get(KIND_KEY) != kind:
        raise fail(f"not a {label} file (no metadata kind '{kind}')")
    want = str(meta.get("base_fingerprint"))
    if base_fp != want:
        raise fail(f"wrong base model: {label} was made for base {want[:12]}, this model is {base_fp[:12]}")
    from safetensors.torch import load as st_load
    try:
        with open(path, "rb") as f:
            tensors = st_load(f.read())
    except Exception as e:  # noqa: BLE001 - any parse failure means an unusable file
        raise fail(f"truncated or unreadable {label} file ({type(e).__name__})") from None
    return tensors, meta


def _listed(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def layout_problem(tensors: "Mapping[str, torch.Tensor]", shapes: Mapping[str, tuple[int, ...]],
                   dtype: "torch.dtype") -> str | None:
    """The first way ``tensors`` differ from the names and ``shapes`` a loader expects, all of ``dtype``:
    tensors missing, tensors unexpected, a shape, a dtype; None when they agree."""
    if missing := sorted(set(shapes) - set(tensors)):
        return f"tensors missing: {_listed(missing)}"
    if unexpected := sorted(set(tensors) - set(shapes)):
        return f"unexpected tensors: {_listed(unexpected)}"
    for name, want in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(want):
            return f"tensor {name} has shape {tuple(t.shape)}, expected {tuple(want)}"
        if t.dtype != dtype:
            return f"tensor {name} is {t.dtype}, expected {dtype}"
    return None


def nonfinite(tensors: "Mapping[str, torch.Tensor]", noun: str) -> str | None:
    """What a loader says of the first of ``tensors`` holding NaN or an infinity (``noun`` names what
    the tensors are: "delta", "factor", "weight"); None when every entry is finite."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            return f"{noun} {name} not finite ({int(t.isnan().sum())} NaN, {int(t.isinf().sum())} infinite)"
    return None


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: readers never see half a file, a failure keeps the old one."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


# ------------------------------------------------------------------ dvc.lock across a kill
# DVC (3.67) rewrites dvc.lock in place (open "w+", then YAML) after each stage: a kill in that moment
# leaves it cut short, and the next `dvc repro` refuses it ("'./dvc.lock' validation failed"). As a
# stage starts, dvc.lock is whole (DVC wrote it before starting the stage): the stage keeps a copy.
LOCK, LOCK_COPY = Path("dvc.lock"), Path(".dvc") / "tmp" / "dvc.lock.whole"
RWLOCK = Path(".dvc") / "tmp" / "rwlock"  # DVC's record of the outputs its running stages hold


def keep_lock(root: Path) -> None:
    """Copy ``<root>/dvc.lock`` to ``LOCK_COPY`` (a DVC project only; nothing to keep without a lock)."""
    lock = root / LOCK
    if lock.is_file() and (root / ".dvc").is_dir():
        write_atomic(root / LOCK_COPY, lock.read_bytes())


def lock_problem(path: Path) -> str | None:
    """Why DVC would refuse the lock file ``path`` (its own schema); None when it is whole."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from voluptuous import Invalid
    import yaml
    try:
        COMPILED_LOCKFILE_SCHEMA(yaml.safe_load(path.read_text()) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError, Invalid) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def restore_lock(root: Path) -> str:
    """Repair what a kill of DVC can leave cut short, in one line saying what was done: ``dvc.lock``
    (the whole copy kept by the last stage that started is put back, and that stage runs again;
    without one the broken lock is removed and every stage is checked again) and DVC's
    ``.dvc/tmp/rwlock`` (rewritten in place too: a cut-short one, not JSON, is removed)."""
    lock, copy, rwlock = root / LOCK, root / LOCK_COPY, root / RWLOCK
    done = []
    if rwlock.is_file():
        try:
            json.loads(rwlock.read_text() or "null")["read"]
        except (ValueError, TypeError, KeyError):
            rwlock.unlink()
            done.append(f"{RWLOCK} was cut short; removed it")
    if lock.is_file() and (problem := lock_problem(lock)) is not None:
        if copy.is_file() and lock_problem(copy) is None:
            write_atomic(lock, copy.read_bytes())
            done.append(f"dvc.lock was cut short ({problem}); restored the copy kept as the last stage started")
        else:
            lock.unlink()
            done.append(f"dvc.lock was cut short ({problem}) and no whole copy was kept; removed it: "
                        "dvc repro checks every stage")
    return "; ".join(done) or "dvc.lock is whole: nothing to do"


if __name__ == "__main__":  # python -m pipeline.storage --restore-lock [ROOT]
    import sys
    if sys.argv[1:2] != ["--restore-lock"] or len(sys.argv) > 3:
        sys.exit("usage: python -m pipeline.storage --restore-lock [PROJECT_ROOT]")
    print(restore_lock(Path(sys.argv[2] if len(sys.argv) > 2 else ".")))


def write_rows(path: Path, rows: list[dict], fieldnames) -> None:
    """Write dicts as CSV atomically (with the csv module's \\r\\n line ends)."""
    import csv
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fieldnames)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_npy(path: Path, arr) -> None:
    import numpy as np
    write_atomic_with(path, lambda f: np.save(f, arr, allow_pickle=False))


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    write_atomic_with(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (the content keys' input digests)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
