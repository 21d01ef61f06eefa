"""The zero-forget competitors (lora, bitfit, delta_topk) and the base-training control.

Unit tests on a tiny SC model (width 4), then on the shared adapted project (``adapted``):
switched off, each competitor is the base model bit for bit (torch.equal on outputs); lora's file
is within one rank step of sam's bytes; every memory figure is the real bytes of a file on disk.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.fingerprint import base_fingerprint
from pipeline.methods import BASE_AGENT, Context, registry
from pipeline.methods import bitfit, delta_topk, lora
from pipeline.model import SCModel
from pipeline.sam import install_sam, layer_budgets, load_sam, save_sam, set_sam_enabled
from pipeline.selection import cell_grid

from .conftest import ADAPTED_DOMAINS, ADAPTED_SPARSITIES

CPU = torch.device("cpu")
ZERO_FORGET = ("lora", "bitfit", "delta_topk")


def make_base(seed: int = 0) -> SCModel:
    torch.manual_seed(seed)
    return SCModel(width=4).eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def run(model, x, seed: int = 7) -> torch.Tensor:
    with torch.no_grad():
        return model(x, torch.Generator().manual_seed(seed))


def randomise(params, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def full_ranks(model, r: int) -> dict[str, int]:
    return {n: min(r, lora.max_rank(m)) for n, m in lora.adaptable_layers(model).items()}


# ------------------------------------------------------------------------------------------ lora
def test_lora_covers_conv_and_transposed_conv_and_switches_off_to_w0_bit_for_bit():
    from peft.tuners.lora import LoraLayer
    base = make_base()
    model = lora.attach_lora(copy.deepcopy(base), full_ranks(base, 2))
    layers = lora.lora_layers(model)
    assert set(layers) == set(lora.adaptable_layers(base))
    kinds = {type(m) for m in layers.values()}
    assert any(issubclass(k, LoraLayer) for k in kinds) and lora.LoRAConvTranspose2d in kinds
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n}  # only the factors train
    x, ref = images(), run(base, images())
    assert torch.equal(run(model, x), ref)  # B starts at zero: the delta starts at 0
    randomise(lora.lora_parameters(model))
    on = run(model, x)
    assert not torch.allclose(on, ref, atol=1e-3)
    lora.set_lora_enabled(model, False)
    assert torch.equal(run(model, x), ref)
    lora.set_lora_enabled(model, True)
    assert torch.equal(run(model, x), on)
    w0 = dict(base.named_parameters())  # W0 itself untouched by training-shaped changes of the factors
    for n, m in lora.adaptable_layers(base).items():
        wrapped = layers[n]
        inner = wrapped.base if isinstance(wrapped, lora.LoRAConvTranspose2d) else wrapped.get_base_layer()
        assert torch.equal(inner.weight, w0[f"{n}.weight"]), n


def test_transposed_conv_lora_is_a_rank_r_delta_on_the_weight():
    """The wrapper computes ConvTranspose2d with W0 + ΔW, ΔW[i, o] = Σ_r A[i, r] B[o, r]: peft's conv math."""
    torch.manual_seed(0)
    base = nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1)
    layer = lora.LoRAConvTranspose2d(copy.deepcopy(base), 2)
    randomise([layer.lora_B.weight])
    x = torch.randn(2, 6, 8, 8)
    a, b = layer.lora_A.weight, layer.lora_B.weight[:, :, 0, 0]  # (in, r, k, k), (out, r)
    delta = torch.einsum("irhw,or->iohw", a, b)
    merged = nn.functional.conv_transpose2d(x, base.weight + delta, base.bias, 2, 2, 1)
    with torch.no_grad():
        assert torch.allclose(layer(x), merged, atol=1e-5)
        assert layer(x).shape == base(x).shape
    assert torch.linalg.matrix_rank(delta.permute(0, 2, 3, 1).reshape(-1, 5)) <= 2


def _sizes(model, fp) -> list[tuple[dict, int]]:
    out = []
    for ranks in lora.rank_sequence(model):
        out.append((ranks, len(lora.file_bytes(model, ranks, lora._meta(ranks, fp, 0.01, "VA")))))
    return out


