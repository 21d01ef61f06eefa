"""pipeline.batched: K cells trained in one stacked step equal K ``fit`` calls within rounding, do not leak
into each other, are deterministic, resume from each other's checkpoints, and give tuning's cell results."""
from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.batched import train_sam_cells, train_tuning_cells
from pipeline import batched
from pipeline.model import SCModel
from pipeline.train import deterministic_algorithms, fit

CPU = torch.device("cpu")
K, N, BATCH, EPOCHS = 3, 12, 8, 2  # 12 images in batches of 8: a full and a partial batch per epoch
# A parameter of K stacked cells after EPOCHS epochs (4 Adam steps) against its own fit: grouped
# convolutions sum in another order, so the weights differ by rounding (measured: at most 4e-7).
WEIGHT_TOL = 1e-5
LOSS_TOL = 1e-6  # relative, per epoch's mean train loss


@pytest.fixture(autouse=True)
def _one_thread():
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    deterministic_algorithms()
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def images(k: int, n: int = N) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(100 + k))


def runs(tmp_path, tag: str, data=None, lrs=(1e-3, 3e-3, 1e-2), epochs: int = EPOCHS, channel: str = "awgn",
         norm: str = "none"):
    """K cells of one width-4 model: each its own images, seed, lr and checkpoint."""
    torch.manual_seed(0)
    base = SCModel(width=4, channel=channel, norm=norm)
    out = []
    for k in range(K):
        m = copy.deepcopy(base)
        out.append(dict(module=m, optimizer=torch.optim.Adam(m.parameters(), lr=lrs[k]),
                        images=(data or [images(j) for j in range(K)])[k], epochs=epochs, batch_size=BATCH,
                        seed=k, device=CPU, checkpoint=tmp_path / f"{tag}-{k}.pt", key=f"cell{k}", desc=f"cell {k}"))
    return out


def sequential(rs):
    return [fit(**r, forward=r["module"]) for r in rs]


def states(rs):
    return [{n: t.clone() for n, t in r["module"].state_dict().items()} for r in rs]


@pytest.mark.parametrize("channel,norm", [("awgn", "none"), ("rayleigh", "none"), ("awgn", "gdn")])
def test_a_stacked_step_equals_one_fit_per_cell_within_rounding(tmp_path, channel, norm):
    one, many = runs(tmp_path, "one", channel=channel, norm=norm), runs(tmp_path, "many", channel=channel, norm=norm)
    h_one, h_many = sequential(one), batched.fit_cells(many)
    for k in range(K):
        diff = batched.max_abs_diff(one[k]["module"].state_dict(), many[k]["module"].state_dict())
        assert max(diff.values()) < WEIGHT_TOL, (k, max(diff.items(), key=lambda kv: kv[1]))
        assert [h["epoch"] for h in h_many[k]] == [1, 2]
        for a, b in zip(h_one[k], h_many[k], strict=True):
            assert abs(a["train_loss"] - b["train_loss"]) <= LOSS_TOL * a["train_loss"]
        s1, s2 = one[k]["optimizer"].state_dict(), many[k]["optimizer"].state_dict()
        assert s1["param_groups"] == s2["param_groups"]
        for i, st in s1["state"].items():
            assert float(st["step"]) == float(s2["state"][i]["step"]) == 4
            assert torch.allclose(st["exp_avg_sq"], s2["state"][i]["exp_avg_sq"], rtol=1e-3, atol=1e-12)
    # the cells really trained apart: different lrs and data give different weights
    w = [r["module"].encoder.net[0].weight for r in many]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])


def test_changing_one_cell_moves_no_other_cell_bit_for_bit(tmp_path):
    data = [images(k) for k in range(K)]
    ref = runs(tmp_path, "ref", data)
    batched.fit_cells(ref)
    changed = runs(tmp_path, "changed", [data[0], images(99), data[2]], lrs=(1e-3, 5e-2, 1e-2))
    batched.fit_cells(changed)
    a, b = states(ref), states(changed)
    for k in (0, 2):
        assert all(torch.equal(a[k][n], b[k][n]) for n in a[k]), f"cell {k} moved when cell 1 changed"
    assert any(not torch.equal(a[1][n], b[1][n]) for n in a[1])


def test_two_batched_runs_give_the_same_bytes(tmp_path):
    first, second = runs(tmp_path, "first"), runs(tmp_path, "second")
    h1, h2 = batched.fit_cells(first), batched.fit_cells(second)
    assert h1 == h2
    for a, b in zip(states(first), states(second)):
        assert all(torch.equal(a[n], b[n]) for n in a)
    for k in range(K):
        assert (tmp_path / f"first-{k}.pt").read_bytes() != b""
        s1 = torch.load(tmp_path / f"first-{k}.pt", weights_only=True)
        s2 = torch.load(tmp_path / f"second-{k}.pt", weights_only=True)
        assert all(torch.equal(s1["module"][n], s2["module"][n]) for n in s1["module"])


