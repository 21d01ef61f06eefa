"""Study ``snr`` (pipeline/studies/snr.py): every method at other SNRs and on both channels, no retraining."""
from __future__ import annotations

from ..conftest import ADAPTED_SPARSITIES, context

SPARSITIES = ADAPTED_SPARSITIES


def test_the_snr_study_keeps_sam_aligned(adapted):
    import matplotlib.pyplot as plt
    from pipeline.studies import snr as study
    params = adapted.params
    df, finding, fig = study.run(context(adapted))
    plt.close(fig)
    assert list(df.columns[:2]) == ["channel", "snr_db"]
    assert sorted(set(df.snr_db)) == sorted(params.ablate.snr_db) and set(df.channel) == {"awgn", "rayleigh"}
    sam = df[df.method.str.startswith("sam")]
    assert len(sam) == 2 * len(params.ablate.snr_db)  # sam at its largest sparsity only, on both channels
    assert (sam.misalignment == 0.0).all(), sam
    for channel in ("awgn", "rayleigh"):
        for snr in params.ablate.snr_db:
            assert set(df[(df.snr_db == snr) & (df.channel == channel)].method) == {
                "pretrained", f"sam γ={max(SPARSITIES):g}", "tuning_retune", "tuning_copy", "no_alignment", "equalizer",
                f"lora γ={max(SPARSITIES):g}", f"delta_topk γ={max(SPARSITIES):g}", "bitfit", "base_control"}
    # the channel matters: pretrained's own PSNR rises with the SNR (on AWGN, which it was trained on:
    # the tiny 2-epoch model is too weak to show a trend through fading) ...
    pre = df[(df.method == "pretrained") & (df.channel == "awgn")].sort_values("snr_db").domain_psnr.tolist()
    assert pre == sorted(pre) and pre[0] < pre[-1], pre
    # ... and each channel is really applied (the tiny model is too weak for fading to cost it much)
    pre = df[df.method == "pretrained"].pivot(index="snr_db", columns="channel", values="domain_psnr")
    assert (pre.rayleigh != pre.awgn).all(), pre
    assert "awgn and rayleigh" in finding and "rayleigh: " in finding
