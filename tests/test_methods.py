"""The adaptation methods on the shrunken config, end to end: tuning really tunes, memory costs are
real byte counts, the equalizer equalizes, evaluate/network/ablate measure what SPEC.md says
(sam's links are the pretrained link bit for bit, C1).

Every test runs in its own isolated project with a copy of the session's adapted build/ (conftest
``adapted``: pretrain + every adapt cell, built once; it raises tuning.lr and equalizer.epochs, see
TUNING_LR there).
"""
from __future__ import annotations

import csv
import json
import os

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline.methods import BASE_AGENT, CELL_KEYS, Context, Variant
from pipeline.metrics import ordered_pairs

from .conftest import ADAPTED_DOMAINS, ADAPTED_SPARSITIES

DOMAINS, SPARSITIES = ADAPTED_DOMAINS, ADAPTED_SPARSITIES
CPU = torch.device("cpu")


def context(project, **kw) -> Context:
    from pipeline.train import setup_runtime
    setup_runtime(project.params)  # what every stage does: 1 thread, deterministic algorithms (restored by `project`)
    return Context(project.params, project.paths, CPU, **kw)


def cell(paths, method: str, domain: str, sparsity: float | None = None) -> dict:
    return json.loads(paths.cell(method, domain, sparsity).metrics.read_text())


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
    from pipeline.stages.evaluate import all_variants
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


# -------------------------------------------------------------------------------------- 4. evaluate
def test_evaluate_end_to_end(adapted, monkeypatch):
    from pipeline.stages import evaluate
    params = adapted.params
    measured = []
    real_write = evaluate.write_csv

    def write_csv(path, rows):  # keep the unrounded values the CSV is written from
        measured.extend(rows)
        real_write(path, rows)
    monkeypatch.setattr(evaluate, "write_csv", write_csv)
    evaluate.main(params, adapted.paths)

    with open(adapted.paths.evaluation_csv) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(measured) > 0
    expected = ([("pretrained", "")] + [(m, str(s)) for m in ("sam", "lora", "delta_topk") for s in SPARSITIES]
                + [(m, "") for m in ("tuning_retune", "tuning_copy", "no_alignment", "equalizer", "bitfit",
                                     "base_control")])
    assert sorted({(r["method"], r["sparsity"]) for r in table}) == sorted(expected)
    pairs = ordered_pairs(DOMAINS)
    for method, s in expected:
        sel = [r for r in table if (r["method"], r["sparsity"]) == (method, s)]
        for metric in ("domain_psnr", "memory_bytes", "memory_cost"):
            assert sorted(r["domain"] for r in sel if r["metric"] == metric) == sorted(DOMAINS), (method, s, metric)
        for metric in ("pair_psnr", "misalignment"):
            assert sorted((r["tx"], r["rx"]) for r in sel if r["metric"] == metric) == sorted(pairs), (method, s)
        assert all(r["value"] not in ("", "nan") for r in sel)

    def value(method, sparsity, metric, **where):
        (hit,) = [r["value"] for r in measured if r["method"] == method and r["sparsity"] == sparsity
                  and r["metric"] == metric and all(r[k] == v for k, v in where.items())]
        return hit

    for s in SPARSITIES:
        for a, b in pairs:
            assert value("sam", s, "misalignment", tx=a, rx=b) == 0.0, (s, a, b)  # C1, exactly
            assert value("sam", s, "pair_psnr", tx=a, rx=b) == value("pretrained", "", "pair_psnr", tx=a, rx=b)
        for d in DOMAINS:
            # the stored fp16 SAM, the same noise seed: the cell's number is evaluate's number
            assert value("sam", s, "domain_psnr", domain=d) == cell(adapted.paths, "sam", d, s)["domain_psnr"], (s, d)
            assert value("sam", s, "memory_bytes", domain=d) == cell(adapted.paths, "sam", d, s)["memory_bytes"]
    assert all(float(r["value"]) == 0.0 for r in table if r["method"] == "sam" and r["metric"] == "misalignment")
    for d in DOMAINS:
        assert value("no_alignment", "", "domain_psnr", domain=d) == cell(adapted.paths, "tuning", d)["domain_psnr"]
        assert value("equalizer", "", "memory_bytes", domain=d) == cell(adapted.paths, "equalizer", d)["memory_bytes"]
    summary = json.loads(adapted.paths.evaluate_json.read_text())
    for s in SPARSITIES:
        assert summary[f"sam_gamma_{s:g}"]["max_abs_misalignment"] == 0.0