def test_a_batched_checkpoint_resumes_in_fit_and_back(tmp_path):
    """Epoch 1 batched, epoch 2 by fit from its checkpoint (and the reverse) = both epochs in one path,
    within rounding: both write and read fit's checkpoint format."""
    whole = runs(tmp_path, "whole")
    batched.fit_cells(whole)
    part = runs(tmp_path, "part", epochs=1)
    batched.fit_cells(part)
    rest = runs(tmp_path, "part")  # same checkpoints, two epochs: fit resumes at epoch 1
    hist = sequential(rest)
    assert [h["epoch"] for h in hist[0]] == [1, 2]
    for a, b in zip(states(whole), states(rest)):
        assert max(batched.max_abs_diff(a, b).values()) < WEIGHT_TOL
    back = runs(tmp_path, "back", epochs=1)
    sequential(back)
    again = runs(tmp_path, "back")
    assert [h["epoch"] for h in batched.fit_cells(again)[2]] == [1, 2]
    for a, b in zip(states(whole), states(again)):
        assert max(batched.max_abs_diff(a, b).values()) < WEIGHT_TOL


def test_unequal_cells_are_refused_in_one_line(tmp_path):
    rs = runs(tmp_path, "bad")
    rs[1]["images"] = images(1, N + 1)
    with pytest.raises(ValueError, match="cell 1 has 13 images, cell 0 12"):
        batched.fit_cells(rs)
    rs = runs(tmp_path, "bad")
    rs[2]["module"] = SCModel(width=8)
    with pytest.raises(ValueError, match="cell 2 has other parameter shapes"):
        batched.fit_cells(rs)
    assert [len(g) for g in batched.groups(rs)] == [2, 1]


def test_use_batched_batches_on_cuda_from_two_cells_and_on_the_cpu_from_the_measured_crossover(monkeypatch):
    assert not batched.use_batched("cuda", 1) and batched.use_batched("cuda", 2)
    monkeypatch.setattr(batched, "CPU_CROSSOVER", {1: None, 2: 8})
    assert not batched.use_batched("cpu", 1, threads=2) and not batched.use_batched("cpu", 7, threads=2)
    assert batched.use_batched("cpu", 8, threads=2) and batched.use_batched("cpu", 16, threads=2)
    assert not batched.use_batched("cpu", 64, threads=1) and not batched.use_batched("cpu", 64, threads=4)


class _Tracker:
    def log_history(self, history, prefix: str = "") -> None:
        self.logged = getattr(self, "logged", []) + [(prefix, history)]


