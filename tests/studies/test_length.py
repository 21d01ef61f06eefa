"""Study ``length`` (pipeline/studies/length.py): sam and tuning at other adaptation lengths, the main
cells read at ``adapt.epochs``."""
from __future__ import annotations

import copy
import dataclasses

import pandas as pd
import pytest

from ..conftest import cell, context


def test_trained_at_the_main_settings_the_studies_adaptation_is_the_adapt_cells_bit_for_bit(adapted):
    """What the strength and length studies train (``_adapted.adapted_psnr``) is what the adapt stage's
    cells measure: at the main params and base, the same domain PSNR to the bit, for sam and tuning."""
    from pipeline.config import parse
    from pipeline.studies._adapted import adapted_psnr, cell_psnr, trial_context
    tree = adapted.params.model_dump(mode="json")
    tree["ablate"].update(studies=["length"], sparsity=0.1)
    ctx = dataclasses.replace(context(adapted), params=parse(tree), checkpoints=adapted.paths.checkpoints / "t")
    for m in ("sam", "tuning"):
        again = adapted_psnr(trial_context(ctx, m, 0, 0), m, "VH", f"again-{m}")
        assert again == cell_psnr(ctx, m, "VH", 0, 0) == cell(adapted.paths, m, "VH", 0.1 if m == "sam" else None)[
            "domain_psnr"]


def test_the_length_study_reads_the_main_cells_trains_the_other_length_and_writes_its_outputs(adapted, monkeypatch):
    from pipeline.stages import ablate
    from pipeline.studies import _adapted
    main = adapted.params.adapt.epochs
    raw = copy.deepcopy(adapted.raw)
    raw["ablate"].update(studies=["length"], sparsity=0.1, length_epochs=[main + 1, main])
    adapted.write_params(raw)
    params, paths = adapted.params, adapted.paths
    trained = []
    real_sam, real_tune = _adapted.train_sam, _adapted.finetune
    monkeypatch.setattr(_adapted, "train_sam",
                        lambda c, *a, **kw: trained.append(("sam", c.params.adapt.epochs)) or real_sam(c, *a, **kw))
    monkeypatch.setattr(_adapted, "finetune",
                        lambda c, model, images, epochs, *a: trained.append(("tuning", epochs))
                        or real_tune(c, model, images, epochs, *a))
    ablate.main(params, paths, ["--study", "length"])
    assert sorted(trained) == [("sam", main + 1), ("tuning", main + 1)] * params.adapt.seeds  # main: its cells
    df = pd.read_csv(paths.ablations / "length.csv")
    assert list(df.adapt_epochs.unique()) == [main, main + 1] and set(df.domain) == {"VH"}
    at_main = df[df.adapt_epochs == main].set_index("method")
    assert set(at_main.source) == {"main cell"} and set(df[df.adapt_epochs != main].source) == {"trained here"}
    assert at_main.loc["sam", "domain_psnr"] == cell(paths, "sam", "VH", 0.1)["domain_psnr"]
    assert at_main.loc["tuning", "domain_psnr"] == cell(paths, "tuning", "VH")["domain_psnr"]
    longer = df[df.adapt_epochs == main + 1].set_index("method")
    assert (longer.domain_psnr != at_main.domain_psnr).all()
    text = (paths.ablations / "length.md").read_text()
    assert f"{main} epochs (the main cells): sam" in text and "Ranking per domain (ahead: VH: " in text
    assert "C3: " in text and "C5: " in text
    assert (paths.figures / "ablation_length.png").stat().st_size > 0


def _runs(gaps: dict[int, list[float]], sam_gain: dict[int, float]) -> pd.DataFrame:
    """Synthetic runs: per length, one seed a gap; tuning = sam + gap on both domains."""
    rows = []
    for e, per_seed in gaps.items():
        for seed, gap in enumerate(per_seed):
            for d, base in (("VA", 25.0), ("VH", 26.0)):
                sam = base + sam_gain[e] + 0.01 * seed
                rows += [{"adapt_epochs": e, "domain": d, "method": "sam", "adapt_seed": seed, "domain_psnr": sam,
                          "gain_over_pretrained": sam - base},
                         {"adapt_epochs": e, "domain": d, "method": "tuning", "adapt_seed": seed,
                          "domain_psnr": sam + gap, "gain_over_pretrained": sam + gap - base}]
    return pd.DataFrame(rows)


def test_the_verdicts_and_the_ranking_follow_the_seeds():
    from pipeline.studies.length import leaders, length_finding, verdicts
    runs = _runs({10: [0.40, 0.42, 0.44], 30: [-0.2, -0.1, -0.15]}, {10: 0.3, 30: 0.5})
    ten = verdicts(runs[runs.adapt_epochs == 10])
    assert ten["C3"][0] == "PASS" and ten["C3"][1].mean == pytest.approx(0.42) and ten["C3"][1].n == 3
    assert ten["C5"][0] == "PASS"
    assert leaders(runs[runs.adapt_epochs == 10]) == {"VA": "tuning", "VH": "tuning"}
    assert leaders(runs[runs.adapt_epochs == 30]) == {"VA": "sam", "VH": "sam"}
    text = length_finding(runs, 10, 0.01)
    assert "VA: tuning → sam" in text and "changes on VA, VH from 10 to 30 epochs" in text
    assert "C3: PASS → PASS (unchanged)." in text and "3 seeds" in text
    straddles = _runs({10: [0.3, 0.5, 0.7], 30: [0.8, 0.85, 0.9]}, {10: 0.3, 30: -0.2})
    text = length_finding(straddles, 10, 0.01)
    assert "C3: INCONCLUSIVE → FAIL (changes)." in text and "C5: PASS → FAIL (changes)." in text


def test_the_length_study_needs_the_main_length_and_lengths_above_the_frozen_epochs(tiny_params):
    from pipeline.config import ConfigError, parse
    tiny_params["ablate"].update(studies=["length"], sparsity=tiny_params["adapt"]["sparsities"][0])
    tiny_params["adapt"].update(epochs=3, freeze_epochs=1)
    tiny_params["ablate"]["length_epochs"] = [1, 3]
    with pytest.raises(ConfigError, match=r"ablate.length_epochs \[1\] must be above adapt.freeze_epochs = 1"):
        parse(tiny_params)
    tiny_params["ablate"]["length_epochs"] = [2, 4]
    with pytest.raises(ConfigError, match=r"must include adapt.epochs = 3"):
        parse(tiny_params)
    tiny_params["ablate"]["length_epochs"] = [3, 9]
    parse(tiny_params)
