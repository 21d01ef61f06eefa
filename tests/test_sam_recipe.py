"""sam's training recipe: the values' gradient (dense straight-through vs exact g ⊙ m), the scores'
optimizer (Adam, SGD), freezing the mask for the last epochs (the ``recipe`` study: tests/studies/test_recipe.py)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, parse
from pipeline.sam import SAMLayer

from .conftest import make_params


def _layer(base: nn.Module, value_grad: str, k: int) -> SAMLayer:
    layer = SAMLayer(copy.deepcopy(base), k, value_grad)
    g = torch.Generator().manual_seed(3)
    layer.values.data = torch.randn(layer.values.shape, generator=g)  # non-zero everywhere, in and out of the mask
    return layer


@pytest.mark.parametrize("base", [nn.Linear(6, 5), nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(3, 4, 3)],
                         ids=["linear", "conv", "convT"])
def test_the_masked_value_gradient_is_exactly_g_times_m_and_the_dense_one_g(base):
    torch.manual_seed(0)
    x = torch.randn(2, 6) if isinstance(base, nn.Linear) else torch.randn(2, 3, 5, 5)
    grads = {}
    for mode in ("dense", "masked"):
        layer = _layer(base, mode, k=7)
        out = layer(x)
        out.pow(2).mean().backward()
        grads[mode] = layer.scores.grad.clone(), layer.values.grad.clone()
        # the reference: autograd of W0 + m ⊙ v itself (m a constant), and g = dLoss/dW at the same W
        m = layer.mask().to(x.dtype)
        v = layer.values.detach().clone().requires_grad_(True)
        w_eff = layer.base.weight.detach() + m * v
        w_leaf = w_eff.detach().clone().requires_grad_(True)
        for w in (w_eff, w_leaf):
            b = layer.base
            y = (F.linear(x, w, b.bias) if isinstance(b, nn.Linear) else
                 F.conv_transpose2d(x, w, b.bias) if isinstance(b, nn.ConvTranspose2d) else F.conv2d(x, w, b.bias))
            y.pow(2).mean().backward()
        assert torch.equal(out.detach(), y.detach())  # same forward whatever the backward
        g = w_leaf.grad
        assert torch.equal(layer.scores.grad, g * layer.values.detach())  # straight-through scores, both modes
        if mode == "masked":
            assert torch.equal(layer.values.grad, v.grad)  # exactly autograd's gradient of W0 + m ⊙ v
            assert torch.equal(layer.values.grad, g * m)
            assert not layer.values.grad[~layer.mask()].any()
        else:
            assert torch.equal(layer.values.grad, g)
            assert layer.values.grad[~layer.mask()].abs().sum() > 0  # masked-out values learn too
    assert torch.equal(grads["dense"][0], grads["masked"][0])
    assert not torch.equal(grads["dense"][1], grads["masked"][1])


def test_a_layer_records_the_mask_of_its_last_training_forward_only():
    layer = _layer(nn.Linear(6, 5), "dense", k=7)
    assert layer.last_mask is None
    x = torch.randn(2, 6)
    layer(x)
    seen = layer.mask()
    assert torch.equal(layer.last_mask, seen)
    layer.scores.data = -layer.scores.data  # another top-k ...
    with torch.no_grad():
        layer(x)  # ... evaluated without gradients: not a training pass
    assert torch.equal(layer.last_mask, seen) and not torch.equal(layer.mask(), seen)
    with pytest.raises(ValueError, match="value_grad 'exact' must be one of"):
        SAMLayer(nn.Linear(6, 5), 7, "exact")


# ------------------------------------------------------------------------------------------ params
@pytest.mark.parametrize("key, value, named", [
    ("value_grad", "exact", "adapt.value_grad"),
    ("score_optimizer", "rmsprop", "adapt.score_optimizer"),
    ("freeze_epochs", -1, "adapt.freeze_epochs"),
    ("freeze_epochs", True, "adapt.freeze_epochs"),
    ("freeze_epochs", 1, "adapt.freeze_epochs = 1 must be below adapt.epochs = 1"),  # tiny: 1 epoch
    ("score_lr", 2e6, "adapt.score_lr"),
])
def test_bad_recipe_params_fail_in_one_line_naming_the_key(tiny_params, key, value, named):
    raw = copy.deepcopy(tiny_params)
    raw["adapt"][key] = value
    with pytest.raises(ConfigError) as err:
        parse(raw)
    msg = str(err.value)
    assert "\n" not in msg and named in msg, msg


@pytest.mark.parametrize("lrs, named", [({"adam": [], "sgd": [1.0]}, "recipe_score_lrs.adam"),
                                        ({"adam": [0.1], "sgd": [1.0, 1.0]}, "recipe_score_lrs.sgd"),
                                        ({"adam": [200.0], "sgd": [1.0]}, "recipe_score_lrs.adam"),
                                        ({"adam": [0.1]}, "recipe_score_lrs.sgd")])
def test_bad_recipe_study_lrs_fail_in_one_line(tiny_params, lrs, named):
    raw = copy.deepcopy(tiny_params)
    raw["ablate"]["recipe_score_lrs"] = lrs
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert "\n" not in str(err.value) and named in str(err.value), str(err.value)


def test_a_large_sgd_score_lr_is_valid_and_the_defaults_are_the_original_recipe(tiny_params):
    raw = copy.deepcopy(tiny_params)
    a = parse(raw).adapt
    assert (a.value_grad, a.score_optimizer, a.freeze_epochs) == ("dense", "adam", 0)
    raw["adapt"].update(score_optimizer="sgd", score_lr=1e4)
    assert parse(raw).adapt.score_lr == 1e4


# ------------------------------------------------------------------------------------------ training
def test_fit_calls_before_epoch_before_each_trained_epoch_and_after_a_resume(tmp_path):
    from pipeline.train import fit
    torch.manual_seed(0)
    module = nn.Conv2d(3, 3, 1)
    images = torch.randint(0, 255, (8, 3, 4, 4), dtype=torch.uint8)
    calls = []

    def before(epoch):
        calls.append(("before", epoch, float(module.weight.detach().sum())))

    def after(epoch, loss):
        calls.append(("after", epoch, float(module.weight.detach().sum())))
        return {}

    kw = dict(batch_size=4, seed=0, device=torch.device("cpu"), checkpoint=tmp_path / "c.pt", key="k", desc="t",
              precision="fp32", on_epoch=after, before_epoch=before)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    fit(module, opt, images, lambda x, g: module(x), epochs=2, **kw)
    assert [c[:2] for c in calls] == [("before", 0), ("after", 1), ("before", 1), ("after", 2)]
    assert calls[1][2] == calls[2][2]  # nothing trains between an epoch's end and the next one's hook
    calls.clear()
    fit(module, opt, images, lambda x, g: module(x), epochs=3, **kw)  # resumes at epoch 2
    assert [c[:2] for c in calls] == [("before", 2), ("after", 3)]


def _context(project, **adapt):
    from pipeline.methods import Context
    from pipeline.train import setup_runtime
    raw = copy.deepcopy(project.raw)
    raw["adapt"].update(adapt)
    params = make_params(raw)
    setup_runtime(params)
    return Context(params, project.paths, torch.device("cpu"), checkpoints=project.root / "ckpt")


def test_the_score_optimizer_choice_reaches_the_optimizer(adapted, monkeypatch):
    from pipeline.methods import sam as sam_method
    made = []
    real = sam_method.make_optimizer

    def spy(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]

    monkeypatch.setattr(sam_method, "make_optimizer", spy)
    for opt, lr in (("sgd", 50.0), ("adam", 0.5)):
        ctx = _context(adapted, score_optimizer=opt, score_lr=lr)
        trained = sam_method.train_sam(ctx, "VH", 0.1, allocation="linear", tag=f"opt-{opt}")
        scores = [m.scores for m in sam_method.sam_layers(trained["model"]).values()]
        values = [m.values for m in sam_method.sam_layers(trained["model"]).values()]
        o = made[-1]
        groups = o.param_groups
        score_group = next(g for g in groups if g["params"][0] is scores[0])
        value_group = next(g for g in groups if g["params"][0] is values[0])
        assert score_group["lr"] == lr and value_group["lr"] == ctx.params.adapt.value_lr
        if opt == "sgd":
            sgd, adam = o.optimizers
            assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["params"] == scores
            assert sgd.param_groups[0]["momentum"] == 0
            assert type(adam) is torch.optim.Adam and adam.param_groups[0]["params"] == values
        else:
            assert type(o) is torch.optim.Adam and len(groups) == 2
        # the scores really were stepped: not left at their |W0| start
        start = sam_method.sam_layers(sam_method.attach_sam(ctx.pretrained(), 0.1))
        assert any(not torch.equal(m.scores, start[n].scores)
                   for n, m in sam_method.sam_layers(trained["model"]).items())


def test_sgd_steps_the_scores_by_lr_times_their_gradient(adapted):
    """One SGD step at lr L moves each score by exactly -L * grad (no momentum, no normalisation)."""
    from pipeline.methods import sam as sam_method
    from pipeline.sam import attach_sam, sam_parameters
    ctx = _context(adapted, score_optimizer="sgd", score_lr=1000.0)
    model = attach_sam(ctx.pretrained(), 0.1)
    scores, values = sam_parameters(model)
    for v in values:
        v.data.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))  # non-zero: scores get gradient
    opt = sam_method.make_optimizer(ctx.params.adapt, scores, values)
    before = [s.detach().clone() for s in scores]
    x = ctx.split("VH_train")[:8].float() / 255
    opt.zero_grad()
    F.mse_loss(model(x, torch.Generator().manual_seed(1)), x).backward()
    grads = [s.grad.clone() for s in scores]
    opt.step()
    assert any(g.abs().sum() > 0 for g in grads)
    for b, s, g in zip(before, scores, grads):
        assert torch.allclose(s.detach(), b - 1000.0 * g, rtol=0, atol=1e-6)


def test_freezing_keeps_the_mask_over_the_last_epochs_and_stores_the_mask_last_trained_on(adapted):
    from pipeline.methods import sam as sam_method
    layers = sam_method.sam_layers
    free = sam_method.train_sam(_context(adapted, epochs=1), "VH", 0.1, allocation="linear", tag="free1")
    frozen = sam_method.train_sam(_context(adapted, epochs=3, freeze_epochs=2), "VH", 0.1, allocation="linear",
                                  tag="frozen")
    unfrozen = sam_method.train_sam(_context(adapted, epochs=3), "VH", 0.1, allocation="linear", tag="unfrozen")
    h = frozen["history"]
    assert h[0]["mask_changed"] > 0  # the first epoch trains the scores (Adam lr 1: the mask moves) ...
    assert [r["mask_changed"] for r in h[1:]] == [0.0, 0.0]  # ... the two frozen ones do not
    assert unfrozen["history"][1]["mask_changed"] > 0  # without freezing it keeps moving
    for n, m in layers(frozen["model"]).items():
        one = layers(free["model"])[n]
        # same seed, same first epoch: the frozen run's scores are those after epoch 1, bit for bit ...
        assert torch.equal(m.scores, one.scores), n
        assert torch.equal(m.mask(), m.last_mask), n  # ... and the stored mask is the last forward's
    assert frozen["stored_mask_unseen"] == 0.0
    # the values did train in the frozen epochs
    assert any(not torch.equal(m.values, layers(free["model"])[n].values) for n, m in layers(frozen["model"]).items())
    # with the scores trained to the last step (Adam lr 1), part of the stored mask never met its values
    assert unfrozen["stored_mask_unseen"] > 0
    assert frozen["mask_moved"] == h[0]["mask_moved"]
