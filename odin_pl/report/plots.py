"""PNG figures of an evaluation: ROC curves (paper, Figure 1), score histograms and the tuning-grid heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchmetrics.functional.classification import binary_roc  # noqa: E402

from odin_pl.errors import UserError  # noqa: E402
from odin_pl.files import atomic_write  # noqa: E402
from odin_pl.methods import create_method, list_methods  # noqa: E402

MethodScores = Mapping[str, tuple[Tensor, Tensor]]  # method -> (in-distribution scores, OOD scores)
PALETTE = plt.get_cmap("tab10").colors  # 10 colours; the line style changes every 10 methods
NARROW = 0.05  # a score span narrower than this fraction of the scores' magnitude gets a note on the axis


def method_label(method: str) -> str:
    """The method's registered name and its roles, e.g. ``msp (baseline)``, ``odin (paper)``, ``energy``; a name
    the registry does not know is shown as it is."""
    try:
        roles = sorted(create_method(method).roles)
    except UserError:
        return method
    return f"{method} ({', '.join(roles)})" if roles else method


def method_styles(methods: Iterable[str]) -> dict[str, dict[str, object]]:
    """Colour and line style of each method, fixed by its position k in ``list_methods()`` (names the registry
    does not know follow, in sorted order): colour k mod 10 of tab10, solid for k < 10, then a dash pattern of its
    own for each further block of 10, so that any number of methods gets distinct (colour, style) pairs."""
    registered = list_methods()
    unknown = sorted(set(methods) - set(registered))
    styles = {}
    for method in methods:
        k = registered.index(method) if method in registered else len(registered) + unknown.index(method)
        block = k // len(PALETTE)
        styles[method] = {"color": PALETTE[k % len(PALETTE)],
                          "linestyle": "-" if block == 0 else (0, (1 + 2 * block, 1 + block))}
    return styles


def roc_points(in_scores: Tensor, out_scores: Tensor) -> tuple[Tensor, Tensor]:
    """(FPR, TPR) of the ROC curve with in-distribution positive, via torchmetrics' exact binary ROC.

    Scores are ranked first, so that torchmetrics never applies its sigmoid to values outside [0, 1].
    """
    scores = torch.cat([in_scores, out_scores]).double()
    ranks = torch.argsort(torch.argsort(scores)).double() / max(len(scores) - 1, 1)
    ranks = _tied_ranks(scores, ranks)
    target = torch.cat([torch.ones(len(in_scores)), torch.zeros(len(out_scores))]).long()
    fpr, tpr, _ = binary_roc(ranks, target)
    return fpr, tpr


def _tied_ranks(scores: Tensor, ranks: Tensor) -> Tensor:
    """Give tied scores one rank (their largest), so that a rank transform keeps ties tied."""
    unique, inverse = torch.unique(scores, return_inverse=True)
    top = torch.full((len(unique),), -1.0, dtype=ranks.dtype).scatter_reduce(0, inverse, ranks, "amax")
    return top[inverse]


def plot_roc(scores: MethodScores, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    styles = method_styles(scores)
    for method, (s_in, s_out) in scores.items():
        fpr, tpr = roc_points(s_in, s_out)
        ax.plot(fpr.numpy(), tpr.numpy(), label=method_label(method), **styles[method])
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def score_axis_label(method: str, low: float, high: float) -> str:
    """The x-axis label of a score histogram spanning [low, high]: what the score is and, where every score lies
    in a span narrow against its magnitude, that span (and, for a method with a temperature T, why: at a large T
    the softmax is nearly uniform, so max softmax(f / T) lies just above 1 / N)."""
    lines = ["score (higher = more in-distribution)"]
    if high - low < NARROW * max(abs(low), abs(high)):
        lines.append(f"all scores in [{low:.6g}, {high:.6g}]: their order counts")
        try:
            temperature = any(param.name == "temperature" for param in create_method(method).params)
        except UserError:
            temperature = False
        if temperature:
            lines += ["(a large T makes softmax(f / T) nearly", "uniform: scores lie just above 1 / N)"]
    return "\n".join(lines)


def plot_histograms(scores: MethodScores, title: str, path: Path) -> Path:
    """One histogram per method of the in-distribution and OOD scores (density), on the scores' own span."""
    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.6), squeeze=False)
    for ax, (method, (s_in, s_out)) in zip(axes[0], scores.items()):
        low = float(min(s_in.min(), s_out.min()))
        high = float(max(s_in.max(), s_out.max()))
        bins = torch.linspace(low, high if high > low else low + 1e-6, 41).numpy()
        ax.hist(s_in.numpy(), bins=bins, alpha=0.6, density=True, label="in-distribution")
        ax.hist(s_out.numpy(), bins=bins, alpha=0.6, density=True, label="OOD")
        ax.set(title=f"{title}: {method_label(method)}", xlabel=score_axis_label(method, low, high),
               ylabel="density")
        ax.ticklabel_format(axis="x", useOffset=False)  # the scores themselves, not an offset and differences
        ax.legend()
    return save_figure(fig, path)


def plot_grid(fpr_grid: Sequence[Sequence[float]], temperatures: Sequence[float], epsilons: Sequence[float],
              chosen: tuple[float, float], title: str, path: Path) -> Path:
    """FPR at 95% TPR (percent) on the tuning split for every (T, epsilon), the chosen one circled."""
    grid = 100 * torch.tensor(fpr_grid, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(0.45 * len(epsilons) + 2.5, 0.4 * len(temperatures) + 1.8))
    image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis_r", origin="lower")
    ax.set_xticks(range(len(epsilons)), [f"{e:.4g}" for e in epsilons], rotation=90, fontsize=7)
    ax.set_yticks(range(len(temperatures)), [f"{t:g}" for t in temperatures], fontsize=7)
    ax.plot(list(epsilons).index(chosen[1]), list(temperatures).index(chosen[0]), "o", mfc="none", mec="red", ms=10)
    ax.set(xlabel="epsilon", ylabel="T", title=title)
    fig.colorbar(image, ax=ax, label="FPR at 95% TPR (%)")
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` through :func:`~odin_pl.files.atomic_write` (never a truncated figure),
    then close it."""
    try:
        fig.tight_layout()
        with atomic_write(path, "wb") as handle:
            fig.savefig(handle, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
