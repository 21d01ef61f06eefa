"""train.precision: resolution, bf16 training that leaves evaluation and the zero-forget
guarantee in fp32, and checkpoints that never resume across precisions."""
from __future__ import annotations

import pytest
import torch

from pipeline import config, train
from pipeline.pretraining import self_link
from pipeline.sam import attach_sam, sam_disabled, sam_parameters

CPU = torch.device("cpu")


@pytest.fixture
def params(tiny_params) -> config.Params:
    return config.parse(tiny_params)


@pytest.fixture(autouse=True)
def _restore_runtime(monkeypatch):
    """setup_runtime sets process state (precision, threads, deterministic algorithms): put it back."""
    monkeypatch.setattr(train, "_precision", train._precision)
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _model(params: config.Params, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return train.build_model(params)


def _fit(model, images, tmp_path, precision=None, epochs=1, key="k", name="c.pt", **kw):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return train.fit(model, opt, images, lambda x, g: model(x, g), epochs=epochs, batch_size=16, seed=5, device=CPU,
                     checkpoint=tmp_path / name, key=key, desc="t", precision=precision, **kw), opt


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t\t: none\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert train.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert train.cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize("flags, want", [({"avx2", "fma"}, "fp32"), ({"avx512f", "avx512_bf16"}, "bf16"),
                                         ({"avx512f", "amx_bf16", "amx_tile"}, "bf16"), (set(), "fp32")])
def test_auto_is_bf16_only_on_a_cpu_with_bf16_dot_products(monkeypatch, flags, want):
    monkeypatch.setattr(train, "cpu_flags", lambda: frozenset(flags))
    assert train.resolve_precision("auto", CPU) == want
    assert train.resolve_precision("fp32", CPU) == "fp32" and train.resolve_precision("bf16", CPU) == "bf16"


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(train, "cpu_flags", lambda: frozenset())
    for supported, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert train.resolve_precision("auto", torch.device("cuda")) == want


def test_setup_runtime_logs_the_resolved_precision_and_training_uses_it(params, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(train, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    auto = params.model_copy(update={"train": params.train.model_copy(update={"precision": "auto"})})
    info = train.setup_runtime(auto)
    assert info["precision"] == "bf16 (train.precision = auto)" and "precision=bf16" in capsys.readouterr().out
    seen = []
    model = _model(params)

    def forward(x, g):
        seen.append(torch.is_autocast_enabled("cpu"))
        return model(x, g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train.train_one_epoch(model, opt, _images(32), forward, epoch=0, seed=0, batch_size=16, device=CPU, desc="t")
    assert seen == [True, True]  # no precision argument: the one setup_runtime resolved
    assert train.setup_runtime(params)["precision"] == "fp32 (train.precision = fp32)"
    train.train_one_epoch(model, opt, _images(16), forward, epoch=0, seed=0, batch_size=16, device=CPU, desc="t")
    assert seen[-1] is False


def test_bf16_trains_in_bf16_but_weights_optimizer_and_evaluation_stay_fp32(params, tmp_path):
    model = _model(params)
    dtypes = []
    model.decoder.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    history, opt = _fit(model, _images(32), tmp_path, precision="bf16")
    assert dtypes == [torch.bfloat16] * 2 and torch.isfinite(torch.tensor(history[0]["train_loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.is_floating_point())
    test = _images(24, seed=1)
    dtypes.clear()
    ev = dict(noise_seed=3, batch_size=8, device=CPU)
    plain = train.evaluate_psnr(self_link(model.eval()), test, **ev)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's autocast region
        inside = train.evaluate_psnr(self_link(model), test, **ev)
    assert dtypes == [torch.float32] * 6 and inside == plain


def test_sam_switched_off_is_the_base_bit_for_bit_after_bf16_training(params, tmp_path):
    base = _model(params).eval()
    model = attach_sam(_model(params), 0.01, "linear")
    scores, values = sam_parameters(model)
    before = [t.detach().clone() for t in scores + values]
    opt = torch.optim.Adam([{"params": scores, "lr": 1.0}, {"params": values, "lr": 1e-2}])
    train.fit(model, opt, _images(48), lambda x, g: model(x, g), epochs=2, batch_size=16, seed=5, device=CPU,
              checkpoint=tmp_path / "sam.pt", key="k", desc="sam", precision="bf16")
    assert any(not torch.equal(a, b) for a, b in zip(before, scores + values))  # the SAM did train
    x = train.to_float(_images(16, seed=2), CPU)
    model.eval()
    with torch.no_grad():
        with sam_disabled(model):
            off = model(x, torch.Generator().manual_seed(1))
        on = model(x, torch.Generator().manual_seed(1))
        ref = base(x, torch.Generator().manual_seed(1))
    assert off.dtype == torch.float32 and torch.equal(off, ref) and not torch.equal(on, ref)


def test_a_checkpoint_never_resumes_in_another_precision(params, tmp_path, capsys):
    bf16 = params.model_copy(update={"train": params.train.model_copy(update={"precision": "bf16"})})
    keys = {p: train.fingerprint("pretrain", p.model_dump(include={"data", "model", "train", "pretrain", "evaluate"}))
            for p in (params, bf16)}
    assert keys[params] != keys[bf16]  # the stages' keys hash the train block, precision included
    # "auto" hashes the same on every machine: fit itself refuses a checkpoint of the other precision
    _fit(_model(params), _images(32), tmp_path, precision="bf16", epochs=1, key="same")
    history, _ = _fit(_model(params), _images(32), tmp_path, precision="fp32", epochs=1, key="same")
    out = capsys.readouterr().out
    assert "starting from scratch" in out and "resumed" not in out and len(history) == 1
    history, _ = _fit(_model(params), _images(32), tmp_path, precision="fp32", epochs=2, key="same")
    assert "resumed from checkpoint at epoch 1/2" in capsys.readouterr().out and len(history) == 2
