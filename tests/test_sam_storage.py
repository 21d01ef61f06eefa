"""Tests for pipeline.sam.storage: the SAM file, its index encodings and its refusals."""
import copy
import json
import os
import re

import pytest
import torch
from torch import nn

from pipeline.sam import (SAMFileError, SAMState, attach_sam, base_fingerprint, install_sam, layer_budgets, load_sam,
                          memory_cost, sam_parameters, sam_state, save_sam)
from pipeline.sam import storage

from .sam_helpers import LAYERS, adapted, make_base, n_params, out, x  # noqa: F401 - x is a fixture


def test_save_load_install_roundtrip(tmp_path, x):
    base = make_base()
    model = adapted(base, 0.1, x=x)
    state = sam_state(model)
    install_sam(model, state)
    expected = out(model, x)
    path = tmp_path / "a.sam"
    save_sam(path, state, sparsity=0.1, allocation="linear", base_fingerprint=base_fingerprint(model),
             extra_meta={"domain": "A"})
    fresh = copy.deepcopy(base)  # plain model: install wraps its layers
    loaded = load_sam(path, fresh)
    for name in LAYERS:
        assert torch.equal(loaded.indices[name], state.indices[name])
        assert loaded.values[name].dtype == torch.float16 and torch.equal(loaded.values[name], state.values[name])
    assert loaded.meta["domain"] == "A" and loaded.meta["allocation"] == "linear"
    install_sam(fresh, loaded)
    assert torch.equal(out(fresh, x), expected)
    size = os.path.getsize(path)
    assert size <= 0.1 * 4 * n_params(base) + 4096
    cost = memory_cost(path, fresh)
    assert cost["bytes"] == size and cost["pct"] == pytest.approx(100 * size / (4 * n_params(base)))
    assert not list(tmp_path.glob("*.tmp*"))


def _spread(numel: int, k: int) -> torch.Tensor:
    """``k`` indices spread evenly over a layer of ``numel`` entries (first and last included)."""
    return torch.linspace(0, numel - 1, k).round().long() if k > 1 else torch.zeros(k, dtype=torch.long)


def _gamma_keeping(model, k: int, allocation: str) -> tuple[float, dict[str, int]]:
    """The sparsity γ = total / N at which ``allocation`` gives layer "0" of ``model`` exactly ``k`` entries,
    and the budgets of every layer there: a file whose metadata agrees with its counts."""
    n_all = sum(w.numel() for n, w in model.named_parameters() if n.endswith("weight"))
    for total in range(max(1, k), n_all + 1):
        budgets = layer_budgets(model, total / n_all, allocation)
        if budgets["0"] == k:
            return total / n_all, budgets
    raise AssertionError(k)


@pytest.mark.parametrize("indices, encoding, per_entry", [(torch.arange(0, 90000, 7), "g", 3),
                                                          (torch.arange(0, 90000, 1000), "d", 4),
                                                          (torch.tensor([0, 5, 80000, 89999]), "i", 6)])
def test_index_encodings(tmp_path, indices, encoding, per_entry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 4))
    gamma, budgets = _gamma_keeping(model, len(indices), "uniform")
    small = _spread(1200, budgets["1"])
    state = SAMState({"0": indices, "1": small},
                     {"0": torch.randn(len(indices)).half(), "1": torch.randn(len(small)).half()},
                     {"0": (300, 300), "1": (4, 300)})
    path = tmp_path / "big.sam"
    save_sam(path, state, sparsity=gamma, allocation="uniform", base_fingerprint=base_fingerprint(model))
    loaded = load_sam(path, model)
    assert json.loads(loaded.meta["layers"])[0][2] == encoding
    for n in ("0", "1"):
        assert torch.equal(loaded.indices[n], state.indices[n]) and torch.equal(loaded.values[n], state.values[n])
    assert os.path.getsize(path) <= per_entry * len(indices) + 4 * len(small) + 4096


