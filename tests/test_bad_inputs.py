"""Bad data and SAM files are refused with one line, exit code 2, before anything is written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import data
from pipeline.sam import SAMFileError
from pipeline.stages import run



# ------------------------------------------------------------------------------ bad data files
def _wrong_data(kind: str, good: np.ndarray, path: Path) -> None:
    if kind == "nchw":
        np.save(path, np.ascontiguousarray(good.transpose(0, 3, 1, 2)))
    elif kind == "float32":
        np.save(path, good.astype(np.float32) / 255)
    elif kind == "grey":
        np.save(path, good[..., 0])
    elif kind == "empty":
        np.save(path, good[:0])
    elif kind == "object":  # a pickled object array: np.load(allow_pickle=False) must refuse it
        np.save(path, np.array([{"x": 1}] * 4, dtype=object), allow_pickle=True)
    elif kind == "truncated":
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("split", ["base_train", "VA_test"])
@pytest.mark.parametrize("kind", ["nchw", "float32", "grey", "empty", "object", "truncated"])
def test_pretrain_refuses_a_data_file_of_wrong_shape_or_dtype(prepared, capsys, kind, split):
    from pipeline.stages import pretrain
    paths = prepared.paths
    path = paths.split(split)
    _wrong_data(kind, data.load_images(path), path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run(pretrain.main, prepared.root)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{split}.npy" in lines[0], lines
    assert not paths.pretrained.exists()
    assert not paths.metrics.exists()
    assert not paths.checkpoints.exists()


# ------------------------------------------------------------------------------ bad SAM files
SAM_SPARSITY = 0.01


def _sam_for_another_base(params, path: Path) -> None:
    """A well-formed SAM file, made for a different pretrained model (another seed)."""
    from pipeline.sam import attach_sam, base_fingerprint, sam_state, save_sam
    from pipeline.train import build_model
    torch.manual_seed(12345)
    other = build_model(params)
    fp = base_fingerprint(other)
    attach_sam(other, SAM_SPARSITY, params.adapt.allocation)
    save_sam(path, sam_state(other), sparsity=SAM_SPARSITY, allocation=params.adapt.allocation,
             base_fingerprint=fp, extra_meta={"domain": "VA"})


def _spoil(kind: str, params, path: Path) -> str:
    """Spoil the SAM file at ``path``; return what load_sam's message must say."""
    blob = path.read_bytes()
    if kind == "other_base":
        _sam_for_another_base(params, path)
        return "wrong base"
    if kind == "truncated":
        path.write_bytes(blob[: len(blob) * 2 // 3])
        return "truncated or unreadable"
    if kind == "altered":  # one bit of the payload (the last tensor bytes), header left as it was
        spoilt = bytearray(blob)
        spoilt[-2] ^= 0x01
        path.write_bytes(bytes(spoilt))
        return "altered"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["other_base", "truncated", "altered"])
def test_evaluate_refuses_a_bad_sam_file(adapted, capsys, kind):
    from pipeline.methods import Context
    from pipeline.methods import sam as sam_method
    from pipeline.stages import evaluate
    params, paths = adapted.params, adapted.paths
    ctx = Context(params, paths, torch.device("cpu"))
    assert len(sam_method.variants(ctx, SAM_SPARSITY)) == 1  # the good files pass
    path = sam_method.sam_path(ctx, "VA", SAM_SPARSITY)
    expected = _spoil(kind, params, path)
    with pytest.raises(SAMFileError, match=expected) as exc:
        sam_method.variants(ctx, SAM_SPARSITY)
    assert path.name in str(exc.value) and "\n" not in str(exc.value)
    # the whole evaluate stage: exit 2, one line, nothing written
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(evaluate.main, adapted.root)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not paths.evaluation_csv.exists()
    assert not paths.evaluate_json.exists()
    assert not paths.per_image.exists()
