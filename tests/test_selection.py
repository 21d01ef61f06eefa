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


# ------------------------------------------------------------------------------------ the extension
def _lr_surface(best: float):
    """A validation surface with its optimum at lr = ``best`` (a parabola in log10 lr)."""
    import math
    return lambda p: -(math.log10(p["tuning.lr"]) - math.log10(best)) ** 2


def _search_until_done(params, method, surface, cells, rounds=20):
    """The adapt stage's loop with ``surface`` for validation PSNR (no training): extend until nothing is
    added; the extended points and each cell's final (choice, per-key statuses)."""
    entries = []
    for _ in range(rounds):
        first = len(selection.grid_points(params, method))
        points = selection.grid_points(params, method) + [e["setting"] for e in entries]
        scores = {c: {h: surface(points[h]) for h in [*range(first), *(first + i for i, e in enumerate(entries)
                                                                      if list(c) in e["cells"])]} for c in cells}
        grown = selection.extend(params, method, entries, scores)
        if grown == entries:
            return entries, {c: selection.line_search(params, method, points, s) for c, s in scores.items()}
        entries = grown
    raise AssertionError(f"the extension did not stop in {rounds} rounds")


CELLS = [("VA", None), ("VH", None)]


@pytest.mark.parametrize("cap,found,state", [(3, 0.027, selection.INTERIOR), (2, 0.027, selection.CAPPED),
                                             (1, 0.009, selection.CAPPED), (0, 0.003, selection.EDGE)])
def test_an_optimum_beyond_the_grid_is_found_within_the_cap(tiny_params, cap, found, state):
    """Optimum at lr 0.03, grid [0.001, 0.003] (ratio 3): the steps are 0.009, 0.027, 0.081, at most ``cap``
    of them; the best tried is interior once a worse value lies beyond it, else capped at max_extend."""
    tiny_params["search"] = {"max_extend": cap, "tuning": {"tuning.lr": [0.001, 0.003]}}
    params = make_params(tiny_params)
    entries, final = _search_until_done(params, "tuning", _lr_surface(0.03), CELLS)
    assert [e["setting"]["tuning.lr"] for e in entries] == [0.009, 0.027, 0.081][:cap]
    assert all(e["cells"] == [list(c) for c in CELLS] for e in entries)
    points = selection.grid_points(params, "tuning") + [e["setting"] for e in entries]
    for best, keys in final.values():
        assert points[best]["tuning.lr"] == found and keys == {"tuning.lr": (state, None)}


def test_an_interior_optimum_is_not_extended(tiny_params):
    tiny_params["search"] = {"max_extend": 2, "tuning": {"tuning.lr": [0.001, 0.003, 0.009]}}
    params = make_params(tiny_params)
    entries, final = _search_until_done(params, "tuning", _lr_surface(0.003), CELLS)
    assert entries == []
    assert all(best == 1 and keys == {"tuning.lr": (selection.INTERIOR, None)} for best, keys in final.values())


def test_the_extension_goes_down_as_well_and_only_for_the_cells_on_that_edge(tiny_params):
    tiny_params["search"] = {"max_extend": 2, "tuning": {"tuning.lr": [0.001, 0.003]}}
    params = make_params(tiny_params)
    va, vh = _lr_surface(0.0003), _lr_surface(0.002)  # VA wants less; VH's best is inside the grid
    scores = {("VA", None): {0: va({"tuning.lr": 0.001}), 1: va({"tuning.lr": 0.003})},
              ("VH", None): {0: vh({"tuning.lr": 0.001}), 1: vh({"tuning.lr": 0.003})}}
    entries = selection.extend(params, "tuning", [], scores)
    # VH's choice (0.003) is on an edge too: both cells get their own step, in cell order
    assert entries == [{"setting": {"tuning.lr": 0.000333333333333}, "cells": [["VA", None]]},
                       {"setting": {"tuning.lr": 0.009}, "cells": [["VH", None]]}]


def test_a_step_the_schema_refuses_is_capped_by_range(tiny_params):
    """tuning.retune_epochs [1, 2] with the optimum below: the step to 0 leaves the key's range (≥ 1)."""
    tiny_params["search"] = {"max_extend": 2, "tuning": {"tuning.retune_epochs": [1, 2]}}
    params = make_params(tiny_params)
    points = selection.grid_points(params, "tuning")
    best, keys = selection.line_search(params, "tuning", points, {0: 20.0, 1: 19.0})
    assert (best, keys) == (0, {"tuning.retune_epochs": (selection.RANGE, None)})
    assert selection.extend(params, "tuning", [], {("VA", None): {0: 20.0, 1: 19.0}}) == []
    # upwards the int step is the grid's own difference
    _, keys = selection.line_search(params, "tuning", points, {0: 19.0, 1: 20.0})
    assert keys == {"tuning.retune_epochs": (selection.EXTEND, {"tuning.retune_epochs": 3})}