def _rewrite(path, meta_fn=None, tensor_fn=None, resign=False):
    """Rewrite a stored SAM with altered metadata/tensors (optionally with a valid new sha256)."""
    from safetensors.torch import load, save
    data = path.read_bytes()
    meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    tensors = load(data)
    if meta_fn:
        meta_fn(meta)
    if tensor_fn:
        tensor_fn(tensors)
    if resign:
        meta["sha256"] = storage._payload_digest(meta, tensors)
    path.write_bytes(save(tensors, metadata=meta))


def test_refusals(tmp_path, x):
    base = make_base()
    model = adapted(base, 0.1, x=x)
    state, fp = sam_state(model), base_fingerprint(base)
    good = tmp_path / "good.sam"
    save_sam(good, state, sparsity=0.1, allocation="linear", base_fingerprint=fp)
    data = good.read_bytes()
    load_sam(good, base)

    other = copy.deepcopy(base)
    with torch.no_grad():
        other.enc[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(SAMFileError, match="wrong base") as err:
        load_sam(good, other)
    assert fp[:12] in str(err.value) and base_fingerprint(other)[:12] in str(err.value)

    bad = tmp_path / "bad.sam"
    for cut in (5, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(SAMFileError, match="truncated or unreadable"):
            load_sam(bad, base)
    flipped = bytearray(data)
    flipped[-3] ^= 0x40
    bad.write_bytes(bytes(flipped))
    with pytest.raises(SAMFileError, match="altered"):
        load_sam(bad, base)
    bad.write_bytes(data)
    _rewrite(bad, meta_fn=lambda m: m.update(sparsity="0.2"))
    with pytest.raises(SAMFileError, match="altered"):
        load_sam(bad, base)

    # a dense-ish trained mask is all u8gap; at γ = 0.2 % the few far-apart entries of enc.2/dec.0 are uint16
    budgets = layer_budgets(base, 0.002, "linear")
    sparse_idx = {n: _spread(int(torch.Size(state.shapes[n]).numel()), k) for n, k in budgets.items()}
    sparse = SAMState(sparse_idx, {n: torch.ones(len(i)).half() for n, i in sparse_idx.items()}, state.shapes)
    sparse_file = tmp_path / "sparse.sam"
    save_sam(sparse_file, sparse, sparsity=0.002, allocation="linear", base_fingerprint=fp)
    sparse_data = sparse_file.read_bytes()
    encodings = {e[0]: e[2] for e in json.loads(load_sam(sparse_file, base).meta["layers"])}
    assert encodings == {"enc.0": "g", "enc.2": "a", "mix": "g", "dec.0": "a", "dec.2": "g"}

    def u16(fn):
        return lambda t: t.update(indices_u16=fn(t["indices_u16"].to(torch.int64)).to(torch.uint16))
    for fn, msg in ((lambda i: torch.cat([i[:2].flip(0), i[2:]]), "not strictly increasing"),
                    (lambda i: torch.cat([i[:-1], i.new_tensor([60000])]), "out of range")):
        bad.write_bytes(sparse_data)
        _rewrite(bad, tensor_fn=u16(fn), resign=True)
        with pytest.raises(SAMFileError, match=msg):
            load_sam(bad, base)
    bad.write_bytes(data)  # u8gap: a last gap that runs past the layer's end
    _rewrite(bad, tensor_fn=lambda t: t.update(indices_u8=torch.cat(
        [t["indices_u8"][:-1], torch.full((9,), 255, dtype=torch.uint8), t["indices_u8"][-1:]])),
        meta_fn=lambda m: m.update(layers=json.dumps([e[:4] + [e[4] + 9 * (e[0] == "dec.2")]
                                                      for e in json.loads(m["layers"])])), resign=True)
    with pytest.raises(SAMFileError, match="layer dec.2: indices out of range"):
        load_sam(bad, base)

    renamed = SAMState(*({("enc.9" if k == "enc.0" else k): v for k, v in d.items()}
                         for d in (state.indices, state.values, state.shapes)))
    save_sam(bad, renamed, sparsity=0.1, allocation="linear", base_fingerprint=fp)
    with pytest.raises(SAMFileError, match="layer names"):
        load_sam(bad, base)
    bad.write_bytes(data)  # mix's table row says (32, 8): a layer the model does not have
    _rewrite(bad, meta_fn=lambda m: m.update(layers=json.dumps([e[:3] + [[32, 8] if e[0] == "mix" else e[3]] + e[4:]
                                                                for e in json.loads(m["layers"])])), resign=True)
    with pytest.raises(SAMFileError, match=r"layer mix: shape \(32, 8\) != model's \(16, 16\)"):
        load_sam(bad, base)

    # a failing save never replaces a good file
    broken = SAMState(state.indices, {**state.values, "mix": state.values["mix"].float() * float("inf")}, state.shapes)
    with pytest.raises(ValueError):
        save_sam(good, broken, sparsity=0.1, allocation="linear", base_fingerprint=fp)
    assert good.read_bytes() == data and not list(tmp_path.glob("*.tmp*"))


# ----------------------------------------------------------------------------- u8gap index encoding
@pytest.mark.parametrize("indices, stream", [
    ([0], [0]),
    ([254], [254]),
    ([255], [255, 0]),
    ([509], [255, 254]),
    ([510], [255, 255, 0]),
    ([0, 1, 2, 3], [0, 0, 0, 0]),                        # index 0, consecutive indices
    ([3, 257, 512, 768, 1278, 1789], [3, 253, 254, 255, 0, 255, 254, 255, 255, 0]),  # gaps 254 .. 511
    ([89999], [255] * 352 + [239]),                      # single entry: the last index of a big layer
    ([0, 89999], [0] + [255] * 352 + [238]),
    ([], []),
])
def test_u8gap_roundtrip(indices, stream):
    idx = torch.tensor(indices, dtype=torch.long)
    raw = storage._u8gap_encode(idx)
    assert raw.dtype == torch.uint8 and raw.tolist() == stream
    assert storage._u8gap_size(idx) == len(stream)
    assert torch.equal(storage._u8gap_decode(raw, len(indices)), idx)


def test_u8gap_roundtrip_random():
    g = torch.Generator().manual_seed(0)
    for numel, k in ((90000, 1), (90000, 50), (90000, 900), (25600, 195), (300, 300), (70000, 69999)):
        idx = torch.randperm(numel, generator=g)[:k].sort().values
        raw = storage._u8gap_encode(idx)
        assert len(raw) == storage._u8gap_size(idx) <= k + (numel - k) // 255
        assert torch.equal(storage._u8gap_decode(raw, k), idx)


def test_u8gap_file_roundtrip(tmp_path):
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 4))
    g = torch.Generator().manual_seed(0)
    edge = torch.tensor([0, 1, 2, 257, 512, 768, 1278, 1789, 89999])  # gaps 1, 255, 255, 256, 510, 511, huge
    dense = torch.cat([edge, torch.randint(2000, 89000, (3000,), generator=g)]).unique()
    gamma, budgets = _gamma_keeping(model, len(dense), "uniform")
    small = _spread(1200, budgets["1"])  # gaps < 255: one byte each
    state = SAMState({"0": dense, "1": small}, {"0": torch.randn(len(dense)).half(),
                     "1": torch.ones(len(small)).half()}, {"0": (300, 300), "1": (4, 300)})
    path = tmp_path / "g.sam"
    save_sam(path, state, sparsity=gamma, allocation="uniform", base_fingerprint=base_fingerprint(model))
    loaded = load_sam(path, model)
    rows = json.loads(loaded.meta["layers"])
    assert [r[2] for r in rows] == ["g", "g"] and rows[0][4] == storage._u8gap_size(dense)
    assert rows[1][4] == len(small) > 1
    for n in ("0", "1"):
        assert torch.equal(loaded.indices[n], state.indices[n]) and torch.equal(loaded.values[n], state.values[n])
    assert os.path.getsize(path) <= 2 * len(dense) + storage._u8gap_size(dense) + 3 * len(small) + 1024