def synthetic_project(root, **adapt):
    """Tiny params (``adapt`` overriding its adapt block), a seeded random width-4 "pretrained" model and
    random uint8 splits (what a tuning or sam cell reads)."""
    import numpy as np

    from pipeline import config, profile
    from pipeline.paths import Paths
    from pipeline.stages import write_npy
    from pipeline.train import build_model, save_model
    raw = profile.shrink(profile.render("quick"))
    raw["adapt"].update(adapt)
    params = config.parse(raw)
    paths = Paths.of(params, root)
    torch.manual_seed(0)
    paths.pretrained.parent.mkdir(parents=True, exist_ok=True)
    save_model(build_model(params), paths.pretrained, {"profile": params.profile})
    rng = np.random.default_rng(0)
    d = params.domains
    sizes = {"base_train": d.n_train, **{f"{n}_{s}": getattr(d, f"n_{s}") for n in d.names for s in ("train", "val", "test")}}
    for name, n in sizes.items():
        paths.split(name).parent.mkdir(parents=True, exist_ok=True)
        write_npy(paths.split(name), rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    return params, paths


def test_tuning_cells_batched_give_tunings_results(tmp_path, monkeypatch):
    """train_tuning_cells (both trainings batched, 4 cells a step) against tuning.adapt_cells one fit
    after another, 4 domains of tiny params: every PSNR within 0.01 dB, losses within 1e-5 relative,
    the same memory and keys."""
    from pipeline.methods import Context, tuning
    from pipeline.paths import Cell
    params, paths = synthetic_project(tmp_path)
    domains = list(params.domains.names)

    def cells(tag):
        ck = [tmp_path / tag / "ck" / d for d in domains]
        outs = [Cell(tmp_path / tag, d, c) for d, c in zip(domains, ck)]
        outs[0].folder.mkdir(parents=True)
        return [Context(params, paths, CPU, checkpoints=c) for c in ck], domains, outs, [_Tracker() for _ in domains]

    monkeypatch.setattr(batched, "CPU_CROSSOVER", {1: 2})
    stacked = []
    monkeypatch.setattr(batched, "fit_cells", lambda runs, f=batched.fit_cells: stacked.append(len(runs)) or f(runs))
    ctxs, names, outs, trackers = cells("seq")
    seq = tuning.adapt_cells(ctxs, names, [None] * len(ctxs), outs, trackers)
    bat = train_tuning_cells(*cells("bat"))
    assert stacked == [4, 4], "the domain's and the re-tuning's trainings: one stacked fit of 4 cells each"
    assert len(seq) == len(bat) == len(domains)
    for a, b in zip(seq, bat):
        assert a.keys() == b.keys() and a["details"].keys() == b["details"].keys()
        assert a["memory_bytes"] == b["memory_bytes"] and a["domain"] == b["domain"]
        assert abs(a["domain_psnr"] - b["domain_psnr"]) < 0.01
        for key in ("val_psnr", "domain_psnr_after_retune", "forgetting_db"):
            assert abs(a["details"][key] - b["details"][key]) < 0.01, key
        for curve in ("curve", "retune_curve"):
            for x, y in zip(a["details"][curve], b["details"][curve], strict=True):
                assert abs(x["train_loss"] - y["train_loss"]) <= 1e-5 * x["train_loss"]


@pytest.mark.parametrize("score_optimizer", ["adam", "sgd"])
def test_sam_cells_batched_give_sams_results(tmp_path, monkeypatch, score_optimizer):
    """train_sam_cells (8 cells, two sparsities, in one stacked fit) against sam.adapt_cells one fit after
    another: 2 epochs, the second with the mask frozen; every PSNR (stored SAM, per-epoch curve) within
    0.01 dB, the same kept entries per layer and mask movement, losses within 1e-5 relative."""
    from pipeline.methods import Context, sam
    from pipeline.paths import Cell
    params, paths = synthetic_project(tmp_path, epochs=2, freeze_epochs=1, score_optimizer=score_optimizer)
    cells = [(d, s) for d in params.domains.names for s in (0.01, 0.1)]

    def args(tag):
        ck = [tmp_path / tag / "ck" / f"{d}-{s}" for d, s in cells]
        outs = [Cell(tmp_path / tag, f"{d}-{s:g}", c) for (d, s), c in zip(cells, ck)]
        outs[0].folder.mkdir(parents=True)
        return ([Context(params, paths, CPU, checkpoints=c) for c in ck], [d for d, _ in cells], [s for _, s in cells],
                outs, [_Tracker() for _ in cells])

    stacked = []
    monkeypatch.setattr(batched, "fit_cells", lambda runs, f=batched.fit_cells: stacked.append(len(runs)) or f(runs))
    seq = sam.adapt_cells(*args("seq"))
    bat = train_sam_cells(*args("bat"), batch=True)
    assert stacked == [8]
    for a, b in zip(seq, bat, strict=True):
        assert a.keys() == b.keys() and a["details"].keys() == b["details"].keys()
        assert (a["domain"], a["sparsity"], a["memory_bytes"]) == (b["domain"], b["sparsity"], b["memory_bytes"])
        assert a["details"]["kept_per_layer"] == b["details"]["kept_per_layer"]
        assert abs(a["domain_psnr"] - b["domain_psnr"]) < 0.01 and abs(a["details"]["val_psnr"] - b["details"]["val_psnr"]) < 0.01
        for key in ("mask_moved_fraction", "stored_mask_unseen_fraction"):
            assert a["details"][key] == b["details"][key], key
        for x, y in zip(a["details"]["curve"], b["details"]["curve"], strict=True):
            assert abs(x["train_loss"] - y["train_loss"]) <= 1e-5 * x["train_loss"]
            assert abs(x["domain_psnr"] - y["domain_psnr"]) < 0.01 and x["mask_changed"] == y["mask_changed"]


# ------------------------------------------------------------------------------ benchmarks.batched
def test_crossover_is_the_smallest_k_from_which_every_larger_k_pays():
    from benchmarks.batched import crossover
    assert crossover({1: 1.2, 4: 1.1, 8: 1.3, 16: 1.2}) == 4  # K = 1 never counts: nothing is batched there
    assert crossover({1: 0.9, 4: 1.1, 8: 0.95, 16: 1.2}) == 16
    assert crossover({1: 0.9, 4: 0.9, 8: 0.8}) is None


def test_benchmark_writes_its_section_and_keeps_the_others(tmp_path):
    """The whole module with tiny sizes: every equality row PASS, one speed row per K, the per-tensor and
    per-metric tables, the sections of other modules left as they were."""
    import re

    from benchmarks import batched as bench
    from benchmarks.gpu import BEGIN, END
    out = tmp_path / "benchmarks.md"
    other = f"{BEGIN}\n## GPU: kept\n{END}\n"
    out.write_text("# zfda-bench benchmarks\n\n| cpu table |\n\n" + other)
    assert bench.main(["--tiny", "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# zfda-bench benchmarks\n\n| cpu table |\n\n" + other)
    body = text.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    rows = {r[0]: r for r in ([c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in body.splitlines()
                              if ln.startswith("|") and not set(ln) <= set("|:- "))}
    eq = [r for n, r in rows.items() if n.startswith(("Batched tuning cells", "No leak", "Batched sam cells"))]
    # the weights and sam's masks: reported, not judged; the masks agree here, so sam's losses are judged
    assert len(eq) == 8 and [r[4] for r in eq] == ["INFO"] + ["PASS"] * 4 + ["INFO"] + ["PASS"] * 2
    assert sum(n.startswith("Batched / sequential cells/s, K=") for n in rows) == 2  # K 1 and 2 (tiny)
    assert "encoder.net.0.weight" in rows and "domain_psnr" in rows and "curve.train_loss" in rows
    assert "**cpu**:" in body and "**cpu_flags**:" in body