def test_a_rule_across_keys_caps_a_step_by_range(tiny_params):
    """adapt.freeze_epochs must stay below adapt.epochs (1 in the tiny params): [0, ...] cannot step up."""
    tiny_params["adapt"]["epochs"] = 3
    tiny_params["search"] = {"max_extend": 2, "sam": {"adapt.freeze_epochs": [0, 1]}}
    params = make_params(tiny_params)
    points = selection.grid_points(params, "sam")
    _, keys = selection.line_search(params, "sam", points, {0: 1.0, 1: 2.0})
    assert keys == {"adapt.freeze_epochs": (selection.EXTEND, {"adapt.freeze_epochs": 2})}
    _, keys = selection.line_search(params, "sam", points + [{"adapt.freeze_epochs": 2}], {0: 1.0, 1: 2.0, 2: 3.0})
    assert keys == {"adapt.freeze_epochs": (selection.RANGE, None)}  # 3 is not below adapt.epochs = 3


def test_two_keys_step_one_at_a_time_from_the_chosen_point(tiny_params):
    import math
    tiny_params["search"] = {"max_extend": 1,
                             "tuning": {"tuning.lr": [0.001, 0.003], "tuning.retune_epochs": [1, 2]}}
    params = make_params(tiny_params)

    def surface(p):  # lr wants 0.01 (up), epochs are best at 2 (inside once 3 is tried)
        return -(math.log10(p["tuning.lr"]) + 2) ** 2 - (p["tuning.retune_epochs"] - 2) ** 2

    entries, final = _search_until_done(params, "tuning", surface, CELLS[:1])
    assert [e["setting"] for e in entries] == [{"tuning.lr": 0.009, "tuning.retune_epochs": 2},
                                               {"tuning.lr": 0.003, "tuning.retune_epochs": 3},
                                               {"tuning.lr": 0.009, "tuning.retune_epochs": 3}][:len(entries)]
    best, keys = final[CELLS[0]]
    points = selection.grid_points(params, "tuning") + [e["setting"] for e in entries]
    assert points[best] == {"tuning.lr": 0.009, "tuning.retune_epochs": 2}
    assert keys == {"tuning.lr": (selection.CAPPED, None), "tuning.retune_epochs": (selection.INTERIOR, None)}
    assert selection.status(keys) == "tuning.lr: capped (max_extend); tuning.retune_epochs: interior"


def test_next_value_keeps_the_grids_ratio_or_step():
    assert selection.next_value([0.001, 0.003], up=True, n=0) == 0.009
    assert selection.next_value([0.001, 0.003], up=True, n=1) == 0.027
    assert selection.next_value([0.3, 1.0, 3.0], up=False, n=0) == 0.09
    assert selection.next_value([1, 2, 4], up=True, n=1) == 8 and isinstance(selection.next_value([1, 2], True, 0), int)
    assert selection.next_value([-1.0, 0.5], up=True, n=0) == 2.0  # not all positive: the difference
    assert selection.searched_keys({"a": (1, 2), "b": (0.1,), "c": ("x", "y")}) == ["a"]


@pytest.mark.parametrize("value,message", [(-1, "greater than or equal to 0"), (True, "valid integer"),
                                           (11, "less than or equal to 10")])
def test_max_extend_is_checked_in_one_line(tiny_params, value, message):
    tiny_params["search"] = {"max_extend": value}
    with pytest.raises(ConfigError, match=rf"search\.max_extend = {value!r}: .*{message}") as err:
        make_params(tiny_params)
    assert "\n" not in str(err.value)


def _fake_cells(paths, method, cells, values: dict[int, float], seeds=1):
    from pipeline.storage import write_json
    for d, s in cells:
        for h, v in values.items():
            for seed in range(seeds):
                write_json(paths.cell(method, d, s, Trial(seed, h).tag).metrics, {"details": {"val_psnr": v + seed}})


