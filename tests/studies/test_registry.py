"""The study registry (pipeline/studies/__init__.py): one file a study, found by name, its params fields
merged into the ``ablate`` block; an unknown study name is refused, never run as another."""
from __future__ import annotations

import copy

import pandas as pd
import pytest

from pipeline import config, profile, studies
from pipeline.config import ConfigError, parse
from pipeline.paths import REPO


def test_the_registry_names_every_file_of_the_studies_folder_in_order():
    files = sorted(p.stem for p in (REPO / "pipeline" / "studies").glob("*.py") if not p.stem.startswith("_"))
    assert sorted(studies.registry()) == files
    assert all(m.__name__ == f"pipeline.studies.{name}" for name, m in studies.registry().items())
    assert studies.names() == ("allocation", "mask", "sparsity", "snr", "recipe", "bases", "budget", "severity",
                             "strength", "length")
    assert [m.ORDER for m in studies.registry().values()] == sorted(m.ORDER for m in studies.registry().values())


def test_an_unknown_study_is_refused_in_one_line_naming_it_and_the_known_ones(tiny_params):
    raw = copy.deepcopy(tiny_params)
    raw["ablate"]["studies"] = ["snr", "noise"]
    with pytest.raises(ConfigError) as err:
        parse(raw)
    msg = str(err.value)
    assert "\n" not in msg and "ablate.studies" in msg and "'noise'" in msg, msg
    assert all(name in msg for name in studies.names())
    raw["ablate"]["studies"] = ["snr"]
    assert parse(raw).ablate.studies == ("snr",)


def test_the_ablate_block_holds_every_studys_fields_flat_in_the_studies_order(tiny_params):
    ablate = config.params_model().model_fields["ablate"].annotation
    assert list(ablate.model_fields) == ["studies", "domains", "sparsity", "sparsities", "snr_db", "recipe_score_lrs",
                                         "bases", "base_epochs", "budget_epochs", "severities", "severity_seeds",
                                         "strength_epochs", "strength_extra_db", "length_epochs"]
    own = [f for m in studies.registry().values() if hasattr(m, "Config") for f in m.Config.model_fields]
    assert list(ablate.model_fields)[3:] == own
    raw = copy.deepcopy(tiny_params)
    raw["ablate"]["snr_db"] = [5.0, 5.0]  # a study's own validator still runs in the composed block
    with pytest.raises(ConfigError, match="ablate.snr_db .*entries must be unique"):
        parse(raw)


def test_a_field_two_studies_define_is_refused():
    from pydantic import Field

    class One(config.Block):
        snr_db: float = Field(default=1.0)

    with pytest.raises(RuntimeError, match="ablate.snr_db: defined by study twin and by study snr"):
        config._compose_ablate({name: m.Config for name, m in studies.registry().items() if hasattr(m, "Config")}
                               | {"twin": One})
    with pytest.raises(RuntimeError, match="ablate.domains: defined by study twin and by the shared"):
        class Two(config.Block):
            domains: float = 1.0
        config._compose_ablate({"twin": Two})


def test_ablations_turns_on_every_study_of_the_registry():
    assert tuple(profile.render("quick", ablations=True)["ablate"]["studies"]) == studies.names()


def test_ablation_finding_names_a_tie_instead_of_a_zero_margin():
    from pipeline.studies import best
    assert best(pd.Series({"linear": 24.301, "uniform": 24.104, "product": 24.104})) == \
        "best: linear (+0.20 dB over the runner-up)"
    assert best(pd.Series({"linear": 24.101, "uniform": 24.104, "product": 24.104})) == \
        "tie at 24.10 dB between linear, uniform, product"
    assert best(pd.Series({"score": 23.0, "random": 23.5, "fisher": 23.502})) == \
        "tie at 23.50 dB between random, fisher"


def test_the_ablate_stage_runs_the_study_it_is_given_and_writes_its_outputs(adapted):
    from pipeline.stages import ablate
    raw = copy.deepcopy(adapted.raw)
    raw["ablate"].update(studies=["snr"], snr_db=[10.0])
    adapted.write_params(raw)
    params, paths = adapted.params, adapted.paths
    with pytest.raises(ConfigError, match=r"--study 'mask' not in ablate.studies \['snr'\]"):
        ablate.main(params, paths, ["--study", "mask"])
    assert not paths.ablations.exists() or not any(paths.ablations.iterdir())
    ablate.main(params, paths, ["--study", "snr"])
    table = pd.read_csv(paths.ablations / "snr.csv")
    assert list(table.snr_db.unique()) == [10.0] and set(table.channel) == {"awgn", "rayleigh"}
    text = (paths.ablations / "snr.md").read_text()
    assert text.startswith("<!-- profile: quick") and "**Finding.** sam's misalignment stays 0 dB" in text
    assert (paths.figures / "ablation_snr.png").stat().st_size > 0
    assert not (paths.checkpoints / "ablate" / "snr").exists()