def test_encoder_picks_smallest():
    g = torch.Generator().manual_seed(0)
    dense = torch.randperm(25600, generator=g)[:1280].sort().values      # 5 %: ~1 byte per index
    enc, raw = storage._encode(dense, 25600)
    assert enc == "g" and raw.dtype == torch.uint8 and len(raw) < 1.1 * len(dense)
    sparse = torch.randperm(25600, generator=g)[:10].sort().values        # gaps ~2500: 2 bytes beat ~11
    enc, raw = storage._encode(sparse, 25600)
    assert enc == "a" and raw.dtype == torch.uint16 and torch.equal(raw.long(), sparse)
    big = torch.arange(0, 200000, 3000)                                   # numel > 65536, gaps < 65536
    enc, raw = storage._encode(big, 200000)
    assert enc == "d" and raw.dtype == torch.uint16 and torch.equal(raw.long().cumsum(0), big)
    far = torch.tensor([5, 100000, 199999])
    assert storage._encode(far, 200000)[0] == "i"
    assert storage._encode(torch.arange(0, 25600, 255), 25600)[0] == "g"      # d = 254: one byte each
    assert storage._encode(torch.arange(0, 25600, 511), 25600)[0] == "a"      # d = 510: three bytes each
    assert storage._encode(torch.tensor([255, 511]), 1000)[0] == "g"          # 4 bytes either way: tie -> u8gap


