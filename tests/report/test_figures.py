"""pipeline.report.figures: what each figure draws, one colour per method, byte-reproducible PNGs."""
from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pytest

from pipeline.report import figures
from pipeline.report.inputs import METHODS
from pipeline.stages import save_figure

from ..synthetic import DOMAINS, GAMMAS, REFERENCE, domain_psnr, memory_bytes, through_csv, tidy
from .test_frames import SHIFTS, frames, shift


def labelled(ax) -> dict:
    """Label -> data line of every errorbar container and labelled line of a panel."""
    lines = {c.get_label(): c.lines[0] for c in ax.containers if hasattr(c, "lines")}  # errorbar: (line, caps, bars)
    return lines | {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


@pytest.fixture
def seeded(tmp_path):
    """Three seeds, every method; VC's sam 3 dB better than elsewhere, so the panels' ranges differ."""
    raw = tidy(new=True, seeds=(0, 1, 2), shift=shift)
    raw.loc[(raw["method"] == "sam") & (raw["metric"] == "domain_psnr") & (raw["domain"] == "VC"), "value"] += 3.0
    return through_csv(raw, tmp_path)


def test_psnr_vs_bytes_draws_the_gain_over_pretrained_per_domain(seeded):
    fig = figures.fig_psnr_vs_bytes(frames(seeded), DOMAINS)
    assert len(fig.axes) == len(DOMAINS) and fig.axes[0].get_xscale() == "log"
    lines = labelled(fig.axes[1])
    sam = lines["sam"]  # a line over γ: bytes ascending, gain of VP at each γ (mean over seeds)
    assert list(sam.get_xdata()) == [memory_bytes("sam", g, 3) for g in GAMMAS]
    assert list(sam.get_ydata()) == pytest.approx([domain_psnr("sam", g, 1) - domain_psnr("pretrained", None, 1)
                                                   + np.mean(SHIFTS) for g in GAMMAS])
    assert "pretrained (0 dB)" in lines and list(lines["pretrained (0 dB)"].get_ydata()) == [0, 0]
    assert "tuning_retune (0 B)" in lines and len(lines["bitfit"].get_xdata()) == 1
    bars = next(c for c in fig.axes[1].containers if c.get_label() == "sam").lines[2][0]  # the vertical bars
    assert len(bars.get_segments()) == len(GAMMAS)  # three seeds: an interval at every γ


def test_each_domain_panel_has_its_own_y_axis(seeded):
    for draw in (figures.fig_psnr_vs_bytes, figures.fig_psnr_vs_sparsity):
        fig = draw(frames(seeded), DOMAINS)
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == [f"domain {d}" for d in DOMAINS]
        assert not any(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes[1:])
        top = {d: ax.get_ylim()[1] for d, ax in zip(DOMAINS, axes)}
        assert top["VC"] > top["VA"] + 2 and top["VC"] > top["VP"] + 2  # VC's sam gain is 3 dB higher
        assert all("gain over pretrained" in ax.get_ylabel() for ax in axes)


def test_legends_are_outside_the_data_area(seeded):
    f = frames(seeded)
    for fig in (figures.fig_psnr_vs_bytes(f, DOMAINS), figures.fig_psnr_vs_sparsity(f, DOMAINS),
                figures.fig_memory_network(f)):
        assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
        (legend,) = fig.legends
        fig.canvas.draw()
        box = legend.get_window_extent()
        assert all(box.x0 >= ax.get_window_extent().x1 for ax in fig.axes)


def test_a_method_has_one_colour_in_every_figure(seeded):
    f = frames(seeded)
    drawn = {"bytes": labelled(figures.fig_psnr_vs_bytes(f, DOMAINS).axes[0]),
             "sparsity": labelled(figures.fig_psnr_vs_sparsity(f, DOMAINS).axes[0]),
             "network": labelled(figures.fig_memory_network(f).axes[0])}
    for label, fig_key in (("sam", "bytes"), ("sam", "sparsity"), ("sam γ=1%", "network"), ("sam γ=0.1%", "network"),
                           ("lora", "sparsity"), ("lora γ=1%", "network"), ("bitfit", "bytes"), ("bitfit", "network")):
        method = label.split()[0]
        assert mcolors.to_rgb(drawn[fig_key][label].get_color()) == pytest.approx(figures.method_colour(method))
    assert mcolors.to_rgb(drawn["sparsity"]["tuning_copy (full tuning)"].get_color()) == pytest.approx(
        figures.method_colour("tuning_copy"))
    bars = figures.fig_misalignment(f, seeded, REFERENCE).axes[0].patches
    assert mcolors.to_rgb(bars[0].get_facecolor()) == pytest.approx(figures.method_colour("pretrained"))


def test_method_colours_are_distinct_and_stable():
    colours = [figures.method_colour(m) for m in METHODS]
    assert len(set(colours)) == len(METHODS)
    assert figures.method_colour("a_new_method") == figures.method_colour("a_new_method")
    assert figures.method_colour("a_new_method") not in colours


def test_memory_network_figure(seeded):
    fig = figures.fig_memory_network(frames(seeded))
    eq = next(line for line in fig.axes[0].get_lines() if line.get_label() == "equalizer")
    assert fig.axes[0].get_yscale() == "log" and eq.get_ydata()[-1] / eq.get_ydata()[0] == pytest.approx(1023)
    assert eq.get_linestyle() == "--"  # stored per partner


def test_misalignment_figure_is_the_same_bytes_for_the_same_numbers(full, tmp_path):
    """Its strip plot jitters with numpy's global generator: seeded for the figure, left as it was."""
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(paths):
        np.random.seed(i)  # another global state before each drawing
        before = np.random.get_state()
        save_figure(figures.fig_misalignment(frames(full), full, REFERENCE), path)
        after = np.random.get_state()
        assert np.array_equal(after[1], before[1]) and after[2:] == before[2:]
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_gain_figures_are_the_same_bytes_for_the_same_numbers(seeded, tmp_path):
    for draw in (figures.fig_psnr_vs_bytes, figures.fig_psnr_vs_sparsity):
        for name in ("a.png", "b.png"):
            save_figure(draw(frames(seeded), DOMAINS), tmp_path / name)
        assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