def test_rank_sequence_adds_one_rank_at_a_time_cheapest_layer_first():
    base = make_base()
    seq = _sizes(base, base_fingerprint(base))
    assert not any(seq[0][0].values())  # starts empty
    for (r0, s0), (r1, s1) in zip(seq, seq[1:]):
        grown = [n for n in r0 if r1[n] != r0[n]]
        assert len(grown) == 1 and r1[grown[0]] == r0[grown[0]] + 1
        assert s1 > s0
    layers = lora.adaptable_layers(base)
    cost = {n: sum(lora._dims(m)) for n, m in layers.items()}
    first = next(n for n, r in seq[1][0].items() if r)
    assert cost[first] == min(cost.values())
    assert seq[-1][0] == {n: lora.max_rank(m) for n, m in layers.items()}  # ends at every layer's largest rank


@pytest.mark.parametrize("target", [50, 400, 1000, 2600, 9000])
def test_chosen_ranks_are_the_allocation_nearest_the_target_and_the_file_has_those_bytes(tmp_path, target):
    base = make_base()
    fp = base_fingerprint(base)
    choice = lora.choose_ranks(base, target, fp, 0.01, "VA")
    sizes = [s for _, s in _sizes(base, fp)]
    assert abs(choice["bytes"] - target) == min(abs(s - target) for s in sizes)
    torch.manual_seed(0)
    model = lora.attach_lora(copy.deepcopy(base), choice["ranks"])
    randomise(lora.lora_parameters(model))
    path = tmp_path / "a.safetensors"
    lora.save_lora(path, model, choice["ranks"], base_fp=fp, sparsity=0.01, domain="VA")
    assert path.stat().st_size == choice["bytes"]
    ranks, tensors = lora.load_lora(path, copy.deepcopy(base))
    assert ranks == choice["ranks"]
    served = lora.install_lora(copy.deepcopy(base), ranks, tensors)
    if any(ranks.values()):  # the stored fp16 factors, served: close to the trained ones
        assert torch.allclose(run(served, images()), run(model, images()), atol=5e-3)
    else:  # nothing fits near the target: the empty adapter, the pretrained model
        assert torch.equal(run(served, images()), run(base, images()))


def test_a_lora_file_for_another_base_or_of_another_kind_is_refused_in_one_line(tmp_path):
    base = make_base()
    ranks = full_ranks(base, 1)
    model = lora.attach_lora(copy.deepcopy(base), ranks)
    path = tmp_path / "l.safetensors"
    lora.save_lora(path, model, ranks, base_fp=base_fingerprint(base), sparsity=0.01, domain="VA")
    with pytest.raises(lora.LoRAFileError, match="wrong base model") as exc:
        lora.load_lora(path, make_base(seed=1))
    assert "\n" not in str(exc.value)
    sam_file = tmp_path / "s.safetensors"
    budgets = layer_budgets(base, 0.01)
    state = delta_topk.topk_delta(base, make_base(seed=1), budgets)
    state.values = {n: v.half() for n, v in state.values.items()}
    save_sam(sam_file, state, sparsity=0.01, allocation="linear", base_fingerprint=base_fingerprint(base))
    with pytest.raises(lora.LoRAFileError, match=r"a SAM file .* given where a LoRA adapter file .* is expected"):
        lora.load_lora(sam_file, base)
    with pytest.raises(bitfit.BitFitFileError, match=r"a LoRA adapter file .* given where a BitFit file"):
        bitfit.load_bitfit(path, base)


