"""Study ``bases`` (pipeline/studies/bases.py): the base-to-base spread, and its params check."""
from __future__ import annotations

import pytest
import torch

from ..conftest import cell, context


def test_the_bases_study_trains_other_bases_and_reads_the_main_cells(adapted):
    """Extra bases are really other models (other seeds, their own budget), sam is adapted on each, and
    the main base's rows are its cells; train_base with the main seed and budget is the pretrain stage's
    model bit for bit (one recipe, one function)."""
    import dataclasses

    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    from pipeline.config import parse
    from pipeline.pretraining import train_base
    from pipeline.studies import bases as study
    from pipeline.train import data_fingerprint, fingerprint
    tree = adapted.params.model_dump(mode="json")
    tree["ablate"].update(studies=["bases"], sparsity=0.1, bases=2, base_epochs=1)
    params = parse(tree)
    ctx = dataclasses.replace(context(adapted), params=params, checkpoints=adapted.paths.checkpoints / "bases-test")
    df, finding, fig = study.run(ctx)
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
    model, _ = train_base(params, train_x, seed=params.pretrain.seed, epochs=params.pretrain.epochs, device=ctx.device,
                          checkpoint=ctx.checkpoint("same-as-pretrain"), key=key)
    stored = load_file(str(adapted.paths.pretrained))
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


def test_the_bases_study_needs_its_sparsity_among_the_main_grids(tiny_params):
    from pipeline.config import ConfigError, parse
    tiny_params["ablate"].update(studies=["bases"], sparsity=0.5)
    with pytest.raises(ConfigError, match="ablate.sparsity 0.5 must be one of adapt.sparsities"):
        parse(tiny_params)
    tiny_params["ablate"]["sparsity"] = tiny_params["adapt"]["sparsities"][0]
    parse(tiny_params)
