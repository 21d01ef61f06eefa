"""A file of the wrong kind is refused with a message saying what it is and what was expected.

The pipeline's safetensors files are told apart by their headers alone: a SAM file's metadata
``format: sam/2``, an equalizer file's ``receiver`` metadata, a model file's state-dict names
(``encoder.*``, ``decoder.*``), an adapter's metadata ``kind`` (LoRA, BitFit). The files here come
from the pipeline's own writers. A file of the right kind is then checked for sense: a NaN or an
infinity in a model, equalizer, LoRA or BitFit file, or LoRA factors other than the metadata's ranks
give, is refused in one line naming the file and the tensor (SAM files: tests/test_sam_storage.py).
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
from pipeline.methods import bitfit, lora
from pipeline.storage import safetensors_bytes, safetensors_header, save_safetensors
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


@pytest.fixture
def adapters(files, tmp_path):
    """A LoRA (rank 1 on the first two layers) and a BitFit file for the base model, as the methods write them."""
    _, model, paths = files
    fp = base_fingerprint(model)
    ranks = dict.fromkeys(list(lora.adaptable_layers(model))[:2], 1)
    torch.manual_seed(0)
    adapted = lora.attach_lora(copy.deepcopy(model), ranks)
    with torch.no_grad():
        for layer in lora.lora_layers(adapted).values():
            for factor in lora._factors(layer):
                factor.normal_()
    lora.save_lora(tmp_path / "lora.safetensors", adapted, ranks, base_fp=fp, sparsity=SPARSITY, domain="VA")
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for n in bitfit.bitfit_names(tuned):
            dict(tuned.named_parameters())[n].add_(0.01)
    bitfit.save_bitfit(tmp_path / "bitfit.safetensors", tuned, model, domain="VA")
    return {**paths, "lora": tmp_path / "lora.safetensors", "bitfit": tmp_path / "bitfit.safetensors"}


def _spoil(path, edit, meta_edit=None):
    """Rewrite ``path`` with ``edit(tensors)`` applied (and ``meta_edit(metadata)``): a well-formed file holding it.
    Returns the name of the first tensor ``edit`` changed."""
    from safetensors.torch import load
    tensors = load(path.read_bytes())
    meta = dict(safetensors_header(path).get("__metadata__") or {})
    before = {k: v.clone() for k, v in tensors.items()}
    edit(tensors)
    if meta_edit:
        meta_edit(meta)
    path.write_bytes(safetensors_bytes(tensors, meta))
    return next((k for k in sorted(tensors) if not torch.equal(tensors[k], before.get(k, tensors[k]))), None)


def _first_to(value):
    def edit(tensors):
        name = sorted(n for n, t in tensors.items() if t.is_floating_point())[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value
    return edit


def _load(kind, params, model, path, tmp_path):
    """Load ``path`` with the loader of ``kind``; (its error type, a callable)."""
    if kind == "model":
        return ModelFileError, lambda: load_model(params, path)
    if kind == "equalizer":
        ctx = Context(params, Paths(tmp_path, "test"), torch.device("cpu"))
        return ModelFileError, lambda: eq_method.load_equalizers(ctx, "VH", model.channels, path=path)
    if kind == "lora":
        return lora.LoRAFileError, lambda: lora.load_lora(path, model)
    return bitfit.BitFitFileError, lambda: bitfit.load_bitfit(path, model)


NOUNS = {"model": "weight", "equalizer": "weight", "lora": "factor", "bitfit": "delta"}


@pytest.mark.parametrize("value, counts", [(float("nan"), "1 NaN, 0 infinite"), (float("inf"), "0 NaN, 1 infinite")])
@pytest.mark.parametrize("kind", ["model", "equalizer", "lora", "bitfit"])
def test_a_non_finite_entry_is_refused_in_one_line_naming_the_tensor(files, adapters, tmp_path, kind, value, counts):
    params, model, _ = files
    path = adapters[kind]
    error, load = _load(kind, params, model, path, tmp_path)
    load()  # well-formed before the edit
    name = _spoil(path, _first_to(value))
    with pytest.raises(error) as exc:
        load()
    assert str(exc.value) == f"{path}: {NOUNS[kind]} {name} not finite ({counts})"


def test_lora_factors_other_than_the_metadata_ranks_are_refused(files, adapters):
    _, model, _ = files
    path = adapters["lora"]
    ranks, _ = lora.load_lora(path, model)
    first = next(n for n, r in ranks.items() if r)
    _spoil(path, lambda t: None, lambda m: m.update(ranks=m["ranks"].replace(f'"{first}":1', f'"{first}":2')))
    with pytest.raises(lora.LoRAFileError) as exc:
        lora.load_lora(path, model)
    a_shape = tuple(dict(lora.adaptable_layers(model))[first].weight.shape)
    assert str(exc.value) == (f"{path}: tensor {first}.lora_A has shape (1, {a_shape[1]}, {a_shape[2]}, {a_shape[3]}), "
                              f"expected (2, {a_shape[1]}, {a_shape[2]}, {a_shape[3]}) (the fp16 factors of the "
                              f"metadata's ranks)")
    _spoil(path, lambda t: [t.pop(k) for k in [k for k in t if k.startswith(first + ".")]],
           lambda m: m.update(ranks=m["ranks"].replace(f'"{first}":2', f'"{first}":1')))
    with pytest.raises(lora.LoRAFileError, match=rf"tensors missing: {first}\.lora_A, {first}\.lora_B \(the fp16"):
        lora.load_lora(path, model)


def test_a_bitfit_delta_of_another_shape_is_refused(files, adapters):
    _, model, _ = files
    path = adapters["bitfit"]
    first = bitfit.bitfit_names(model)[0]
    _spoil(path, lambda t: t.update({first: t[first][:-1].clone()}))
    with pytest.raises(bitfit.BitFitFileError,
                       match=rf"tensor {first} has shape \(\d+,\), expected \(\d+,\) \(one fp16"):
        bitfit.load_bitfit(path, model)


def test_an_equalizer_file_of_other_sizes_or_truncated_is_refused_in_one_line(files, tmp_path, tiny_params):
    params, model, paths = files
    path = paths["equalizer"]
    ctx = Context(params, Paths(tmp_path, "test"), torch.device("cpu"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or unreadable equalizer file") as exc:
        eq_method.load_equalizers(ctx, "VH", model.channels, path=path)
    assert "\n" not in str(exc.value)
    path.write_bytes(data)
    wider = copy.deepcopy(tiny_params)
    wider["equalizer"]["hidden"] += 1
    ctx = Context(parse(wider), Paths(tmp_path, "test"), torch.device("cpu"))
    with pytest.raises(ModelFileError, match=r"partner \w+: does not match equalizer.hidden/blocks") as exc:
        eq_method.load_equalizers(ctx, "VH", model.channels, path=path)
    assert "\n" not in str(exc.value)


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


def test_files_of_the_right_kind_still_load(files, adapters, tmp_path):
    from safetensors.torch import load_file
    params, model, paths = files
    assert load_sam(paths["sam"], model).indices
    loaded = load_model(params, paths["model"]).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    for kind, tensors in (("lora", lora.load_lora(adapters["lora"], model)[1]),
                          ("bitfit", bitfit.load_bitfit(adapters["bitfit"], model))):
        stored = load_file(str(adapters[kind]))
        assert stored and set(tensors) == set(stored) and all(torch.equal(tensors[k], stored[k]) for k in stored), kind
    ctx = Context(params, Paths(tmp_path, "test"), torch.device("cpu"))
    target = eq_method.eq_path(ctx, "VH")
    target.parent.mkdir(parents=True)
    target.write_bytes(paths["equalizer"].read_bytes())
    assert list(eq_method.load_equalizers(ctx, "VH", model.channels)) == [d for d in params.domains.names if d != "VH"]