@pytest.mark.parametrize("stream, count", [([0, 5], 3),          # too few terminators
                                           ([0, 5, 255], 2),     # trailing 255
                                           ([0, 255], 1),        # truncated inside the last gap
                                           ([0, 5, 7], 2),       # too many terminators
                                           ([255], 0)])
def test_u8gap_decode_refuses(stream, count):
    with pytest.raises(ValueError, match="malformed or truncated u8gap"):
        storage._u8gap_decode(torch.tensor(stream, dtype=torch.uint8), count)


@pytest.mark.parametrize("edit", ["drop_terminator", "trailing_255", "last_to_255"])
def test_malformed_u8_stream_refused(tmp_path, x, edit):
    base = make_base()
    state, fp = sam_state(adapted(base, 0.1, x=x)), base_fingerprint(base)
    path = tmp_path / "m.sam"
    save_sam(path, state, sparsity=0.1, allocation="linear", base_fingerprint=fp)
    rows = json.loads(load_sam(path, base).meta["layers"])
    assert all(r[2] == "g" for r in rows)
    start = sum(r[4] for r in rows[:2])  # layer "mix" (third) starts here
    end = start + rows[2][4]

    def tensors(t):
        u8 = t["indices_u8"]
        if edit == "drop_terminator":
            u8 = torch.cat([u8[:end - 1], u8[end:]])
        elif edit == "trailing_255":
            u8 = torch.cat([u8[:end], u8.new_tensor([255]), u8[end:]])
        else:
            u8 = u8.clone()
            u8[end - 1] = 255
        t["indices_u8"] = u8

    def meta(m):
        delta = {"drop_terminator": -1, "trailing_255": 1, "last_to_255": 0}[edit]
        m["layers"] = json.dumps([r[:4] + [r[4] + delta * (r[0] == "mix")] for r in rows], separators=(",", ":"))

    _rewrite(path, meta_fn=meta, tensor_fn=tensors, resign=True)
    with pytest.raises(SAMFileError, match="layer mix: malformed or truncated u8gap index stream") as err:
        load_sam(path, base)
    assert "\n" not in str(err.value)


