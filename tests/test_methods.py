"""The adaptation methods on the shrunken config, end to end: tuning really tunes, memory costs are
real byte counts, the equalizer equalizes, sam's links stay the pretrained link bit for bit on the
Rayleigh channel too (C1). The evaluation, the network view and the studies: tests/test_evaluation.py,
tests/test_network.py, tests/studies/.

Every test runs in its own isolated project with a copy of the test run's shared adapted build/ (conftest
``adapted``: pretrain + every adapt cell, built once; it raises tuning.lr and equalizer.epochs, see
TUNING_LR there).
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from pipeline.methods import BASE_AGENT, CELL_KEYS, Context, Variant
from pipeline.metrics import ordered_pairs

from .conftest import ADAPTED_DOMAINS, ADAPTED_SPARSITIES, cell, context

DOMAINS, SPARSITIES = ADAPTED_DOMAINS, ADAPTED_SPARSITIES
CPU = torch.device("cpu")


def cells(params) -> list[tuple[str, str, float | None]]:
    return ([("sam", d, s) for d in DOMAINS for s in SPARSITIES]
            + [(m, d, None) for m in ("tuning", "equalizer") for d in DOMAINS])


def differs(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return any(not torch.equal(a[k], b[k]) for k in a)


def state_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def n_parameters(project) -> int:
    from pipeline.train import load_model
    return sum(p.numel() for p in load_model(project.params, project.paths.pretrained).parameters())


# ----------------------------------------------------------------------------------------- 1. cells
def test_tuning_changes_the_weights_and_every_cell_has_the_shared_keys(adapted):
    from pipeline.methods.tuning import tuned_path
    params = adapted.params
    ctx = Context(params, adapted.paths, CPU)
    for method, d, s in cells(params):
        result = cell(adapted.paths, method, d, s)
        assert tuple(result) == CELL_KEYS, (method, d, s)
        assert (result["method"], result["domain"], result["sparsity"]) == (method, d, s)
    pre = load_file(str(adapted.paths.pretrained))
    for d in DOMAINS:
        tuned = load_file(str(tuned_path(ctx, d)))
        retuned = load_file(str(tuned_path(ctx, d, retuned=True)))
        assert differs(tuned, pre), f"{d}: tuning left every weight as pretrained"
        assert differs(retuned, pre), f"{d}: re-tuning restored the pretrained weights exactly (impossible)"
        assert differs(retuned, tuned), f"{d}: re-tuning did not change the tuned weights"
    a, b = (load_file(str(tuned_path(ctx, d))) for d in DOMAINS)
    assert differs(a, b)  # each domain gets its own agent


# ---------------------------------------------------------------------------------------- 2. memory
def test_memory_costs_are_real_byte_counts(adapted):
    from pipeline.methods.equalizer import eq_path
    from pipeline.methods.sam import sam_path
    params = adapted.params
    ctx = Context(params, adapted.paths, CPU)
    fp32 = 4 * n_parameters(adapted)
    full = state_bytes(load_file(str(adapted.paths.pretrained)).values())
    assert full == fp32  # the SC model has no buffers: its state_dict is its fp32 parameters
    for d in DOMAINS:
        for s in SPARSITIES:
            sam = cell(adapted.paths, "sam", d, s)
            assert sam["memory_bytes"] == os.path.getsize(sam_path(ctx, d, s))
            assert sam["memory_cost_pct"] == 100 * sam["memory_bytes"] / fp32
        tuning = cell(adapted.paths, "tuning", d)
        assert tuning["memory_bytes"] == full
        assert tuning["memory_cost_pct"] == 100 * full / fp32 == 100.0
        eq = cell(adapted.paths, "equalizer", d)
        eq_tensors = load_file(str(eq_path(ctx, d)))
        assert set(k.split(".", 1)[0] for k in eq_tensors) == set(DOMAINS) - {d}  # one per partner
        # what the agent needs beyond W0: its K - 1 equalizers only, not a copy it never uses
        assert eq["memory_bytes"] == state_bytes(eq_tensors.values()) < full
        assert eq["memory_cost_pct"] == 100 * eq["memory_bytes"] / fp32
        assert eq["details"]["equalizer_parameters"] == sum(t.numel() for t in eq_tensors.values())


# ------------------------------------------------------------------------------------- 3. equalizer
def test_equalizer_lowers_the_misalignment_it_targets(adapted):
    from pipeline.methods.equalizer import load_equalizers
    from pipeline.methods.equalizer import variants as eq_variants
    from pipeline.methods.tuning import tuned_models
    from pipeline.methods.tuning import variants as tuning_variants
    ctx = context(adapted)
    base_test = ctx.split("base_test")
    tuned = tuned_models(ctx)
    channels = tuned[BASE_AGENT].channels
    pre = ctx.pretrained()
    reference = ctx.psnr(ctx.link(pre, pre), base_test)
    (eq_variant,) = eq_variants(ctx, None)
    raw = {v.method: v for v in tuning_variants(ctx, None)}["no_alignment"]
    for a, b in ordered_pairs(DOMAINS):
        eq = load_equalizers(ctx, b, channels)[a]
        without = ctx.psnr(ctx.link(tuned[a], tuned[b]), base_test)
        with_eq = ctx.psnr(ctx.link(tuned[a], tuned[b], eq), base_test)
        msg = f"{a}->{b}: pretrained {reference:.3f} dB, without {without:.3f} dB, with equalizer {with_eq:.3f} dB"
        assert reference - without > 1.0, "tuned agents not misaligned: " + msg
        assert with_eq > without + 1.0, msg
        assert reference - with_eq < (reference - without) / 2, "misalignment not even halved: " + msg
        # the same through the Variant API evaluate uses, and deterministic
        assert ctx.psnr(eq_variant.pair(a, b), base_test) == with_eq
        assert ctx.psnr(raw.pair(a, b), base_test) == without
    # links with the base agent, and an agent with itself, are raw (no equalizer there)
    assert ctx.psnr(eq_variant.pair(BASE_AGENT, "VA"), base_test) == ctx.psnr(ctx.link(pre, tuned["VA"]), base_test)


def test_fanout_pair_psnrs_equal_one_evaluation_per_pair(adapted):
    """Context.pair_psnrs encodes each Tx once for all its receivers: the numbers must be exactly
    those of one evaluation per pair (same noise), for every method's variants."""
    from pipeline.evaluation import all_variants
    ctx = context(adapted)
    base_test = ctx.split("base_test")
    agents = [BASE_AGENT, *DOMAINS]
    pairs = [(a, b) for a in agents for b in agents]
    variants = all_variants(ctx)
    assert {v.method for v in variants if v.transmit is None} == set()  # every built-in method fans out
    for v in variants:
        fanned = ctx.pair_psnrs(v, pairs, base_test)
        assert list(fanned) == pairs
        one_by_one = {(a, b): ctx.psnr(v.pair(a, b), base_test) for a, b in pairs}
        assert fanned == one_by_one, (v.method, v.sparsity)
    # a variant that only gives pair() is evaluated pair by pair, with the same result
    v = variants[-1]
    plain = Variant(v.method, v.sparsity, v.local, v.pair, v.memory_bytes)
    assert plain.transmit is None and ctx.pair_psnrs(plain, pairs[:3], base_test) == {
        p: fanned[p] for p in pairs[:3]}


