"""A file of the wrong kind is refused with a message saying what it is and what was expected.

The pipeline's safetensors files are told apart by their headers alone: a SAM file's metadata
``format: sam/2``, an equalizer file's ``receiver`` metadata, a model file's state-dict names
(``encoder.*``, ``decoder.*``). The files here come from the pipeline's own writers.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import parse
from pipeline.methods import Context
from pipeline.methods import equalizer as eq_method
from pipeline.paths import Paths
from pipeline.sam import (
    SAMFileError,
    attach_sam,
    base_fingerprint,
    load_sam,
    sam_state,
    save_sam,
)
from pipeline.storage import save_safetensors
from pipeline.train import ModelFileError, build_model, load_model, save_model

SPARSITY = 0.01


@pytest.fixture
def files(tmp_path, tiny_params):
    """params, the base model, and one file of each kind, as the stages write them."""
    params = parse(tiny_params)
    torch.manual_seed(0)
    model = build_model(params)
    paths = {kind: tmp_path / f"{kind}.safetensors" for kind in ("model", "sam", "equalizer")}
    save_model(model, paths["model"], {"profile": params.profile, "source": params.data.source})
    save_sam(paths["sam"], sam_state(attach_sam(copy.deepcopy(model), SPARSITY)), sparsity=SPARSITY,
             allocation="linear", base_fingerprint=base_fingerprint(model), extra_meta={"domain": "VA"})
    ctx = Context(params, Paths(tmp_path, "test"), torch.device("cpu"))
    eq = eq_method.new_equalizer(ctx, model.channels)
    partners = [d for d in params.domains.names if d != "VH"]
    save_safetensors(paths["equalizer"], {f"{d}.{k}": v.clone() for d in partners for k, v in eq.state_dict().items()},
                     {"receiver": "VH"})
    return params, model, paths


def test_each_kind_is_recognised_from_its_header(files, tmp_path):
    from pipeline.storage import file_kind
    _, _, paths = files
    assert {kind: file_kind(path) for kind, path in paths.items()} == {k: k for k in paths}
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    for name in ("junk", "short", "missing"):
        assert file_kind(tmp_path / f"{name}.safetensors") is None, name


def test_a_model_file_given_as_a_sam_is_refused_as_a_model_file(files):
    _, model, paths = files
    with pytest.raises(SAMFileError, match=r"a model file .*given where a SAM file .*is expected") as exc:
        load_sam(paths["model"], model)
    assert str(exc.value).startswith(str(paths["model"])) and "\n" not in str(exc.value)
    assert "truncated" not in str(exc.value)


def test_a_model_file_without_metadata_is_still_a_model_file(files):
    _, model, paths = files
    save_model(model, paths["model"], {})
    with pytest.raises(SAMFileError, match="a model file"):
        load_sam(paths["model"], model)


@pytest.mark.parametrize("given", ["sam", "equalizer"])
def test_a_sam_or_equalizer_file_given_as_a_model_is_refused_as_what_it_is(files, given):
    params, _, paths = files
    what = {"sam": "a SAM file", "equalizer": "an equalizer file"}[given]
    with pytest.raises(ModelFileError, match=rf"{what} .*given where a model file .*is expected") as exc:
        load_model(params, paths[given])
    assert "model.width" not in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("given", ["sam", "model"])
def test_a_sam_or_model_file_given_as_an_equalizer_file_is_refused(files, tmp_path, given):
    params, model, paths = files
    ctx = Context(params, Paths(tmp_path, "test"), torch.device("cpu"))
    target = eq_method.eq_path(ctx, "VH")
    target.parent.mkdir(parents=True)
    target.write_bytes(paths[given].read_bytes())
    what = {"sam": "a SAM file", "model": "a model file"}[given]
    with pytest.raises(ModelFileError, match=rf"{what} .*given where an equalizer file .*is expected"):
        eq_method.load_equalizers(ctx, "VH", model.channels)


def test_files_of_the_right_kind_still_load(files, tmp_path):
    params, model, paths = files
    assert load_sam(paths["sam"], model).indices
    load_model(params, paths["model"])
    ctx = Context(params, Paths(tmp_path, "test"), torch.device("cpu"))
    target = eq_method.eq_path(ctx, "VH")
    target.parent.mkdir(parents=True)
    target.write_bytes(paths["equalizer"].read_bytes())
    assert list(eq_method.load_equalizers(ctx, "VH", model.channels)) == [d for d in params.domains.names if d != "VH"]