# ------------------------------------------------------------------------------------------ bitfit
def test_bitfit_adapts_only_biases_and_slopes_and_switches_off_to_w0_bit_for_bit(tmp_path):
    base = make_base()
    names = bitfit.bitfit_names(base)
    prelus = [m for m in base.modules() if isinstance(m, nn.PReLU)]
    convs = [m for m in base.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(names) == len(prelus) + len(convs)
    tuned = copy.deepcopy(base)
    randomise([dict(tuned.named_parameters())[n] for n in names])
    path = tmp_path / "b.safetensors"
    bitfit.save_bitfit(path, tuned, base, domain="VA")
    stored = load_file(str(path))
    assert set(stored) == set(names) and all(t.dtype == torch.float16 for t in stored.values())
    agent = bitfit.BitFitAgent(copy.deepcopy(base), bitfit.load_bitfit(path, copy.deepcopy(base)))
    x, ref = images(), run(base, images())
    on = run(agent.model, x)
    assert not torch.allclose(on, ref, atol=1e-3)
    assert torch.allclose(on, run(tuned, x), atol=5e-3)  # fp16 deltas
    agent.set_enabled(False)
    assert torch.equal(run(agent.model, x), ref)
    agent.set_enabled(True)
    assert torch.equal(run(agent.model, x), on)
    with pytest.raises(bitfit.BitFitFileError, match="wrong base model"):
        bitfit.load_bitfit(path, make_base(seed=1))


# ------------------------------------------------------------------------------------------ delta_topk
def test_delta_topk_keeps_the_largest_deltas_within_sams_budget_and_switches_off_exactly(tmp_path):
    base, tuned = make_base(), make_base(seed=1)  # a "tuned" model far from the base
    budgets = layer_budgets(base, 0.01)
    state = delta_topk.topk_delta(base, tuned, budgets)
    for n, k in budgets.items():
        delta = (tuned.get_submodule(n).weight - base.get_submodule(n).weight).flatten().abs()
        assert len(state.indices[n]) == k
        assert delta[state.indices[n]].min() >= delta.topk(k).values.min()
        rest = torch.ones_like(delta, dtype=torch.bool)
        rest[state.indices[n]] = False
        assert not rest.any() or delta[rest].max() <= delta[state.indices[n]].min()
    state.values = {n: v.half() for n, v in state.values.items()}
    path = tmp_path / "d.safetensors"
    save_sam(path, state, sparsity=0.01, allocation="linear", base_fingerprint=base_fingerprint(base))
    model = install_sam(copy.deepcopy(base), load_sam(path, base))
    x, ref = images(), run(base, images())
    assert not torch.equal(run(model, x), ref)
    set_sam_enabled(model, False)
    assert torch.equal(run(model, x), ref)


# ------------------------------------------------------------------------------------------ adapted project
def context(project) -> Context:
    from pipeline.train import setup_runtime
    setup_runtime(project.params)
    return Context(project.params, project.paths, CPU)


def cell_json(paths, method, domain, sparsity):
    return json.loads(paths.cell(method, domain, sparsity).metrics.read_text())


def sparsities(name):
    return ADAPTED_SPARSITIES if registry()[name].USES_SPARSITY else [None]


@pytest.mark.parametrize("name", ZERO_FORGET)
def test_switched_off_every_adapted_agent_is_the_base_model_bit_for_bit(adapted, name):
    """Agent A's Tx -> agent B's Rx, both adapted (and each with itself): the pretrained link, torch.equal;
    switched on, each agent serves its own domain with its adapter (not the base model)."""
    ctx = context(adapted)
    pre = ctx.pretrained()
    x = ctx.split("base_test")[:8].float() / 255
    reference = ctx.link(pre, pre)(x, torch.Generator().manual_seed(5))
    for s in sparsities(name):
        (variant,) = registry()[name].variants(ctx, s)
        for a in ADAPTED_DOMAINS:
            with torch.no_grad():
                on = variant.local(a)(x, torch.Generator().manual_seed(5))
            assert not torch.equal(on, ctx.self_link(pre)(x, torch.Generator().manual_seed(5))), (name, s, a)
            for b in ADAPTED_DOMAINS:
                with torch.no_grad():
                    got = variant.pair(a, b)(x, torch.Generator().manual_seed(5))
                assert torch.equal(got, reference), (name, s, a, b)


def test_lora_stored_bytes_match_sams_within_one_rank_step(adapted):
    ctx = context(adapted)
    pre = ctx.pretrained()
    for d in ADAPTED_DOMAINS:
        for s in ADAPTED_SPARSITIES:
            target = ctx.paths.cell("sam", d, s).artifact().stat().st_size
            path = lora.lora_path(ctx, d, s)
            size = path.stat().st_size
            ranks, _ = lora.load_lora(path, pre)
            sizes = [(r, len(lora.file_bytes(pre, r, lora._meta(r, base_fingerprint(pre), s, d))))
                     for r in lora.rank_sequence(pre)]
            i = next(i for i, (r, _) in enumerate(sizes) if r == ranks)
            assert sizes[i][1] == size
            neighbours = [sizes[j][1] for j in (i - 1, i + 1) if 0 <= j < len(sizes)]
            assert all(abs(size - target) <= abs(n - target) for n in neighbours), (d, s, size, target, neighbours)
            step = max(abs(n - size) for n in neighbours)
            assert abs(size - target) <= step, (d, s, size, target, step)
            details = cell_json(ctx.paths, "lora", d, s)["details"]
            assert (details["target_bytes"], details["achieved_bytes"]) == (target, size)
            assert details["fits"] and details["ranks"] == {n: r for n, r in ranks.items() if r}


@pytest.mark.parametrize("name", [*ZERO_FORGET, "base_control"])
def test_memory_bytes_are_the_real_bytes_of_the_method_files(adapted, name):
    ctx = context(adapted)
    module = registry()[name]
    domains = list(dict.fromkeys(d for d, _ in cell_grid(adapted.params, module)))  # the contract's rule
    for s in sparsities(name):
        (variant,) = module.variants(ctx, s)
        for d in domains:
            path = ctx.paths.cell(name, d, s).artifact()
            recorded = cell_json(ctx.paths, name, d, s)["memory_bytes"]
            if name == "base_control":  # the cell stores a full copy; the control is charged nothing
                assert recorded == sum(t.numel() * t.element_size() for t in load_file(str(path)).values())
            else:
                assert recorded == path.stat().st_size, (name, d, s)
        for d in ADAPTED_DOMAINS:
            if name == "base_control":
                assert variant.memory_bytes(d) == 0 and "control" in variant.notes
            else:
                assert variant.memory_bytes(d) == ctx.paths.cell(name, d, s).artifact().stat().st_size


def test_base_control_is_one_model_trained_on_base_images_serving_every_domain(adapted):
    ctx = context(adapted)
    first, second = ADAPTED_DOMAINS
    assert ctx.paths.cell("base_control", first).artifact().is_file()
    assert not ctx.paths.cell("base_control", second).metrics.exists()  # one cell, not one per domain
    details = cell_json(ctx.paths, "base_control", first, None)["details"]
    (variant,) = registry()["base_control"].variants(ctx, None)
    pre = ctx.pretrained()
    for d in ADAPTED_DOMAINS:
        test_x = ctx.split(f"{d}_test")
        assert ctx.psnr(variant.local(d), test_x) == details["domain_psnr_by_domain"][d]
        assert ctx.psnr(variant.local(d), test_x) != ctx.psnr(ctx.self_link(pre), test_x)  # it did train
    x = ctx.split("base_test")[:8].float() / 255
    with torch.no_grad():
        pair = variant.pair(first, second)(x, torch.Generator().manual_seed(5))
        own = variant.local(first)(x, torch.Generator().manual_seed(5))
        base = variant.pair(BASE_AGENT, BASE_AGENT)(x, torch.Generator().manual_seed(5))
    assert torch.equal(pair, own)  # control Tx -> control Rx
    assert torch.equal(base, ctx.link(pre, pre)(x, torch.Generator().manual_seed(5)))


def test_delta_topk_cells_keep_the_top_k_of_the_tuned_delta_and_retraining_keeps_the_mask(adapted):
    from pipeline.methods.delta_topk import Config as DeltaTopk
    from pipeline.methods.tuning import tuned_path
    from pipeline.paths import Cell
    from pipeline.tracking import Tracker
    from pipeline.train import load_model
    ctx = context(adapted)
    pre = ctx.pretrained()
    d, s = ADAPTED_DOMAINS[0], ADAPTED_SPARSITIES[0]
    tuned = load_model(ctx.params, tuned_path(ctx, d))
    stored = load_sam(delta_topk.delta_path(ctx, d, s), pre)
    expected = delta_topk.topk_delta(pre, tuned, layer_budgets(pre, s, ctx.params.adapt.allocation))
    for n in expected.indices:
        assert torch.equal(stored.indices[n], expected.indices[n]), n
        assert torch.equal(stored.values[n], expected.values[n].half()), n
    # re-trained on the fixed mask: the same entries, other values
    params = ctx.params.model_copy(update={"delta_topk": DeltaTopk(retrain_epochs=1, lr=1e-3)})
    rctx = Context(params, ctx.paths, CPU)
    out = Cell(adapted.root / "retrained", ctx.paths.cell("delta_topk", d, s).name, adapted.root / "ckpt")
    out.folder.mkdir()
    rctx.checkpoints = out.checkpoints
    with Tracker(params, ctx.paths, "retrain-test", out.name) as tracker:
        result = delta_topk.adapt(rctx, d, s, out, tracker)
    again = load_sam(out.artifact(), pre)
    assert all(torch.equal(again.indices[n], stored.indices[n]) for n in stored.indices)
    assert any(not torch.equal(again.values[n], stored.values[n]) for n in stored.indices)
    assert result["memory_bytes"] == out.artifact().stat().st_size