def test_file_below_gamma_on_small_model(tmp_path):
    """A ~144k-parameter model: the stored SAM stays below γ of its fp32 bytes at γ = 1 %."""
    from pipeline.model import SCModel
    torch.manual_seed(0)
    base = SCModel(width=16)
    n = n_params(base)
    assert n >= 100_000
    fp = base_fingerprint(base)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for gamma in (0.0003, 0.001, 0.003, 0.01):
        model = attach_sam(copy.deepcopy(base), gamma)
        scores, values = sam_parameters(model)
        opt = torch.optim.Adam([{"params": scores, "lr": 1.0}, {"params": values, "lr": 3e-3}])
        for _ in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(model(images), images).backward()
            opt.step()
        state = sam_state(model)
        path = tmp_path / f"{gamma}.sam"
        save_sam(path, state, sparsity=gamma, allocation="linear", base_fingerprint=fp,
                 extra_meta={"domain": "A"})
        size = os.path.getsize(path)
        assert size <= gamma * 4 * n + 4096, gamma
        assert int.from_bytes(path.read_bytes()[:8], "little") < 1024  # the header stays small
        loaded = load_sam(path, base)
        assert all(torch.equal(loaded.indices[k], state.indices[k]) for k in state.indices)
        if gamma == 0.01:
            assert memory_cost(path, base)["pct"] < 1.0



# ----------------------------------------------------------------------------- sense checks on load
@pytest.fixture
def stored(tmp_path, x):
    """The base, and two well-formed files: a trained 1 % SAM (all u8gap) and a 0.2 % one whose
    far-apart entries put enc.2 and dec.0 in the uint16 stream (enc.2 first)."""
    base = make_base()
    fp = base_fingerprint(base)
    trained = tmp_path / "trained.sam"
    save_sam(trained, sam_state(adapted(base, 0.01, x=x)), sparsity=0.01, allocation="linear", base_fingerprint=fp)
    budgets = layer_budgets(base, 0.002, "linear")
    idx = {n: _spread(int(torch.Size(s).numel()), budgets[n]) for n, s in sam_state(attach_sam(
        copy.deepcopy(base), 0.002)).shapes.items()}
    sparse = tmp_path / "sparse.sam"
    save_sam(sparse, SAMState(idx, {n: torch.ones(len(i)).half() for n, i in idx.items()},
                              {n: tuple(m.weight.shape) for n, m in ((n, base.get_submodule(n)) for n in idx)}),
             sparsity=0.002, allocation="linear", base_fingerprint=fp)
    assert {e[0]: e[2] for e in json.loads(load_sam(sparse, base).meta["layers"])}["enc.2"] == "a"
    return base, {"trained": trained, "sparse": sparse}


def _values(i, v):
    def edit(t):
        t["values"] = t["values"].clone()
        t["values"][i] = v
    return edit


def _u16(fn):
    return lambda t: t.update(indices_u16=fn(t["indices_u16"].to(torch.int64)).to(torch.uint16))


def _repeat_first(i):
    i = i.clone()
    i[1] = i[0]
    return i


SENSE = {  # case: (file, metadata edit, tensor edit, what the one line must say after the file's name)
    "nan": ("trained", None, _values(2, float("nan")), r"values of layer enc\.0 not finite \(1 NaN, 0 infinite\)"),
    "inf": ("trained", None, _values(-1, float("inf")), r"values of layer dec\.2 not finite \(0 NaN, 1 infinite\)"),
    "-inf": ("trained", None, _values(-1, float("-inf")), r"values of layer dec\.2 not finite \(0 NaN, 1 infinite\)"),
    "gamma": ("trained", {"sparsity": "0.5"}, None,
              r"metadata sparsity 0\.5 gives a budget of round\(γN\) = 1944 of N = 3888 entries, "
              r"the file keeps 39 \(γ = 0\.01003\)"),
    "gamma_nan": ("trained", {"sparsity": "nan"}, None, r"metadata sparsity 'nan' is not a number in \(0, 1\]"),
    "gamma_zero": ("trained", {"sparsity": "0"}, None, r"metadata sparsity '0' is not a number in \(0, 1\]"),
    "gamma_text": ("trained", {"sparsity": "one percent"}, None,
                   r"metadata sparsity 'one percent' is not a number in \(0, 1\]"),
    "allocation": ("trained", {"allocation": "uniform"}, None,
                   r"metadata allocation 'uniform' gives layer enc\.0 2 entries at sparsity 0\.01, the file keeps 5 "
                   r"\(\d layers differ\)"),
    "allocation_unknown": ("trained", {"allocation": "by eye"}, None,
                           r"metadata allocation 'by eye' is not one of linear, uniform, product"),
    "out_of_range": ("sparse", None, _u16(lambda i: torch.cat([i[:-1], i.new_tensor([60000])])),
                     r"layer dec\.0: indices out of range \[0, 2048\) of the layer's weight \(index 60000\)"),
    "repeated": ("sparse", None, _u16(_repeat_first), r"layer enc\.2: indices repeated \(index 0 kept 2 times\)"),
}