def test_evaluate_measures_ssim_cross_traffic_and_per_image_values(adapted, monkeypatch):
    """The new measurements (domain/pair SSIM, cross traffic, seed, per-image file) beside the old ones,
    which keep their rows, order and values."""
    from pipeline.metrics import FIELDS, parse_per_image_key, per_image_key, read_per_image
    from pipeline.methods.equalizer import load_equalizers
    from pipeline.methods.tuning import copy_bytes, tuned_models
    from pipeline.stages import evaluate
    measured = []
    real_write = evaluate.write_csv
    monkeypatch.setattr(evaluate, "write_csv", lambda path, rows: (measured.extend(rows), real_write(path, rows)))
    evaluate.main(adapted.params, adapted.paths)
    assert FIELDS[FIELDS.index("sparsity") + 1] == "seed"
    with open(adapted.paths.evaluation_csv) as f:
        assert next(csv.reader(f)) == FIELDS
    assert {r["seed"] for r in measured} == {0}
    pairs = ordered_pairs(DOMAINS)
    keys = sorted({(r["method"], r["sparsity"]) for r in measured}, key=str)

    def sel(method, s, metric):
        return [r for r in measured if (r["method"], r["sparsity"], r["metric"]) == (method, s, metric)]

    def one(method, s, metric, **where):
        (hit,) = [r["value"] for r in sel(method, s, metric) if all(r[k] == v for k, v in where.items())]
        return hit

    for method, s in keys:
        where = {m: [(r["domain"], r["tx"], r["rx"]) for r in sel(method, s, m)] for m in
                 ("domain_psnr", "domain_ssim", "pair_psnr", "pair_ssim", "cross_psnr", "cross_ssim")}
        assert where["domain_ssim"] == where["domain_psnr"] == [(d, d, d) for d in DOMAINS]
        assert where["pair_ssim"] == where["pair_psnr"] == [("base", a, b) for a, b in pairs]
        assert where["cross_ssim"] == where["cross_psnr"] == [(a, a, b) for a, b in pairs]
        assert all(-1 <= r["value"] <= 1 and r["unit"] == "1" for r in measured
                   if (r["method"], r["sparsity"]) == (method, s) and r["metric"].endswith("_ssim"))

    # the old metrics keep their rows, order and values: what the pre-SSIM evaluation computed
    ctx = context(adapted)
    old = ("domain_psnr", "pair_psnr", "misalignment", "memory_bytes", "memory_cost")
    pre = ctx.pretrained()
    reference = ctx.psnr(ctx.link(pre, pre), ctx.split("base_test"))
    for v in evaluate.all_variants(ctx):
        s = "" if v.sparsity is None else v.sparsity
        got = [(r["metric"], r["domain"], r["tx"], r["rx"], r["value"]) for r in measured
               if (r["method"], r["sparsity"]) == (v.method, s) and r["metric"] in old]
        want = [("domain_psnr", d, d, d, ctx.psnr(v.local(d), ctx.split(f"{d}_test"))) for d in DOMAINS]
        for (a, b), psnr in ctx.pair_psnrs(v, pairs, ctx.split("base_test")).items():
            want += [("pair_psnr", "base", a, b, psnr), ("misalignment", "base", a, b, reference - psnr)]
        for d in DOMAINS:
            want += [("memory_bytes", d, "", "", v.memory_bytes(d)),
                     ("memory_cost", d, "", "", 100 * v.memory_bytes(d) / (4 * n_parameters(adapted)))]
        assert got == want, v.method

    # cross traffic: A's own test images through A's deployed Tx -> B's deployed Rx
    tuned, channels = tuned_models(ctx), tuned_models(ctx)[BASE_AGENT].channels
    for a, b in pairs:
        own = ctx.split(f"{a}_test")
        # the pretrained pair link is the pretrained self link: on A's images it is A's domain PSNR
        assert one("pretrained", "", "cross_psnr", tx=a, rx=b) == one("pretrained", "", "domain_psnr", domain=a)
        assert one("pretrained", "", "cross_ssim", tx=a, rx=b) == one("pretrained", "", "domain_ssim", domain=a)
        for s in SPARSITIES:  # sam talks with W0 on both sides: the pretrained link exactly
            assert one("sam", s, "cross_psnr", tx=a, rx=b) == one("pretrained", "", "cross_psnr", tx=a, rx=b)
        raw = ctx.quality(ctx.link(tuned[a], tuned[b]), own)
        assert one("no_alignment", "", "cross_psnr", tx=a, rx=b) == raw.mean_psnr
        assert one("no_alignment", "", "cross_ssim", tx=a, rx=b) == raw.mean_ssim
        eq = ctx.quality(ctx.link(tuned[a], tuned[b], load_equalizers(ctx, b, channels)[a]), own)
        assert one("equalizer", "", "cross_psnr", tx=a, rx=b) == eq.mean_psnr
        # real traffic differs from the base-image pair link (another image set)
        assert one("no_alignment", "", "cross_psnr", tx=a, rx=b) != one("no_alignment", "", "pair_psnr", tx=a, rx=b)

    # honest memory: equalizer = its K - 1 equalizers, far below tuning_copy's second copy
    full = copy_bytes(pre)
    for d in DOMAINS:
        assert one("tuning_copy", "", "memory_bytes", domain=d) == full
        eq_bytes = sum(state_bytes(e.state_dict().values()) for e in load_equalizers(ctx, d, channels).values())
        assert one("equalizer", "", "memory_bytes", domain=d) == eq_bytes < full
        assert len(load_equalizers(ctx, d, channels)) == len(DOMAINS) - 1

    # per-image values: one float64 vector per domain_*/pair_*/cross_*/source_* row, whose mean is the row's value
    values = read_per_image(adapted.paths.per_image)
    quality_rows = [r for r in measured if r["metric"].split("_")[0] in ("domain", "pair", "cross", "source")]
    assert set(values) == {per_image_key(r["method"], r["sparsity"], r["seed"], r["metric"], r["domain"], r["tx"],
                                         r["rx"]) for r in quality_rows}
    n = {"base": len(ctx.split("base_test")), **{d: len(ctx.split(f"{d}_test")) for d in DOMAINS}}
    for r in quality_rows:
        v = values[per_image_key(r["method"], r["sparsity"], r["seed"], r["metric"], r["domain"], r["tx"], r["rx"])]
        assert v.dtype.name == "float64" and v.shape == (n[r["domain"]],)
        assert float(torch.from_numpy(v).mean()) == r["value"], r
    # the key's fields are the CSV's: a row read back from evaluation.csv finds its vector
    with open(adapted.paths.evaluation_csv) as f:
        table = [r for r in csv.DictReader(f) if r["metric"] == "cross_ssim"]
    assert all(per_image_key(*(r[k] for k in ("method", "sparsity", "seed", "metric", "domain", "tx", "rx")))
               in values for r in table) and table
    assert parse_per_image_key(next(iter(values)))["seed"] == "0"


