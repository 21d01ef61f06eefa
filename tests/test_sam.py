"""Tests for pipeline.sam: the sparse additive "zero-forget" adapter."""
import copy
import json
import os

import pytest
import torch
from torch import nn

from pipeline import sam
from pipeline.sam import (SAMFileError, SAMState, allocate_budget, attach_sam, base_fingerprint,
                          install_sam, load_sam, memory_cost, sam_layers, sam_parameters, sam_state,
                          save_sam, set_sam_enabled)


class TinyAE(nn.Module):
    """Conv2d -> PReLU -> Conv2d/2 -> Linear (over channels) -> ConvTranspose2d -> PReLU -> Conv2d."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.mix = nn.Linear(16, 16)
        self.dec = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.PReLU(),
                                 nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        h = self.enc(x)
        return self.dec(self.mix(h.movedim(1, -1)).movedim(-1, 1))


LAYERS = ["enc.0", "enc.2", "mix", "dec.0", "dec.2"]
N_ADAPT = 216 + 1152 + 256 + 2048 + 216


def make_base(seed=0):
    torch.manual_seed(seed)
    return TinyAE()


@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def train(model, x, steps=5, target=None, lr_values=1e-3):
    target = x.flip(-1) if target is None else target
    scores, values = sam_parameters(model)
    opt = torch.optim.Adam([{"params": scores, "lr": 1.0}, {"params": values, "lr": lr_values}])
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()


def adapted(base, sparsity=0.1, steps=5, x=None, **kw):
    model = attach_sam(copy.deepcopy(base), sparsity, **kw)
    if steps:
        train(model, x if x is not None else torch.randn(2, 3, 8, 8), steps)
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def out(model, x):
    return model(x)


# ----------------------------------------------------------------------------- budget
def layer_dims(model):
    return {n: (m.weight.numel(), *nn.init._calculate_fan_in_and_fan_out(m.weight))
            for n, m in sam._layers(model).items()}


@pytest.mark.parametrize("allocation", sam.ALLOCATIONS)
@pytest.mark.parametrize("gamma", [0.003, 0.01, 0.05, 0.3, 0.9, 1.0])
def test_budget_sums_exactly(allocation, gamma):
    base = make_base()
    budget = allocate_budget(layer_dims(base), gamma, allocation)
    assert sum(budget.values()) == round(gamma * N_ADAPT)
    model = attach_sam(base, gamma, allocation)
    for name, layer in sam_layers(model).items():
        assert layer.k == budget[name] <= layer.base.weight.numel()
        assert int(layer.mask().sum()) == budget[name]
    assert sam_state(model).kept() == round(gamma * N_ADAPT)


def test_budget_rules_and_capping():
    dims = layer_dims(make_base())
    lin, uni, prod = (allocate_budget(dims, 0.1, a) for a in sam.ALLOCATIONS)
    assert lin != uni and lin != prod
    for name, (numel, _, _) in dims.items():  # uniform: the same ratio everywhere, up to rounding
        assert abs(uni[name] - 0.1 * numel) < 1
    # linear is proportional to d_in + d_out: mix (16+16) vs enc.2 (72+144), up to rounding
    assert abs(lin["enc.2"] / lin["mix"] - 216 / 32) < 0.5
    capped = allocate_budget({"big": (10000, 100, 100), "tiny": (4, 2, 2)}, 0.5, "linear")
    assert capped == {"big": 4998, "tiny": 4}
    full = allocate_budget(dims, 0.9, "linear")  # enc.0/dec.2 get shares above their numel
    assert full["enc.0"] == 216 and full["dec.2"] == 216 and sum(full.values()) == round(0.9 * N_ADAPT)
    with pytest.raises(ValueError):
        allocate_budget(dims, 1e-6, "linear")
    with pytest.raises(ValueError):
        allocate_budget(dims, 0.1, "random")


# ----------------------------------------------------------------------------- zero forgetting
@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.5])
def test_disabled_is_base_bit_for_bit(gamma, x):
    base = make_base()
    model = adapted(base, gamma, x=x)
    ref = out(base, x)
    for phase in ("trained", "installed"):
        set_sam_enabled(model, False)
        for name, layer in sam_layers(model).items():
            assert layer.effective_weight() is layer.base.weight
            assert torch.equal(layer.base.weight, base.get_submodule(name).weight)
        assert torch.equal(out(model, x), ref), phase
        set_sam_enabled(model, True)
        assert not torch.equal(out(model, x), ref), phase
        install_sam(model, sam_state(model))


def test_training_changes_only_scores_and_values(x):
    base = make_base()
    model = attach_sam(copy.deepcopy(base), 0.1)
    scores0 = [p.clone() for p in sam_parameters(model)[0]]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in LAYERS for k in ("scores", "values")}
    train(model, x, steps=6)
    for name, t in sam._base_tensors(model).items():
        assert torch.equal(t, sam._base_tensors(base)[name]), name
    assert all(not torch.equal(a, b) for a, b in zip(scores0, sam_parameters(model)[0]))
    assert all(v.abs().sum() > 0 for v in sam_parameters(model)[1])
    assert base_fingerprint(model) == base_fingerprint(base)


def test_ste_gradients_reach_scores(x):
    model = attach_sam(make_base(), 0.1)
    nn.functional.mse_loss(model(x), x).backward()
    for layer in sam_layers(model).values():  # values = 0: scores get no signal yet, values all do
        assert layer.scores.grad.abs().sum() == 0
        assert (layer.values.grad[~layer.mask()] != 0).any()
    model.zero_grad()
    with torch.no_grad():
        for v in sam_parameters(model)[1]:
            v.normal_(0, 1e-2)
    nn.functional.mse_loss(model(x), x).backward()
    for layer in sam_layers(model).values():
        outside = ~layer.mask()
        assert (layer.scores.grad[outside] != 0).any() and (layer.values.grad[outside] != 0).any()
        assert torch.equal(layer.scores.grad, layer.values.grad * layer.values.detach())


def test_mask_moves_with_adam(x):
    model = attach_sam(make_base(), 0.05)
    before = {n: l.mask() for n, l in sam_layers(model).items()}
    train(model, x, steps=8, lr_values=1e-4)
    changed = kept = 0
    for name, layer in sam_layers(model).items():
        now = layer.mask()
        assert int(now.sum()) == layer.k
        changed += int((before[name] & ~now).sum())
        kept += layer.k
    assert changed / kept > 0


def test_reference_dense_weights(x):
    base = make_base()
    model = adapted(base, 0.2, x=x)
    ref = copy.deepcopy(base)
    with torch.no_grad():  # training mode: W0 + mask * values
        for name, layer in sam_layers(model).items():
            dense = base.get_submodule(name).weight + layer.mask() * layer.values
            ref.get_submodule(name).weight.copy_(dense)
    assert torch.allclose(out(model, x), out(ref, x), rtol=0, atol=1e-6)
    state = sam_state(model)
    install_sam(model, state)
    with torch.no_grad():  # stored: W0 + scatter(indices, values)
        for name, w in ((n, ref.get_submodule(n).weight) for n in LAYERS):
            w0 = base.get_submodule(name).weight
            delta = torch.zeros(w0.numel()).index_put_((state.indices[name],), state.values[name].float())
            w.copy_(w0 + delta.view_as(w0))
            assert torch.equal(sam_layers(model)[name].effective_weight(), w)
    assert torch.equal(out(model, x), out(ref, x))


# ----------------------------------------------------------------------------- storage
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


@pytest.mark.parametrize("indices, encoding, per_entry", [(torch.arange(0, 90000, 7), "g", 3),
                                                          (torch.arange(0, 90000, 1000), "d", 4),
                                                          (torch.tensor([0, 5, 80000, 89999]), "i", 6)])
def test_index_encodings(tmp_path, indices, encoding, per_entry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 4))
    small = torch.tensor([3, 17, 1199])
    state = SAMState({"0": indices, "1": small},
                     {"0": torch.randn(len(indices)).half(), "1": torch.randn(3).half()},
                     {"0": (300, 300), "1": (4, 300)})
    path = tmp_path / "big.sam"
    save_sam(path, state, sparsity=0.1, allocation="uniform", base_fingerprint=base_fingerprint(model))
    loaded = load_sam(path, model)
    assert [e[2] for e in json.loads(loaded.meta["layers"])] == [encoding, "a"]
    for n in ("0", "1"):
        assert torch.equal(loaded.indices[n], state.indices[n]) and torch.equal(loaded.values[n], state.values[n])
    assert os.path.getsize(path) <= per_entry * len(indices) + 4 * 3 + 4096


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
        meta["sha256"] = sam._payload_digest(meta, tensors)
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

    # a dense-ish trained mask is all u8gap; a few far-apart entries in enc.2/dec.0 make those uint16
    sparse_idx = {"enc.2": torch.tensor([0, 600, 1151]), "dec.0": torch.tensor([0, 1000, 2047])}
    sparse = SAMState({**state.indices, **sparse_idx},
                      {**state.values, **{n: torch.ones(3).half() for n in sparse_idx}}, state.shapes)
    sparse_file = tmp_path / "sparse.sam"
    save_sam(sparse_file, sparse, sparsity=0.1, allocation="linear", base_fingerprint=fp)
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
    reshaped = SAMState(state.indices, state.values, {**state.shapes, "mix": (32, 8)})
    save_sam(bad, reshaped, sparsity=0.1, allocation="linear", base_fingerprint=fp)
    with pytest.raises(SAMFileError, match="shape"):
        load_sam(bad, base)

    # a failing save never replaces a good file
    broken = SAMState(state.indices, {**state.values, "mix": state.values["mix"].float() * float("inf")}, state.shapes)
    with pytest.raises(ValueError):
        save_sam(good, broken, sparsity=0.1, allocation="linear", base_fingerprint=fp)
    assert good.read_bytes() == data and not list(tmp_path.glob("*.tmp*"))


def test_swap_states(x):
    base = make_base()
    model = attach_sam(copy.deepcopy(base), 0.1)
    train(model, x, 5, target=x.flip(-1))
    a = sam_state(model)
    train(model, x, 5, target=-x)
    b = sam_state(model)
    server = copy.deepcopy(base)
    w0 = dict(sam._base_tensors(server))
    install_sam(server, a)
    out_a = out(server, x)
    install_sam(server, b)
    out_b = out(server, x)
    assert not torch.equal(out_a, out_b)
    for state, expected in ((a, out_a), (b, out_b), (a, out_a)):
        install_sam(server, state)
        assert torch.equal(out(server, x), expected)
    now = sam._base_tensors(server)
    assert all(now[n] is t and torch.equal(t, sam._base_tensors(base)[n]) for n, t in w0.items())
    set_sam_enabled(server, False)
    assert torch.equal(out(server, x), out(base, x))


def test_fingerprint_ignores_wrapper():
    base = make_base()
    fp = base_fingerprint(base)
    model = adapted(base, 0.1)
    assert base_fingerprint(model) == fp
    install_sam(model, sam_state(model))
    assert base_fingerprint(model) == fp
    assert sorted(sam._base_tensors(model)) == sorted(dict(base.named_parameters()))
    assert base_fingerprint(make_base(seed=1)) != fp


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
    raw = sam._u8gap_encode(idx)
    assert raw.dtype == torch.uint8 and raw.tolist() == stream
    assert sam._u8gap_size(idx) == len(stream)
    assert torch.equal(sam._u8gap_decode(raw, len(indices)), idx)


def test_u8gap_roundtrip_random():
    g = torch.Generator().manual_seed(0)
    for numel, k in ((90000, 1), (90000, 50), (90000, 900), (25600, 195), (300, 300), (70000, 69999)):
        idx = torch.randperm(numel, generator=g)[:k].sort().values
        raw = sam._u8gap_encode(idx)
        assert len(raw) == sam._u8gap_size(idx) <= k + (numel - k) // 255
        assert torch.equal(sam._u8gap_decode(raw, k), idx)


def test_u8gap_file_roundtrip(tmp_path):
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 4))
    g = torch.Generator().manual_seed(0)
    edge = torch.tensor([0, 1, 2, 257, 512, 768, 1278, 1789, 89999])  # gaps 1, 255, 255, 256, 510, 511, huge
    dense = torch.cat([edge, torch.randint(2000, 89000, (3000,), generator=g)]).unique()
    state = SAMState({"0": dense, "1": torch.tensor([7])}, {"0": torch.randn(len(dense)).half(),
                     "1": torch.ones(1).half()}, {"0": (300, 300), "1": (4, 300)})
    path = tmp_path / "g.sam"
    save_sam(path, state, sparsity=0.03, allocation="uniform", base_fingerprint=base_fingerprint(model))
    loaded = load_sam(path, model)
    rows = json.loads(loaded.meta["layers"])
    assert [r[2] for r in rows] == ["g", "g"] and rows[0][4] == sam._u8gap_size(dense) and rows[1][4] == 1
    for n in ("0", "1"):
        assert torch.equal(loaded.indices[n], state.indices[n]) and torch.equal(loaded.values[n], state.values[n])
    assert os.path.getsize(path) <= 2 * len(dense) + sam._u8gap_size(dense) + 3 + 1024


def test_encoder_picks_smallest():
    g = torch.Generator().manual_seed(0)
    dense = torch.randperm(25600, generator=g)[:1280].sort().values      # 5 %: ~1 byte per index
    enc, raw = sam._encode(dense, 25600)
    assert enc == "g" and raw.dtype == torch.uint8 and len(raw) < 1.1 * len(dense)
    sparse = torch.randperm(25600, generator=g)[:10].sort().values        # gaps ~2500: 2 bytes beat ~11
    enc, raw = sam._encode(sparse, 25600)
    assert enc == "a" and raw.dtype == torch.uint16 and torch.equal(raw.long(), sparse)
    big = torch.arange(0, 200000, 3000)                                   # numel > 65536, gaps < 65536
    enc, raw = sam._encode(big, 200000)
    assert enc == "d" and raw.dtype == torch.uint16 and torch.equal(raw.long().cumsum(0), big)
    far = torch.tensor([5, 100000, 199999])
    assert sam._encode(far, 200000)[0] == "i"
    assert sam._encode(torch.arange(0, 25600, 255), 25600)[0] == "g"      # d = 254: one byte each
    assert sam._encode(torch.arange(0, 25600, 511), 25600)[0] == "a"      # d = 510: three bytes each
    assert sam._encode(torch.tensor([255, 511]), 1000)[0] == "g"          # 4 bytes either way: tie -> u8gap


@pytest.mark.parametrize("stream, count", [([0, 5], 3),          # too few terminators
                                           ([0, 5, 255], 2),     # trailing 255
                                           ([0, 255], 1),        # truncated inside the last gap
                                           ([0, 5, 7], 2),       # too many terminators
                                           ([255], 0)])
def test_u8gap_decode_refuses(stream, count):
    with pytest.raises(ValueError, match="malformed or truncated u8gap"):
        sam._u8gap_decode(torch.tensor(stream, dtype=torch.uint8), count)


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
