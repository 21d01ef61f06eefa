"""Seeds and validation-based selection (pipeline/selection.py): the grid, the trials, the choice."""
import copy
import csv
import json

import pytest

from pipeline import selection
from pipeline.config import ConfigError
from pipeline.selection import Trial

from .conftest import adapt_every_cell, make_params


def test_trial_tags_keep_the_names_of_a_run_without_seeds_or_grid():
    assert Trial().tag == "" and Trial(1).tag == "s1" and Trial(0, 2).tag == "h2" and Trial(2, 1).tag == "s2-h1"


def test_grid_points_and_trial_params(tiny_params):
    tiny_params["search"] = {"tuning": {"tuning.lr": [0.001, 0.01], "tuning.retune_epochs": [1, 2]}}
    tiny_params["adapt"]["seeds"] = 2
    params = make_params(tiny_params)
    points = selection.grid_points(params, "tuning")
    assert points == [{"tuning.lr": a, "tuning.retune_epochs": b} for a in (0.001, 0.01) for b in (1, 2)]
    assert selection.grid_points(params, "sam") == [{}]
    assert len(selection.trials(params, "tuning")) == 8 and len(selection.trials(params, "sam")) == 2
    tp = selection.trial_params(params, points[3], seed=1)
    assert (tp.tuning.lr, tp.tuning.retune_epochs, tp.adapt.seed) == (0.01, 2, params.adapt.seed + 1)
    assert selection.trial_params(params, {}, 0) is params


@pytest.mark.parametrize("search,message", [
    ({"nosuch": {"tuning.lr": [1e-3]}}, r"search\.nosuch: unknown method"),
    ({"tuning": {"tuning.nosuch": [1e-3]}}, r"search\.tuning\.tuning\.nosuch: no such param"),
    ({"tuning": {"tuning": [1e-3]}}, r"must name a single param"),
    ({"sam": {"adapt.sparsities": [0.1]}}, r"not a hyper-parameter"),
    ({"sam": {"adapt.seed": [1]}}, r"not a hyper-parameter"),
    ({"tuning": {"tuning.lr": []}}, r"at least one value"),
    ({"tuning": {"tuning.lr": [1e-3, 1e-3]}}, r"unique"),
    ({"tuning": {"tuning.lr": [-1.0]}}, r"tuning\.lr"),  # each value passes the param's own check
])
def test_bad_grids_fail_in_one_line(tiny_params, search, message):
    tiny_params["search"] = search
    with pytest.raises(ConfigError, match=message) as err:
        params = make_params(tiny_params)
        for m in search:  # values are checked when a trial's params are made
            for point in selection.grid_points(params, m):
                selection.trial_params(params, point, 0)
    assert "\n" not in str(err.value)


def test_a_grid_key_outside_the_methods_params_is_refused(tiny_params):
    from pipeline.cells import check_grid, method_module
    tiny_params["search"] = {"equalizer": {"tuning.lr": [1e-3, 1e-2]}}
    with pytest.raises(ConfigError, match=r"search\.equalizer\.tuning\.lr: not among the method's params"):
        check_grid(make_params(tiny_params), method_module("equalizer"))


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_splits, mlflow_template):
    """A tiny project adapted with 2 seeds and 2-point tuning and sam grids (every method, then evaluate)."""
    import shutil

    import torch

    from pipeline import profile
    from pipeline.profile import shrink
    from pipeline.stages import evaluate, write_npy

    from .conftest import Project, adapted_raw
    root = tmp_path_factory.mktemp("searched") / "project"
    root.mkdir()
    shutil.copy(mlflow_template, root / "mlflow.db")
    raw = adapted_raw(shrink(profile.render("quick")))
    raw["adapt"]["seeds"] = 2
    raw["adapt"]["sparsities"] = [0.1]
    raw["search"] = {"tuning": {"tuning.lr": [0.0003, 0.03]}, "sam": {"adapt.value_lr": [0.003, 0.1]}}
    raw["ablate"]["sparsity"] = 0.1
    proj = Project(root, raw)
    proj.write_params()
    for name, arr in tiny_splits.items():
        write_npy(proj.paths.split(name), arr)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("ZFDA_EXECUTION", "pytest-searched")
        adapt_every_cell(proj.params, proj.paths)
        evaluate.main(proj.params, proj.paths)
    torch.set_num_threads(threads)
    return proj


def _val(paths, method, domain, sparsity, trial):
    return json.loads(paths.cell(method, domain, sparsity, trial.tag).metrics.read_text())["details"]["val_psnr"]


