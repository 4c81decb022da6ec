"""Paired percentile bootstrap intervals of the OOD metrics (DESIGN, "Uncertainty").

For one OOD set's test split, with in-distribution scores S_in (n_in images) and OOD scores S_out (n_out images):

    resample b = 1..B:  I_b ~ n_in indices and O_b ~ n_out indices, uniform with replacement (independently)
    m_b        = metric(S_in[I_b], S_out[O_b])
    interval   = numpy's linear 2.5th and 97.5th percentiles of (m_1, ..., m_B)

The indices are drawn once per set from a generator seeded by the run's seed and the set's name, and every method
and setting of the set uses the same (I_b, O_b) (paired), so the difference to the baseline (the registry's
``method_with_role("baseline")``, MSP), m_b - m_b(baseline), gets its own interval. The point estimate stays the
metric on the original scores; the intervals are conditional on the tuned parameters (the tuning images are not
resampled).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from odin_pl.errors import UserError
from odin_pl.methods import method_with_role
from odin_pl.metrics import metric_rows
from odin_pl.protocol.records import ProtocolResult, Record
from odin_pl.protocol.tuning import split_seed

DEFAULT_RESAMPLES = 1000
INTERVAL_FIELDS = ("ci_low", "ci_high", "diff_ci_low", "diff_ci_high")  # a record's <metric>_<field>
LEVEL = 0.95
MetricRows = Callable[..., dict[str, Tensor]]  # (in rows, out rows, in counts, out counts) -> metrics
CHUNK_ELEMENTS = 4_000_000  # resample weights held at once: [chunk, n_in + n_out] float64 (32 MB)


def resample_indices(n_in: int, n_out: int, resamples: int, seed: int) -> tuple[Tensor, Tensor]:
    """The seeded resample-index matrices [resamples, n_in] and [resamples, n_out] of one set."""
    generator = torch.Generator().manual_seed(seed)
    in_indices = torch.randint(n_in, (resamples, n_in), generator=generator)
    return in_indices, torch.randint(n_out, (resamples, n_out), generator=generator)


def resampled_metrics(in_scores: Tensor, out_scores: Tensor, in_indices: Tensor, out_indices: Tensor,
                      rows_of: MetricRows = metric_rows) -> dict[str, Tensor]:
    """Every metric on every resample: ``{metric: Tensor[B]}``. A resample is the count of each image in it, so
    the scores are sorted once and each resample is a row of weights (``rows_of``: :func:`odin_pl.metrics.
    metric_rows`, or OpenOOD's :func:`odin_pl.openood_metrics.openood_metric_rows`)."""
    s_in, s_out = in_scores.double().cpu()[None], out_scores.double().cpu()[None]
    parts: dict[str, list[Tensor]] = {}
    for rows in _chunks(len(in_indices), max(1, CHUNK_ELEMENTS // (s_in.shape[1] + s_out.shape[1]))):
        counts = [_counts(indices[rows], n) for indices, n in ((in_indices, s_in.shape[1]),
                                                               (out_indices, s_out.shape[1]))]
        for name, values in rows_of(s_in, s_out, *counts).items():
            parts.setdefault(name, []).append(values)
    return {name: torch.cat(values) for name, values in parts.items()}


def _counts(indices: Tensor, n: int) -> Tensor:
    """[B, n]: how often each of n images occurs in each row of resample indices."""
    return torch.zeros(len(indices), n, dtype=torch.float64).scatter_add_(
        1, indices, torch.ones(indices.shape, dtype=torch.float64))


def percentile_interval(values: Tensor, level: float = LEVEL) -> tuple[float, float]:
    """numpy's linear percentiles (1 - level) / 2 and (1 + level) / 2 of the values."""
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(values.double(), tails, interpolation="linear").tolist()
    return low, high


def with_intervals(result: ProtocolResult, resamples: int, level: float = LEVEL) -> list[Record]:
    """The records of ``result`` (in order) with their bootstrap fields (seeded by the plan's seed):
    ``<metric>_ci_low``/``_ci_high`` and, for a record of another method than the baseline in a run with the
    baseline, ``<metric>_diff_ci_low``/``_diff_ci_high`` of (record - baseline)."""
    if resamples < 2:
        raise UserError(f"the bootstrap needs at least 2 resamples, got {resamples} (0 turns it off)")
    by_set: dict[str, list[int]] = {}
    for index, record in enumerate(result.records):
        by_set.setdefault(record.ood, []).append(index)
    intervals: dict[int, dict] = {}
    for name, indices in by_set.items():
        intervals.update(_set_intervals(result, name, indices, resamples, bootstrap_seed(result.plan.seed, name),
                                        level))
    return [record.with_intervals(intervals[index]) for index, record in enumerate(result.records)]


def _set_intervals(result: ProtocolResult, name: str, indices: list[int], resamples: int, seed: int, level: float
                   ) -> dict[int, dict]:
    """The intervals of the records ``indices`` of one OOD set, all on the same resamples."""
    n_in = len(next(iter(result.in_test_scores.values())))
    n_out = len(next(iter(result.ood_test_scores[name].values())))
    in_indices, out_indices = resample_indices(n_in, n_out, resamples, seed)
    samples: dict[tuple, dict[str, Tensor]] = {}

    def metrics_of(key: tuple) -> dict[str, Tensor]:
        if key not in samples:
            samples[key] = resampled_metrics(result.in_test_scores[key], result.ood_test_scores[name][key],
                                             in_indices, out_indices)
        return samples[key]

    grid = result.plan.method(method_with_role("baseline"))
    baseline = (grid.name, grid.settings[0]) if grid is not None else None
    baseline = baseline if baseline in result.ood_test_scores[name] else None
    intervals = {}
    for index in indices:
        key = result.records[index].key
        fields = {}
        for metric, values in metrics_of(key).items():
            fields[f"{metric}_ci_low"], fields[f"{metric}_ci_high"] = percentile_interval(values, level)
            if baseline is not None and key != baseline:
                difference = values - metrics_of(baseline)[metric]
                fields[f"{metric}_diff_ci_low"], fields[f"{metric}_diff_ci_high"] = percentile_interval(difference,
                                                                                                        level)
        intervals[index] = fields
    return intervals


def bootstrap_seed(seed: int, set_name: str) -> int:
    """The generator seed of a set's resamples: a function of the run's seed and the set's name only."""
    return split_seed(seed, f"bootstrap/{set_name}")


def _chunks(n: int, size: int) -> Iterator[slice]:
    return (slice(start, min(start + size, n)) for start in range(0, n, size))