# ---------------------------------------------------------------------------------------- 5. ablate
def test_ablate_mask_study_and_fixed_masks(adapted):
    import matplotlib.pyplot as plt
    from pipeline.methods.sam import train_sam
    from pipeline.sam import attach_sam, base_fingerprint, sam_layers
    from pipeline.stages.ablate import study
    params = adapted.params
    ctx = context(adapted)
    a = params.ablate
    df, finding, fig = study(ctx, "mask")
    plt.close(fig)
    assert sorted(df["mask"]) == sorted(["score", "random", "fisher"] * len(a.domains))
    moved = df.set_index(["domain", "mask"]).mask_moved
    for d in a.domains:
        assert moved[(d, "random")] == 0.0 and moved[(d, "fisher")] == 0.0  # fixed masks
        assert moved[(d, "score")] > 0  # the score-based mask really moves
    assert df.domain_psnr.notna().all() and ("best:" in finding or "tie at" in finding)

    d, s = a.domains[0], a.sparsity
    pre_fp = base_fingerprint(ctx.pretrained())
    initial = {n: m.mask() for n, m in sam_layers(attach_sam(ctx.pretrained(), s, params.adapt.allocation)).items()}
    for mask in ("score", "random", "fisher"):
        trained = train_sam(ctx, d, s, allocation=params.adapt.allocation, mask=mask, tag=f"test-{mask}")
        model = trained["model"]
        # W0 bitwise unchanged, whatever the mask (fisher even back-propagates into W0 for its scores)
        assert trained["base_fingerprint"] == pre_fp
        assert base_fingerprint(model) == pre_fp, mask
        assert not any(m.base.weight.requires_grad for m in sam_layers(model).values()), mask
        layers = sam_layers(model)
        assert all(int(m.mask().sum()) == int(initial[n].sum()) for n, m in layers.items())  # same budget
        if mask == "fisher":
            assert trained["mask_moved"] == 0.0
            assert any(not torch.equal(m.mask(), initial[n]) for n, m in layers.items()), \
                "the Fisher mask is the |W0| top-k mask"
        if mask == "random":
            assert any(not torch.equal(m.mask(), initial[n]) for n, m in layers.items())