def test_variant_needs_pair_or_both_transmit_and_receive():
    with pytest.raises(TypeError, match="pair, or transmit and receive"):
        Variant("m", None, lambda d: None, None, lambda d: 0)
    with pytest.raises(TypeError, match="together"):
        Variant("m", None, lambda d: None, None, lambda d: 0, transmit=lambda a: None)



# ------------------------------------------------------------------------------------ 4. rayleigh
@pytest.fixture
def rayleigh_agents(prepared):
    """Agents pretrained and sam-adapted on the Rayleigh channel (two domains, one sparsity)."""
    raw = prepared.raw
    raw["model"]["channel"] = "rayleigh"
    raw["domains"]["names"] = list(DOMAINS)
    raw["adapt"]["sparsities"] = [max(SPARSITIES)]
    raw["ablate"]["domains"] = ["VH"]
    prepared.write_params(raw)
    from pipeline.stages import adapt, pretrain
    pretrain.main(prepared.params, prepared.paths)
    adapt.main(prepared.params, prepared.paths, ["--method", "sam"])
    return prepared


def test_zero_forget_holds_on_the_rayleigh_channel(rayleigh_agents):
    """Trained on Rayleigh fading: sam switched off is the base bit for bit, and misalignment is exactly 0."""
    from pipeline.methods import sam as sam_method
    from pipeline.sam import install_sam, load_sam, set_sam_enabled
    params = rayleigh_agents.params
    ctx = context(rayleigh_agents)
    assert ctx.channel_type == "rayleigh"
    pre = ctx.pretrained()
    assert pre.channel == "rayleigh"
    gamma = max(SPARSITIES)
    x = ctx.split("base_test")[:16].float() / 255
    model = ctx.pretrained()
    install_sam(model, load_sam(sam_method.sam_path(ctx, "VA", gamma), model))
    with torch.no_grad():
        reference = pre(x, torch.Generator().manual_seed(3))
        set_sam_enabled(model, False)
        assert torch.equal(model(x, torch.Generator().manual_seed(3)), reference)
        set_sam_enabled(model, True)
        assert not torch.equal(model(x, torch.Generator().manual_seed(3)), reference)
    (variant,) = sam_method.variants(ctx, gamma)
    base_test = ctx.split("base_test")
    ref = ctx.psnr(ctx.link(pre, pre), base_test)
    pairs = [(a, b) for a in [BASE_AGENT, *DOMAINS] for b in [BASE_AGENT, *DOMAINS]]
    found = ctx.pair_psnrs(variant, pairs, base_test)
    assert all(v == ref for v in found.values()), found  # misalignment exactly 0 (C1) on fading
    # the cell was evaluated on its own channel: its number is the rayleigh self-link's
    served = install_sam(ctx.pretrained(), load_sam(sam_method.sam_path(ctx, "VH", gamma), pre))
    assert cell(rayleigh_agents.paths, "sam", "VH", gamma)["domain_psnr"] == ctx.psnr(ctx.self_link(served), ctx.split("VH_test"))
    awgn = Context(params, rayleigh_agents.paths, CPU, channel_type="awgn")
    assert awgn.psnr(awgn.link(pre, pre), base_test) != ref