def test_choose_and_the_table_read_the_extended_points(project):
    """Fake cells and a grid.json: the choice is the extended point, the table says where each point comes
    from and the choice's status; a cell the extension did not add has no row."""
    from pipeline.cells import method_module
    raw = project.raw
    raw["search"] = {"max_extend": 1, "tuning": {"tuning.lr": [0.001, 0.003]}}
    project.write_params(raw)
    params, paths, module = project.params, project.paths, method_module("tuning")
    cells = selection.cell_grid(params, module)
    _fake_cells(paths, "tuning", cells, {0: 20.0, 1: 21.0})
    _fake_cells(paths, "tuning", cells[:1], {2: 22.0})
    assert selection.choose(params, paths, "tuning", module) == {c: 1 for c in cells}  # no grid.json yet
    selection.write_extended(paths, "tuning", [{"setting": {"tuning.lr": 0.009}, "cells": [list(cells[0])]}], 2)
    assert selection.grid_points(params, "tuning", paths)[2] == {"tuning.lr": 0.009}
    assert selection.choose(params, paths, "tuning", module) == {cells[0]: 2, **{c: 1 for c in cells[1:]}}
    rows = selection.validation_table(params, paths, "tuning", module)
    first = [r for r in rows if r["domain"] == cells[0][0]]
    assert [(r["point"], r["origin"], r["chosen"], r["choice"]) for r in first] == [
        (0, "grid", False, ""), (1, "grid", False, ""), (2, "extension", True, selection.CAPPED)]
    others = [r for r in rows if r["domain"] != cells[0][0]]
    assert {r["point"] for r in others} == {0, 1}
    assert {r["choice"] for r in others if r["chosen"]} == {selection.EDGE}  # a step never taken: not searched
    assert list(rows[0]) == selection.FIELDS


def test_a_grid_file_of_another_grid_is_refused_in_one_line(project):
    raw = project.raw
    raw["search"] = {"max_extend": 1, "tuning": {"tuning.lr": [0.001, 0.003]}}
    project.write_params(raw)
    selection.write_extended(project.paths, "tuning", [{"setting": {"tuning.epochs": 3}, "cells": [["VA", None]]}], 2)
    with pytest.raises(ValueError, match=r"grid\.json: point 2 .* is not an extension of search\.tuning") as err:
        selection.grid_points(project.params, "tuning", project.paths)
    assert "\n" not in str(err.value)


def test_the_adapt_stage_trains_the_extended_cells_and_evaluate_reads_them(prepared, capsys):
    """sam and tuning on 2-point grids with max_extend 1: every choice is on an edge, so each cell gets
    one step beyond it (for sam it wins); lora (NEEDS sam) is keyed on sam's final choice; evaluate measures the chosen
    points (extended ones included) and lists them; a re-run computes nothing."""
    from pipeline.cells import method_module, plan
    from pipeline.stages import evaluate

    from .conftest import adapted_raw
    raw = adapted_raw(prepared.raw)
    raw["adapt"]["methods"] = ["sam", "tuning", "lora"]
    raw["adapt"]["sparsities"] = [0.1]
    # both grids sit above the tiny project's best rates (value lr 0.003, tuning lr 3e-4): the step down wins
    raw["search"] = {"max_extend": 1, "tuning": {"tuning.lr": [0.003, 0.03]}, "sam": {"adapt.value_lr": [0.03, 0.1]}}
    prepared.write_params(raw)
    params, paths = prepared.params, prepared.paths
    adapt_every_cell(params, paths)
    out = capsys.readouterr().out
    for method in ("sam", "tuning"):
        module = method_module(method)
        cells = selection.cell_grid(params, module)
        grid = json.loads((paths.adapt(method) / "grid.json").read_text())["extended"]
        assert sorted(tuple(c) for e in grid for c in e["cells"]) == sorted(cells)  # one step for each cell
        for e in grid:
            for d, s in e["cells"]:
                assert paths.cell(method, d, s, Trial(0, e["point"]).tag).metrics.is_file()
            assert {e["point"] for e in grid} <= {2, 3}
        assert len(list(paths.adapt(method).glob("*.json"))) == 2 * len(cells) + len(cells) + 1  # + grid.json
        rows = selection.validation_table(params, paths, method, module)
        assert {r["choice"] for r in rows if r["chosen"]} <= {selection.INTERIOR, selection.CAPPED}
        assert sum(r["origin"] == "extension" for r in rows) == len(cells)
    assert not (paths.adapt("lora") / "grid.json").exists()  # no grid: nothing extended, no file
    sam_choice = selection.choose(params, paths, "sam", method_module("sam"))
    (lora_task,) = {t.chosen for t in plan(params, paths, method_module("lora"))}
    assert dict(dict(lora_task)["sam"]) == sam_choice
    assert "extended points" in out
    # the grid's own cells keep their keys: planned without an extension (max_extend 0) they are the same
    raw0 = json.loads(json.dumps(raw))
    raw0["search"]["max_extend"] = 0
    params0 = make_params(raw0)
    for method in ("sam", "tuning"):
        planned = {t.stored for t in plan(params, paths, method_module(method))}
        assert {t.stored for t in plan(params0, paths, method_module(method))} <= planned
    evaluate.main(params, paths)
    grid = list(csv.DictReader(paths.validation_csv.open()))
    assert {r["origin"] for r in grid if r["method"] == "sam"} == {"grid", "extension"}
    picks = {(r["method"], r["origin"], r["choice"]) for r in grid if r["method"] != "lora" and r["chosen"] == "True"}
    assert ("sam", "extension", selection.CAPPED) in picks  # the step taken wins: capped at max_extend 1
    assert {p[1:] for p in picks} <= {("extension", selection.CAPPED), ("grid", selection.INTERIOR)}
    chosen = selection.choose(params, paths, "sam", method_module("sam"))
    for r in csv.DictReader(paths.evaluation_csv.open()):
        if r["method"] == "sam" and r["metric"] == "domain_psnr":
            cell = paths.cell("sam", r["domain"], 0.1, Trial(0, chosen[(r["domain"], 0.1)]).tag)
            assert float(r["value"]) == pytest.approx(json.loads(cell.metrics.read_text())["domain_psnr"], abs=1e-5)
    adapt_every_cell(params, paths)
    assert "0 computed" in capsys.readouterr().out.splitlines()[-1]