def test_ablate_bases_study_trains_other_bases_and_reads_the_main_cells(adapted):
    """Extra bases are really other models (other seeds, their own budget), sam is adapted on each, and
    the main base's rows are its cells; train_base with the main seed and budget is the pretrain stage's
    model bit for bit (one recipe, one function)."""
    import dataclasses

    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    from pipeline.config import parse
    from pipeline.stages.ablate import study
    from pipeline.stages.pretrain import train_base
    from pipeline.train import data_fingerprint, fingerprint
    tree = adapted.params.model_dump(mode="json")
    tree["ablate"].update(studies=["bases"], sparsity=0.1, bases=2, base_epochs=1)
    params = parse(tree)
    ctx = dataclasses.replace(context(adapted), params=params, checkpoints=adapted.paths.checkpoints / "bases-test")
    df, finding, fig = study(ctx, "bases")
    plt.close(fig)
    d = "VH"
    main = df[df.base == "main"]
    assert len(main) == params.adapt.seeds and len(df) == len(main) + 2
    assert main.sam_psnr.iloc[0] == cell(adapted.paths, "sam", d, 0.1)["domain_psnr"]
    extra = df[df.base != "main"]
    assert list(extra.pretrain_seed) == [params.pretrain.seed + 1, params.pretrain.seed + 2]
    assert (extra.pretrain_epochs == 1).all()
    # other bases: other pretrained PSNRs, on base and domain images
    assert len({*df.base_test_psnr}) == 3 and len({*df.pretrained_psnr}) == 3
    assert (df.gain == df.sam_psnr - df.pretrained_psnr).all() and (extra.gain != 0).all()
    assert "across bases" in finding and "across seeds on the main base" in finding

    train_x = ctx.split("base_train")
    key = fingerprint("test-base", data_fingerprint(train_x))
    model, _ = train_base(params, train_x, seed=params.pretrain.seed, epochs=params.pretrain.epochs, device=CPU,
                          checkpoint=ctx.checkpoint("same-as-pretrain"), key=key)
    stored = load_file(str(adapted.paths.pretrained))
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


