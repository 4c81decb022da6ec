"""Figures: the ROC points behind them are exact, and every figure is written."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from odin_pl import files
from odin_pl.errors import OutputError
from odin_pl.report.plots import plot_grid, plot_histograms, plot_roc, roc_points


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
