"""The evaluation (pipeline/evaluation.py, stage ``evaluate``) on the shared adapted project: every
method, sparsity and metric measured as SPEC.md defines them; sam's links are the pretrained link bit for
bit (C1) and its switch-off is checked bit for bit (ZF)."""
from __future__ import annotations

import csv
import json

import torch

from pipeline.methods import BASE_AGENT, Variant
from pipeline.metrics import ordered_pairs

from .conftest import ADAPTED_DOMAINS, ADAPTED_SPARSITIES, cell, context

DOMAINS, SPARSITIES = ADAPTED_DOMAINS, ADAPTED_SPARSITIES


def state_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def n_parameters(project) -> int:
    from pipeline.train import load_model
    return sum(p.numel() for p in load_model(project.params, project.paths.pretrained).parameters())


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
    from pipeline.evaluation import all_variants
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
    for v in all_variants(ctx):
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


def test_switch_off_is_checked_bit_for_bit_on_every_zero_forget_cell(adapted):
    """Claim ZF (a guarantee: fails CI): every cell of every SWITCH_OFF_EXACT method is checked, and a
    variant whose switched-off link differs from W0 by one ulp is caught."""
    import pandas as pd

    from pipeline import claims
    from pipeline.methods import registry
    from pipeline.evaluation import ExactReference, all_variants, switch_off_exact
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