def test_ablate_budget_study_retrains_the_main_seed_at_each_budget(adapted):
    """At the main budget the study's base is the pipeline's own (same PSNR to the bit); at another
    budget it is another model, and the finding names the step up to the main budget."""
    import dataclasses

    import matplotlib.pyplot as plt

    from pipeline.config import parse
    from pipeline.stages.ablate import budget_finding, study
    tree = adapted.params.model_dump(mode="json")
    main = adapted.params.pretrain.epochs
    tree["ablate"].update(studies=["budget"], budget_epochs=[1, main])
    params = parse(tree)
    ctx = dataclasses.replace(context(adapted), params=params, checkpoints=adapted.paths.checkpoints / "budget-test")
    df, finding, fig = study(ctx, "budget")
    plt.close(fig)
    assert list(df.pretrain_epochs) == [1, main, main]
    own, again = df.iloc[1], df.iloc[2]
    assert own.model == "the pipeline's base"
    assert again.base_test_psnr == own.base_test_psnr and again.VH_test_psnr == own.VH_test_psnr
    assert df.iloc[0].base_test_psnr != own.base_test_psnr
    assert f"Going from 1 to {main} epochs" in finding
    halves = pd.DataFrame({"pretrain_epochs": [75, 150], "base_test_psnr": [24.0, 24.2]})
    assert "adds +0.20 dB: under the 0.3 dB" in budget_finding(halves, 150)
    halves["base_test_psnr"] = [24.0, 24.5]
    assert "adds +0.50 dB: not under the 0.3 dB" in budget_finding(halves, 150)


def test_the_bases_study_needs_its_sparsity_among_the_main_grids(tiny_params):
    from pipeline.config import ConfigError, parse
    tiny_params["ablate"].update(studies=["bases"], sparsity=0.5)
    with pytest.raises(ConfigError, match="ablate.sparsity 0.5 must be one of adapt.sparsities"):
        parse(tiny_params)
    tiny_params["ablate"]["sparsity"] = tiny_params["adapt"]["sparsities"][0]
    parse(tiny_params)


def test_ablate_snr_study_keeps_sam_aligned(adapted):
    import matplotlib.pyplot as plt
    from pipeline.stages.ablate import study
    params = adapted.params
    df, finding, fig = study(context(adapted), "snr")
    plt.close(fig)
    assert list(df.columns[:2]) == ["channel", "snr_db"]
    assert sorted(set(df.snr_db)) == sorted(params.ablate.snr_db) and set(df.channel) == {"awgn", "rayleigh"}
    sam = df[df.method.str.startswith("sam")]
    assert len(sam) == 2 * len(params.ablate.snr_db)  # sam at its largest sparsity only, on both channels
    assert (sam.misalignment == 0.0).all(), sam
    for channel in ("awgn", "rayleigh"):
        for snr in params.ablate.snr_db:
            assert set(df[(df.snr_db == snr) & (df.channel == channel)].method) == {
                "pretrained", f"sam γ={max(SPARSITIES):g}", "tuning_retune", "tuning_copy", "no_alignment", "equalizer",
                f"lora γ={max(SPARSITIES):g}", f"delta_topk γ={max(SPARSITIES):g}", "bitfit", "base_control"}
    # the channel matters: pretrained's own PSNR rises with the SNR (on AWGN, which it was trained on:
    # the tiny 2-epoch model is too weak to show a trend through fading) ...
    pre = df[(df.method == "pretrained") & (df.channel == "awgn")].sort_values("snr_db").domain_psnr.tolist()
    assert pre == sorted(pre) and pre[0] < pre[-1], pre
    # ... and each channel is really applied (the tiny model is too weak for fading to cost it much)
    pre = df[df.method == "pretrained"].pivot(index="snr_db", columns="channel", values="domain_psnr")
    assert (pre.rayleigh != pre.awgn).all(), pre
    assert "awgn and rayleigh" in finding and "rayleigh: " in finding


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


