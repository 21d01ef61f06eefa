"""pipeline.methods.Context: the links every method's variants are built from (Tx -> channel -> Rx)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods import Context
from pipeline.model import IMAGE_SHAPE, SCModel, awgn
from pipeline.paths import Paths

from .conftest import make_params


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def context(tiny_params, tmp_path, snr_db: float = 10.0) -> Context:
    params = make_params(tiny_params)
    return Context(params, Paths.of(params, tmp_path), torch.device("cpu"), snr_db=snr_db)


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, *IMAGE_SHAPE, generator=gen(0))


def test_link_to_itself_equals_the_model_and_the_self_link(tiny_params, tmp_path):
    torch.manual_seed(0)
    model = SCModel(width=4, snr_db=7.0).eval()
    ctx, x = context(tiny_params, tmp_path, snr_db=7.0), images(4)
    with torch.no_grad():
        assert torch.equal(ctx.link(model, model)(x, gen(9)), model(x, gen(9)))
        assert torch.equal(ctx.self_link(model)(x, gen(9)), model(x, gen(9)))


def test_link_uses_tx_encoder_and_rx_decoder_at_the_evaluation_snr(tiny_params, tmp_path):
    torch.manual_seed(0)
    a, b = SCModel(width=4).eval(), SCModel(width=4).eval()
    ctx, x = context(tiny_params, tmp_path, snr_db=3.0), images()
    with torch.no_grad():
        ab = ctx.link(a, b)(x, gen(3))
        assert torch.equal(ab, b.decoder(awgn(a.transmit(x), 3.0, gen(3))))
        assert not torch.equal(ab, ctx.link(b, a)(x, gen(3)))
        assert not torch.equal(ab, ctx.link(a, a)(x, gen(3)))


def test_link_applies_the_equalizer_before_the_decoder(tiny_params, tmp_path):
    torch.manual_seed(0)
    a, b = SCModel(width=4).eval(), SCModel(width=4).eval()
    ctx, x = context(tiny_params, tmp_path), images()
    with torch.no_grad():
        assert torch.equal(ctx.link(a, b, nn.Identity())(x, gen(3)), ctx.link(a, b)(x, gen(3)))
        scaled = ctx.link(a, b, lambda y: 2 * y)(x, gen(3))
        assert torch.equal(scaled, b.decoder(2 * awgn(a.transmit(x), 10.0, gen(3))))


def test_context_reads_its_splits_and_model_from_its_paths(tiny_params, tmp_path):
    ctx = context(tiny_params, tmp_path)
    assert ctx.checkpoint("x") == tmp_path / ".checkpoints" / ctx.params.run_name / "adhoc" / "x.pt"
    try:
        ctx.pretrained()
    except Exception as err:  # noqa: BLE001 - the message must name the path under tmp_path
        assert str(tmp_path) in str(err)
    else:
        raise AssertionError("no pretrained model under tmp_path, yet one was loaded")