def test_every_trial_is_a_cell_and_seeds_redraw(searched):
    params, paths = searched.params, searched.paths
    for d in params.domains.names:
        for trial in selection.trials(params, "tuning"):
            assert paths.cell("tuning", d, None, trial.tag).metrics.is_file()
        # a seed re-draws the data order and the noise: another replicate, another number
        assert _val(paths, "tuning", d, None, Trial(0)) != _val(paths, "tuning", d, None, Trial(1))


def test_the_choice_is_the_best_mean_validation_psnr_and_ignores_test_numbers(searched):
    from pipeline.cells import method_module
    params, paths = searched.params, searched.paths
    module = method_module("tuning")
    chosen = selection.choose(params, paths, "tuning", module)
    for d in params.domains.names:
        means = [sum(_val(paths, "tuning", d, None, Trial(s, h)) for s in range(2)) / 2 for h in range(2)]
        assert chosen[(d, None)] == max(range(2), key=lambda h: means[h])
    # no test number steers a choice: make every cell's test PSNR absurd, the choice stays
    saved = {f: f.read_text() for f in paths.adapt("tuning").glob("*.json")}
    try:
        for f, text in saved.items():
            cell = json.loads(text)
            cell["domain_psnr"] = -1000.0 if "h1" in f.name else 1000.0
            f.write_text(json.dumps(cell))
        assert selection.choose(params, paths, "tuning", module) == chosen
    finally:
        for f, text in saved.items():
            f.write_text(text)


def test_evaluate_measures_every_seed_at_the_chosen_point_and_writes_the_grid(searched):
    params, paths = searched.params, searched.paths
    rows = list(csv.DictReader(paths.evaluation_csv.open()))
    seeds = {(r["method"], r["seed"]) for r in rows}
    assert {("tuning_copy", "0"), ("tuning_copy", "1"), ("sam", "1"), ("equalizer", "1")} <= seeds
    assert {s for m, s in seeds if m == "pretrained"} == {"0"}  # the reference is one model
    assert {r["metric"] for r in rows if r["method"] == "pretrained"} >= {"source_psnr"}
    grid = list(csv.DictReader(paths.validation_csv.open()))
    tuning = [r for r in grid if r["method"] == "tuning"]
    assert len(tuning) == 2 * len(params.domains.names)
    assert sum(r["chosen"] == "True" for r in tuning) == len(params.domains.names)
    assert {json.loads(r["setting"])["tuning.lr"] for r in tuning} == {0.0003, 0.03}
    assert all(r["setting"] == "(as params)" for r in grid if r["method"] == "equalizer")
    assert {json.loads(r["setting"])["adapt.value_lr"] for r in grid if r["method"] == "sam"} == {0.003, 0.1}
    # tuning_copy's domain PSNR of seed s is the chosen point's tuned agent of seed s on the test images
    from pipeline.cells import method_module
    chosen = selection.choose(params, paths, "tuning", method_module("tuning"))
    for r in rows:
        if r["method"] == "tuning_copy" and r["metric"] == "domain_psnr":
            cell = json.loads(paths.cell("tuning", r["domain"], None,
                                         Trial(int(r["seed"]), chosen[(r["domain"], None)]).tag).metrics.read_text())
            assert float(r["value"]) == pytest.approx(cell["domain_psnr"], abs=1e-5)


def test_the_mask_study_gives_every_mask_sams_grid_and_chooses_on_validation(searched):
    """The score mask is the main grid's cell at its chosen point; the random and Fisher masks are
    trained at every point of the same grid and chosen the same way, on validation PSNR only."""
    import matplotlib.pyplot as plt
    import torch

    from pipeline.methods import Context
    from pipeline.cells import method_module
    from pipeline.studies import mask
    params, paths = searched.params, searched.paths
    s = params.ablate.sparsity
    chosen = selection.choose(params, paths, "sam", method_module("sam"))
    df, finding, fig = mask.run(Context(params, paths, torch.device("cpu")))
    plt.close(fig)
    assert len(df) == 3 * len(params.ablate.domains)
    for r in df.itertuples():
        vals = [float(part.rsplit(": ", 1)[1]) for part in r.validation.split("; ")]
        assert len(vals) == 2 and r.point == max(range(2), key=lambda h: (vals[h], -h))
        assert round(r.val_psnr, 3) == vals[r.point]
        if r.mask == "score":
            assert r.point == chosen[(r.domain, s)]
            cell = json.loads(paths.cell("sam", r.domain, s, Trial(0, r.point).tag).metrics.read_text())
            assert r.domain_psnr == cell["domain_psnr"] and r.val_psnr == cell["details"]["val_psnr"]
    assert "paired bootstrap" in finding and "vs random" in finding and "vs fisher" in finding
