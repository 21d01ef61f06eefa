"""params schema and profiles (dvc.yaml against the code and the paths: tests/test_dvc.py)."""
from __future__ import annotations

import copy
import math
import re

import pytest
import yaml

from pipeline import config, profile
from pipeline.config import BUILTIN_PHOTOS, ConfigError, parse
from pipeline.paths import REPO as ROOT

PROFILES = ("quick", "ci", "paper")
SOURCES = (None, "builtin", "cifar100", "cifar10", "folder")


def quick() -> dict:
    return profile.render("quick")


# ------------------------------------------------------------------------------------------ profiles
def test_params_yaml_is_written_by_the_profile_command(tmp_path):
    """The committed params.yaml is byte for byte what `python -m pipeline.profile quick --source builtin` writes."""
    committed = (ROOT / "params.yaml").read_text()
    assert yaml.safe_load(committed) == profile.render("quick", "builtin")
    out = tmp_path / "params.yaml"
    assert profile.main(["quick", "--source", "builtin", "--out", str(out)]) == 0
    assert out.read_text() == committed


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_renders_and_validates(name, source):
    raw = profile.render(name, source)
    params = parse(raw)
    assert params.profile == name
    own = yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text()).get("data", {}).get("source")
    assert params.data.source == (source or own or quick()["data"]["source"])
    assert params.run_name == f"{params.data.source}-{name}"


@pytest.mark.parametrize("name", ("ci", "paper"))
def test_overlays_only_override_keys_of_the_quick_profile(name):
    """An overlay's typo would otherwise add an unused key; it must name existing keys only."""
    overlay = yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())
    base = quick()

    def walk(o, b, prefix):
        for k, v in o.items():
            assert k in b, f"{prefix}{k} is not a key of profiles/quick.yaml"
            if isinstance(v, dict):
                walk(v, b[k], f"{prefix}{k}.")
    walk(overlay, base, "")
    merged = profile.render(name)
    for k, v in overlay.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                assert merged[k][kk] == vv


def test_profiles_keep_the_paper_hyper_parameters():
    """SPEC: the paper profile uses 30 adaptation epochs, score lr 1 and value lr 1e-4 on CIFAR-100."""
    paper = parse(profile.render("paper"))
    assert (paper.adapt.epochs, paper.adapt.score_lr, paper.adapt.value_lr) == (30, 1.0, 1e-4)
    assert paper.data.source == "cifar100"
    assert parse(profile.render("ci")).data.source == "cifar100"


def test_render_with_source_does_not_change_the_profile_files():
    before = (ROOT / "profiles" / "quick.yaml").read_text()
    profile.render("quick", "cifar100")
    assert (ROOT / "profiles" / "quick.yaml").read_text() == before
    assert profile.render("quick")["data"]["source"] == yaml.safe_load(before)["data"]["source"]


