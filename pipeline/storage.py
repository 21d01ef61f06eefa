"""Byte-reproducible, atomic file writing: every file the pipeline writes goes through ``write_atomic``.

safetensors writes its JSON header from a hash map, so the same tensors and metadata can give
different bytes from one save to the next; DVC would then see a changed output where nothing
changed. ``safetensors_bytes`` rewrites the header with sorted keys (tensor offsets are relative to
the data section, so they stay valid).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where tensors are written: light modules share write_atomic
    import torch


def safetensors_bytes(tensors: dict[str, "torch.Tensor"], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save as _st_save
    data = _st_save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors aligns the data section to 8 bytes
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file, then rename: a reader or a kill never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