@pytest.mark.parametrize("case", SENSE)
def test_a_file_with_a_valid_hash_but_no_sense_is_refused_in_one_line(stored, case):
    base, files = stored
    which, meta, tensors, message = SENSE[case]
    path = files[which]
    load_sam(path, base)  # well-formed before the edit
    _rewrite(path, meta_fn=meta and (lambda m: m.update(meta)), tensor_fn=tensors, resign=True)
    with pytest.raises(SAMFileError) as err:
        load_sam(path, base)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text, text
    assert re.fullmatch(message, text[len(f"{path}: "):]), text


def test_the_budget_cases_differ_from_the_stored_counts(stored):
    """What makes the gamma and allocation cases real: the rule's counts at the edited metadata are not the file's."""
    base, files = stored
    counts = {e[0]: e[1] for e in json.loads(load_sam(files["trained"], base).meta["layers"])}
    assert counts == layer_budgets(base, 0.01, "linear") != layer_budgets(base, 0.01, "uniform")
    assert sum(counts.values()) == round(0.01 * 3888) == 39


def test_save_refuses_counts_its_metadata_does_not_give(stored, tmp_path):
    base, files = stored
    state = load_sam(files["trained"], base)
    data = files["trained"].read_bytes()
    with pytest.raises(ValueError, match=r"metadata sparsity 0\.02 gives a budget of round\(γN\) = 78"):
        save_sam(files["trained"], state, sparsity=0.02, allocation="linear", base_fingerprint=base_fingerprint(base))
    with pytest.raises(ValueError, match=r"metadata allocation 'product' gives layer"):
        save_sam(files["trained"], state, sparsity=0.01, allocation="product", base_fingerprint=base_fingerprint(base))
    assert files["trained"].read_bytes() == data and not list(tmp_path.glob("*.tmp*"))


def test_a_delta_topk_file_is_a_sam_file_and_loads_as_one(tmp_path):
    """delta_topk stores its top-k deltas with save_sam: the same format, the same checks, the same tensors."""
    from pipeline.methods import delta_topk
    base, tuned = make_base(), make_base(seed=1)
    state = delta_topk.topk_delta(base, tuned, layer_budgets(base, 0.05, "product"))
    state.values = {n: v.half() for n, v in state.values.items()}
    path = tmp_path / "d.safetensors"
    save_sam(path, state, sparsity=0.05, allocation="product", base_fingerprint=base_fingerprint(base),
             extra_meta={"domain": "VA", "method": delta_topk.NAME})
    from pipeline.storage import file_kind
    assert file_kind(path) == "sam"
    loaded = load_sam(path, base)
    assert loaded.meta["method"] == "delta_topk"
    for n in state.indices:
        assert torch.equal(loaded.indices[n], state.indices[n]) and torch.equal(loaded.values[n], state.values[n])
    _rewrite(path, meta_fn=lambda m: m.update(allocation="linear"), resign=True)
    with pytest.raises(SAMFileError, match=r"metadata allocation 'linear' gives layer"):
        load_sam(path, base)