def test_profile_command_writes_the_rendered_params(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert profile.main(["ci", "--source", "builtin", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Written by `python -m pipeline.profile ci --source builtin`")
    assert yaml.safe_load(text) == profile.render("ci", "builtin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no temporary file left


def test_ablations_are_off_in_quick_and_on_with_the_flag_and_in_ci_and_paper(tmp_path):
    """The quick profile skips the ablations for its time budget; --ablations turns them on,
    and the ci and paper profiles run every study."""
    from pipeline.studies import names
    assert parse(profile.render("quick")).ablate.studies == ()
    for name in ("ci", "paper"):
        assert parse(profile.render(name)).ablate.studies == names()
    out = tmp_path / "params.yaml"
    assert profile.main(["quick", "--source", "cifar100", "--ablations", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Written by `python -m pipeline.profile quick --source cifar100 --ablations`")
    raw = yaml.safe_load(text)
    assert tuple(raw["ablate"]["studies"]) == names()
    quick_raw = profile.render("quick", "cifar100")
    raw["ablate"]["studies"] = []
    assert raw == quick_raw  # the flag changes nothing else


def test_profile_command_writes_nothing_for_an_unknown_profile(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert profile.main(["turbo", "--out", str(out)]) == 2
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "turbo" in err and "quick" in err


def test_profile_command_keeps_the_old_file_for_an_unknown_profile(tmp_path):
    out = tmp_path / "params.yaml"
    out.write_text("old\n")
    assert profile.main(["nope", "--out", str(out)]) == 2
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


def test_profile_command_folder_sets_the_source_and_the_path(tmp_path):
    out, photos = tmp_path / "params.yaml", tmp_path / "photos"
    assert profile.main(["quick", "--source", "folder", "--folder", str(photos), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"# Written by `python -m pipeline.profile quick --source folder --folder {photos}`")
    params = parse(yaml.safe_load(text))
    assert (params.data.source, params.data.folder.path, params.run_name) == ("folder", str(photos), "folder-quick")
    assert profile.main(["quick", "--folder", str(photos), "--out", str(out)]) == 0  # --folder implies the source
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(text)
    # inside the project the path is kept relative to its root (params.yaml stays portable)
    assert profile.main(["quick", "--folder", str(ROOT / "data" / "kodak"), "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["data"]["folder"]["path"] == "data/kodak"


def test_profile_command_refuses_folder_with_another_source(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert profile.main(["quick", "--source", "cifar10", "--folder", str(tmp_path), "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--folder" in err and "cifar10" in err


def test_each_source_has_its_own_params_block_and_the_default_channel_is_awgn():
    data = quick()["data"]
    assert {k for k, v in data.items() if isinstance(v, dict)} == {"builtin", "cifar100", "cifar10", "folder"}
    assert not [k for k in data if "_" in k and k.split("_")[0] in ("builtin", "cifar100", "cifar10", "folder")]
    from pipeline.model import CHANNELS
    assert parse(quick()).model.channel == "awgn"
    assert set(config.Model.model_fields["channel"].annotation.__args__) == set(CHANNELS)


def test_profile_command_refuses_an_unknown_source(tmp_path):
    out = tmp_path / "params.yaml"
    with pytest.raises(SystemExit) as exc:
        profile.main(["quick", "--source", "imagenet", "--out", str(out)])
    assert exc.value.code == 2
    assert not out.exists()


# ------------------------------------------------------------------------------- malformed params
def _set(dotted, value):
    def mutate(raw):
        *parents, last = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _delete(dotted):
    def mutate(raw):
        *parents, last = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


OTHER_PHOTOS = [p for p in BUILTIN_PHOTOS if p != "flower"]

MALFORMED = [
    ("adapt.sparsities", _set("adapt.sparsities", [0.0])),
    ("adapt.sparsities", _set("adapt.sparsities", [0.01, 1.5])),
    ("adapt.sparsities", _set("adapt.sparsities", ["x"])),
    ("adapt.sparsities", _set("adapt.sparsities", [0.01, 0.01])),
    ("adapt.sparsities", _set("adapt.sparsities", [])),
    ("model.snr_db", _set("model.snr_db", math.inf)),
    ("model.snr_db", _set("model.snr_db", math.nan)),
    ("evaluate.snr_db", _set("evaluate.snr_db", -math.inf)),
    ("evaluate.snr_db", _set("evaluate.snr_db", math.nan)),
    ("pretrain.epochs", _set("pretrain.epochs", 0)),
    ("pretrain.epochs", _set("pretrain.epochs", 2.5)),
    ("pretrain.epochs", _set("pretrain.epochs", "ten")),
    ("adapt.epochs", _set("adapt.epochs", 0)),
    ("tuning.retune_epochs", _set("tuning.retune_epochs", -1)),
    ("domains.names", _set("domains.names", ["VA", "VX"])),
    ("domains.names", _set("domains.names", ["VA", "VP", "VA"])),
    ("domains.names", _set("domains.names", ["VA"])),
    ("data.seed", _delete("data.seed")),
    ("evaluate", _delete("evaluate")),
    ("data.colour", _set("data.colour", "red")),
    ("colour_scheme", _set("colour_scheme", {"background": "black"})),
    ("domains.rotation_degrees", _set("domains.rotation_degrees", [40.0, 20.0])),
    ("domains.rotation_degrees", _set("domains.rotation_degrees", [20.0])),
    ("domains.hue_shift", _set("domains.hue_shift", [0.15, 0.9])),
    ("domains.contrast_factor", _set("domains.contrast_factor", [0.0, 0.5])),
    ("domains.contrast_factor", _set("domains.contrast_factor", [0.5, 0.3])),
    ("domains.perspective_distortion", _set("domains.perspective_distortion", 0.0)),
    ("domains.preview_count", _set("domains.preview_count", 0)),
    ("data.seed", _set("data.seed", -1)),
    ("domains.seed", _set("domains.seed", -3)),
    ("adapt.seed", _set("adapt.seed", 2**31)),
    ("train.batch_size", _set("train.batch_size", 0)),
    ("train.device", _set("train.device", "tpu")),
    ("train.threads", _set("train.threads", -1)),
    ("data.source", _set("data.source", "imagenet")),
    ("adapt.allocation", _set("adapt.allocation", "random")),
    ("model.width", _set("model.width", 0)),
    ("model.bandwidth_ratio", _set("model.bandwidth_ratio", 0.0)),
    ("model.bandwidth_ratio", _set("model.bandwidth_ratio", 1.5)),
    ("data.builtin.test_photos", _set("data.builtin.test_photos", ["flower", "lena"])),
    ("data.builtin.test_photos", _set("data.builtin.test_photos", list(BUILTIN_PHOTOS))),
    ("data.builtin.test_photos", _set("data.builtin.test_photos", [])),
    ("data.builtin.scales", _set("data.builtin.scales", [0.0])),
    ("data.builtin.scales", _set("data.builtin.scales", [1.0, 2.0])),
    ("data.builtin.scales", _set("data.builtin.scales", [])),
    ("data.folder.scales", _set("data.folder.scales", [])),
    ("data.folder.test_fraction", _set("data.folder.test_fraction", 1.0)),
    ("data.folder.test_fraction", _set("data.folder.test_fraction", 0.0)),
    ("data.folder.path", _set("data.folder.path", None)),
    ("data.cifar10.root", _set("data.cifar10.root", 3)),
    ("data.builtin_scales", _set("data.builtin_scales", [0.25])),  # the old flat key is gone
    ("model.channel", _set("model.channel", "rician")),
    ("pretrain.lr", _set("pretrain.lr", 0.0)),
    ("adapt.score_lr", _set("adapt.score_lr", -1.0)),
    ("adapt.value_lr", _set("adapt.value_lr", math.inf)),
    ("tuning.lr", _set("tuning.lr", "fast")),
    ("data.n_pretrain", _set("data.n_pretrain", 0)),
    ("data.n_base_test", _set("data.n_base_test", -10)),
    ("domains.n_train", _set("domains.n_train", 0)),
    ("equalizer.blocks", _set("equalizer.blocks", 0)),
    ("lora.lr", _set("lora.lr", 0.0)),
    ("lora", _delete("lora")),
    ("bitfit.lr", _set("bitfit.lr", "fast")),
    ("delta_topk.retrain_epochs", _set("delta_topk.retrain_epochs", -1)),
    ("delta_topk.retrain_epochs", _set("delta_topk.retrain_epochs", 1.5)),
    ("delta_topk.lr", _set("delta_topk.lr", math.inf)),
    ("delta_topk.rank", _set("delta_topk.rank", 4)),
    ("evaluate.reconstructions", _set("evaluate.reconstructions", 99)),
    ("profile", _set("profile", "turbo")),
    ("model", _set("model", [16, 0.17, 10.0])),
    ("data.cifar100.local", _set("data.cifar100.local", None)),
]


@pytest.mark.parametrize("key,mutate", MALFORMED, ids=[f"{i:02d}-{k}" for i, (k, _) in enumerate(MALFORMED)])
def test_malformed_params_fail_with_one_line_naming_the_key(key, mutate):
    raw = quick()
    mutate(raw)
    with pytest.raises(ConfigError) as exc:
        parse(raw)
    msg = str(exc.value)
    assert "\n" not in msg and "\r" not in msg
    assert msg.startswith("params: ")
    assert re.search(rf"\b{re.escape(key)}\b", msg), msg
    assert len(msg) < 400, msg


def test_malformed_params_message_names_the_value_and_the_rule():
    raw = quick()
    raw["pretrain"]["epochs"] = 0
    msg = str(pytest.raises(ConfigError, parse, raw).value)
    assert "pretrain.epochs = 0" in msg and "greater than or equal to 1" in msg
    raw = quick()
    raw["adapt"]["allocation"] = "random"
    msg = str(pytest.raises(ConfigError, parse, raw).value)
    assert "'random'" in msg and "linear" in msg and "uniform" in msg and "product" in msg


@pytest.mark.parametrize("top", [[1, 2], "quick", None, 3.5])
def test_top_level_not_a_mapping(top):
    with pytest.raises(ConfigError) as exc:
        parse(top)
    msg = str(exc.value)
    assert "\n" not in msg and "mapping" in msg and "top level" in msg


@pytest.mark.parametrize("key", ["pretrain.epochs", "model.snr_db"])
def test_booleans_are_not_numbers(key):
    raw = quick()
    _set(key, True)(raw)
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse(raw)


def test_cross_key_error_names_the_key_in_one_short_line():
    raw = quick()
    if "ablate" not in raw:
        pytest.skip("no cross-key rule in this schema")
    raw["domains"]["names"] = ["VA", "VP"]
    raw["ablate"]["domains"] = ["VH"]
    with pytest.raises(ConfigError) as exc:
        parse(raw)
    msg = str(exc.value)
    assert "\n" not in msg and "ablate.domains" in msg
    assert "<root>" not in msg and len(msg) < 400, msg[:200]


def test_parse_does_not_modify_its_input():
    raw = quick()
    before = copy.deepcopy(raw)
    parse(raw)
    assert raw == before


def test_load_reports_a_missing_file_and_bad_yaml_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not found") as exc:
        config.load(tmp_path / "params.yaml")
    assert "\n" not in str(exc.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\nmodel: {\n")
    with pytest.raises(ConfigError, match="not valid YAML") as exc:
        config.load(bad)
    assert "\n" not in str(exc.value)


def test_load_reads_the_committed_params():
    params = config.load()
    assert params.model_dump(mode="json")["data"]["builtin"]["test_photos"] == list(
        yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["builtin"]["test_photos"])


def test_flat_params_uses_dotted_keys_for_every_leaf():
    flat = config.flat_params(parse(quick()))
    assert flat["adapt.score_lr"] == 1.0 and flat["data.source"] == "builtin"
    assert all(not isinstance(v, dict) for v in flat.values())
    def leaves(d):
        return sum(leaves(v) if isinstance(v, dict) else 1 for v in d.values())
    # every leaf of the validated params, defaults the profile does not spell out (model.norm) included
    assert len(flat) == leaves(parse(quick()).model_dump(mode="json")) and flat["model.norm"] == "none"
    assert flat["data.builtin.scales"] == [1.0, 0.5, 0.25] and flat["model.channel"] == "awgn"


def test_tiny_overlay_shrinks_a_copy_and_is_no_profile():
    raw = profile.render("quick")
    before = copy.deepcopy(raw)
    tiny = profile.shrink(raw)
    assert raw == before  # a copy: the profile itself is unchanged
    overlay = yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text())
    assert tiny == profile.merge(raw, overlay)  # a deep merge: nested blocks keep their other keys
    assert tiny["data"]["builtin"]["test_photos"] == raw["data"]["builtin"]["test_photos"]
    parse(tiny)
    with pytest.raises(ConfigError, match="not found; known: \\['ci', 'full', 'paper', 'quick'\\]"):
        profile.render("tiny")  # an overlay, never written to params.yaml as a profile


def test_the_paper_profile_adapts_on_the_full_profiles_pretraining():
    """The paper's adaptation settings on top of the same converged pretraining (data, model,
    training precision and pretrain recipe equal to the full profile's), with the paper's learning rates."""
    full, paper = profile.render("full"), profile.render("paper")
    for block in ("data", "model", "train", "pretrain"):
        assert paper[block] == full[block], block
    assert {k: paper["domains"][k] for k in ("n_train", "n_val", "n_test")} == \
        {k: full["domains"][k] for k in ("n_train", "n_val", "n_test")}
    assert (paper["adapt"]["epochs"], paper["adapt"]["score_lr"], paper["adapt"]["value_lr"]) == (30, 1.0, 0.0001)
    assert paper["search"] == {"max_extend": 2}  # no grid: the paper's values, nothing to extend
    assert config.parse(paper).search.grids() == {} and config.parse(full).search.max_extend == 2


# ------------------------------------------------------------------------------ methods in the schema
@pytest.mark.parametrize("methods,message", [
    (["sam", "nope"], "adapt.methods: unknown method 'nope'"),
    (["lora", "tuning"], "adapt.methods: lora needs ['sam']"),
    (["sam", "sam"], "adapt.methods = ['sam', 'sam']: Value error, entries must be unique"),
    ([], "adapt.methods = []: The list should have at least 1 item"),
])
def test_adapt_methods_are_registered_and_bring_their_needs(methods, message):
    raw = profile.render("quick")
    raw["adapt"]["methods"] = methods
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_method_block_is_checked_by_the_method_files_config():
    raw = profile.render("quick")
    raw["lora"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"^params: lora.lr = -1.0: Input should be greater than 0$"):
        parse(raw)
    raw = profile.render("quick")
    raw["bitfit"]["extra"] = 1
    with pytest.raises(ConfigError, match=r"^params: bitfit.extra = 1: Extra inputs are not permitted$"):
        parse(raw)


def test_the_method_list_and_waves_follow_needs():
    from pipeline.methods import waves
    params = parse(profile.render("quick"))
    assert waves(params) == [["sam", "tuning", "bitfit", "base_control"], ["equalizer", "lora", "delta_topk"]]
    assert waves(params, ["lora"]) == [["lora"]]
    with pytest.raises(ConfigError, match="not among adapt.methods"):
        waves(params, ["nope"])


def test_a_method_block_is_needed_only_while_a_listed_method_reads_it():
    raw = profile.render("quick")
    del raw["lora"]
    with pytest.raises(ConfigError, match=r"^params: lora: the block is missing; lora \(in adapt.methods\) reads it$"):
        parse(raw)
    raw["adapt"]["methods"] = ["sam", "tuning", "equalizer"]  # lora's file stays, its name is out
    assert parse(raw).lora is None
    del raw["tuning"]
    with pytest.raises(ConfigError, match=r"^params: tuning: the block is missing; tuning \(in adapt.methods\)"):
        parse(raw)
