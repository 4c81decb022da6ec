"""Figures: the ROC points behind them are exact, every figure is written, methods are told apart by colour, line
style and their registered names, and a histogram says when its scores lie in a narrow span."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from odin_pl import files
from odin_pl.errors import OutputError
from odin_pl.methods import list_methods
from odin_pl.report import plots
from odin_pl.report.plots import (method_label, method_styles, plot_grid, plot_histograms, plot_roc,
                                  roc_points)


@pytest.mark.parametrize("scale", [1.0, 25.0, -3.0])
def test_roc_points_match_sklearn_with_ties_and_scores_outside_unit_interval(scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    s_in = torch.randint(0, 12, (300,), generator=g).double() / 10 * scale  # heavy ties
    s_out = torch.randint(0, 9, (170,), generator=g).double() / 10 * scale
    fpr, tpr = roc_points(s_in, s_out)
    labels = np.r_[np.ones(300), np.zeros(170)]
    scores = np.r_[s_in.numpy(), s_out.numpy()]
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), ref_tpr, atol=1e-12)
    assert np.trapezoid(tpr.numpy(), fpr.numpy()) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_figures_are_written(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    scores = {"msp": (torch.rand(50, generator=g), torch.rand(40, generator=g) * 0.8),
              "odin": (torch.rand(50, generator=g), torch.rand(40, generator=g) * 0.5)}
    paths = [plot_roc(scores, "ROC", tmp_path / "roc.png"), plot_histograms(scores, "x", tmp_path / "h.png"),
             plot_grid([[0.5, 0.4], [0.3, 0.2]], [1, 1000], [0, 0.002], (1000.0, 0.002), "grid", tmp_path / "g.png")]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_a_full_disk_leaves_the_old_figure_whole(tmp_path, monkeypatch) -> None:
    """Before issue 29 ``savefig`` wrote in place: a full disk left a truncated ``figures/grid_<set>.png``. Now the
    figure goes through the atomic writer: the previous figure stays whole and no temporary file is left."""
    scores = {"msp": (torch.linspace(0, 1, 20), torch.linspace(0, 0.5, 20))}
    path = plot_roc(scores, "first", tmp_path / "figures" / "roc.png")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OutputError, match=r"cannot write .*roc.png: the disk is full"):
        plot_roc(scores, "second", path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["roc.png"]


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plot functions would save (kept open for inspection)."""
    figures: list = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    return figures


def test_any_number_of_methods_gets_distinct_colours_and_line_styles(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path) -> None:
    """Every registered method and 40 more names: no two share a (colour, line style); a method keeps its style
    in any company (it depends on its registry position only); the legend shows the registered names."""
    names = [*list_methods(), *(f"folder{k}" for k in range(40))]
    styles = method_styles(names)
    pairs = {(s["color"], str(s["linestyle"])) for s in styles.values()}
    assert len(pairs) == len(names)
    assert method_styles(["odin"])["odin"] == styles["odin"] == method_styles(["knn", "odin"])["odin"]
    g = torch.Generator().manual_seed(2)
    figures = _drawn(monkeypatch)
    plot_roc({m: (torch.rand(30, generator=g), torch.rand(30, generator=g)) for m in names}, "ROC", tmp_path / "r.png")
    lines = figures[0].axes[0].get_lines()[:len(names)]
    drawn = {(line.get_color(), str(line._unscaled_dash_pattern)) for line in lines}  # as matplotlib draws them
    assert len(drawn) == len(names)
    legend = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert legend[:2] == ["msp (baseline)", "odin (paper)"] and "energy" in legend and "folder3" in legend


def test_labels_are_the_registered_names_with_their_roles() -> None:
    assert [method_label(m) for m in ("msp", "odin", "energy", "my_ood_folder")] == [
        "msp (baseline)", "odin (paper)", "energy", "my_ood_folder"]


def test_a_histogram_of_scores_in_a_narrow_span_says_so_on_its_axis(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path) -> None:
    """ODIN at T = 1000 on 10 classes: every score within [0.1, 0.1025]; the axis gives that span and why, and
    its ticks show the scores themselves (no offset). MSP's scores spread over [0.1, 1]: no note."""
    g = torch.Generator().manual_seed(3)
    odin = (0.1 + 0.0025 * torch.rand(200, generator=g), 0.1 + 0.001 * torch.rand(200, generator=g))
    msp = (0.1 + 0.9 * torch.rand(200, generator=g), 0.1 + 0.5 * torch.rand(200, generator=g))
    figures = _drawn(monkeypatch)
    plot_histograms({"msp": msp, "odin": odin}, "tin_crop", tmp_path / "h.png")
    figures[0].canvas.draw()
    msp_axis, odin_axis = figures[0].axes
    low, high = float(torch.cat(odin).min()), float(torch.cat(odin).max())
    assert msp_axis.get_xlabel() == "score (higher = more in-distribution)"
    assert odin_axis.get_xlabel().splitlines() == [
        "score (higher = more in-distribution)", f"all scores in [{low:.6g}, {high:.6g}]: their order counts",
        "(a large T makes softmax(f / T) nearly", "uniform: scores lie just above 1 / N)"]
    assert odin_axis.xaxis.get_major_formatter().get_offset() == ""
    assert [ax.get_title() for ax in figures[0].axes] == ["tin_crop: msp (baseline)", "tin_crop: odin (paper)"]