def test_an_unreadable_grid_file_is_refused_in_one_line(project):
    raw = project.raw
    raw["search"] = {"max_extend": 1, "tuning": {"tuning.lr": [0.001, 0.003]}}
    project.write_params(raw)
    path = project.paths.adapt("tuning") / "grid.json"
    path.parent.mkdir(parents=True)
    for text in ("{", '{"points": []}', '{"extended": [{"point": 2}]}'):
        path.write_text(text)
        with pytest.raises(ValueError, match=r"grid\.json unusable \(\w+: .*\); re-run the adapt stage") as err:
            selection.grid_points(project.params, "tuning", project.paths)
        assert "\n" not in str(err.value)


def test_scoring_seeds_score_the_grid_and_the_other_seeds_train_at_the_choice_only(prepared, capsys):
    """search.seeds 1 of adapt.seeds 2: seed 0 trains at every point and alone decides the choice; seed 1
    trains at the chosen point only, as the same cell (same key) a run scoring every seed trains; evaluate
    measures both seeds there; sam (no grid: nothing to choose) trains every seed."""
    from pipeline.cells import method_module, plan
    from pipeline.stages import evaluate

    from .conftest import adapted_raw
    raw = adapted_raw(prepared.raw)
    raw["adapt"]["methods"] = ["sam", "tuning"]
    raw["adapt"]["sparsities"] = [0.1]
    raw["adapt"]["seeds"] = 2
    raw["search"] = {"seeds": 1, "tuning": {"tuning.lr": [0.0003, 0.003]}}
    prepared.write_params(raw)
    params, paths, module = prepared.params, prepared.paths, method_module("tuning")
    assert selection.scoring_seeds(params, "tuning") == 1 and selection.scoring_seeds(params, "sam") == 2
    adapt_every_cell(params, paths)
    cells = selection.cell_grid(params, module)
    chosen = selection.choose(params, paths, "tuning", module)
    for d, s in cells:
        val = {h: json.loads(paths.cell("tuning", d, s, Trial(0, h).tag).metrics.read_text())["details"]["val_psnr"]
               for h in (0, 1)}
        assert chosen[(d, s)] == max(val, key=val.get)  # seed 0 alone decides
        assert paths.cell("tuning", d, s, Trial(1, chosen[(d, s)]).tag).metrics.is_file()
        assert not paths.cell("tuning", d, s, Trial(1, 1 - chosen[(d, s)]).tag).metrics.exists()
    assert len(list(paths.adapt("tuning").glob("*.json"))) == 3 * len(cells)
    assert len(list(paths.adapt("sam").glob("*.json"))) == 2 * len(selection.cell_grid(params, method_module("sam")))
    rows = selection.validation_table(params, paths, "tuning", module)
    assert len(rows) == 2 * len(cells)  # one row per point, read from the scoring seed
    # the same cells as a run scoring every seed: planned with search.seeds 0 they are a superset
    raw_all = json.loads(json.dumps(raw))
    raw_all["search"]["seeds"] = 0
    every = {t.stored for t in plan(make_params(raw_all), paths, module)}
    mine = plan(params, paths, module, replicas=chosen)
    assert len(mine) == 3 * len(cells) and {t.stored for t in mine} <= every
    evaluate.main(params, paths)
    seeds = {r["seed"] for r in csv.DictReader(paths.evaluation_csv.open()) if r["method"] == "tuning_copy"}
    assert seeds == {"0", "1"}
    adapt_every_cell(params, paths)
    assert "0 computed" in capsys.readouterr().out.splitlines()[-1]


def test_search_seeds_is_checked_in_one_line(tiny_params):
    tiny_params["search"] = {"seeds": -1}
    with pytest.raises(ConfigError, match=r"search\.seeds = -1: .*greater than or equal to 0") as err:
        make_params(tiny_params)
    assert "\n" not in str(err.value)