# --------------------------------------------------------------------------------------- 6. network
def test_network_view_sam_links_equal_the_pretrained_link(adapted):
    from pipeline.stages.ablate import network
    ctx = context(adapted)
    df = network(ctx)
    agents = [BASE_AGENT, *DOMAINS]
    pre = ctx.pretrained()
    reference = ctx.psnr(ctx.link(pre, pre), ctx.split("base_test"))
    pretrained = df[df.method == "pretrained"]
    assert len(pretrained) == len(agents) ** 2 and (pretrained.pair_psnr == reference).all()
    sam = df[df.method == "sam"]
    assert sorted(set(sam.sparsity)) == SPARSITIES
    assert len(sam) == len(SPARSITIES) * len(agents) ** 2  # base agent and diagonal included
    assert {(r.tx, r.rx) for r in sam.itertuples()} == {(x, y) for x in agents for y in agents}
    assert (sam.pair_psnr == reference).all(), sam[sam.pair_psnr != reference]
    # and the network view does see the misalignment of the unaligned tuned agents
    raw = df[df.method == "no_alignment"].set_index(["tx", "rx"]).pair_psnr
    assert all(raw[(x, y)] != reference for x, y in ordered_pairs(DOMAINS))


def test_ablation_finding_names_a_tie_instead_of_a_zero_margin():
    import pandas as pd

    from pipeline.stages.ablate import _best
    assert _best(pd.Series({"linear": 24.301, "uniform": 24.104, "product": 24.104})) == \
        "best: linear (+0.20 dB over the runner-up)"
    assert _best(pd.Series({"linear": 24.101, "uniform": 24.104, "product": 24.104})) == \
        "tie at 24.10 dB between linear, uniform, product"
    assert _best(pd.Series({"score": 23.0, "random": 23.5, "fisher": 23.502})) == "tie at 23.50 dB between random, fisher"


def test_switch_off_is_checked_bit_for_bit_on_every_zero_forget_cell(adapted):
    """Claim ZF (a guarantee: fails CI): every cell of every SWITCH_OFF_EXACT method is checked, and a
    variant whose switched-off link differs from W0 by one ulp is caught."""
    import pandas as pd

    from pipeline import claims
    from pipeline.methods import registry
    from pipeline.stages.evaluate import ExactReference, all_variants, switch_off_exact
    ctx = context(adapted)
    base_test = ExactReference.of(ctx, ctx.split("base_test"))
    exact = {n for n, m in registry().items() if getattr(m, "SWITCH_OFF_EXACT", False)}
    assert exact == {"sam", "lora", "delta_topk", "bitfit"}
    checked = [v for v in all_variants(ctx) if v.method in exact]
    assert len(checked) == 3 * len(ADAPTED_SPARSITIES) + 1
    assert all(switch_off_exact(ctx, v, base_test) for v in checked)
    v = checked[0]
    nudged = Variant(v.method, v.sparsity, v.local, lambda a, b: (lambda x, g: torch.nextafter(
        v.pair(a, b)(x, g), torch.tensor(2.0))), v.memory_bytes)
    assert not switch_off_exact(ctx, nudged, base_test)
    rows = pd.DataFrame([{"method": v.method, "variant": f"{v.method} {v.sparsity}", "seed": 0,
                          "metric": "switch_off_exact", "value": float(ok)} for v, ok in ((checked[0], True),
                                                                                       (checked[1], False))])
    entry = claims.zf_switch_off_exact(rows, {})
    assert entry["status"] == claims.FAIL and entry["measured"]["broken"] == [f"{checked[1].method} "
                                                                             f"{checked[1].sparsity} (seed 0)"]
    assert claims.zf_switch_off_exact(rows.iloc[:1], {})["status"] == claims.PASS
