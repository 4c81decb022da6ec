"""What the bootstrap intervals add to an evaluation: ``record_intervals`` on scores of a given run's sizes.

    python benchmarks/bootstrap_cost.py [--n_in 9000] [--n_out 9000] [--sets 6] [--resamples 1000]

The cost depends only on the numbers of test images, sets, records and resamples, not on the network, so the
default is the paper's CIFAR-10 protocol (9,000 in-distribution and 9,000 OOD test images per set after the 1,000
tuning images, six OOD sets, MSP and ODIN), on random tied scores. Prints the time against a quickstart-sized run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odin_pl.protocol import MethodGrid, ProtocolPlan, ProtocolResult, Record  # noqa: E402
from odin_pl.protocol.bootstrap import with_intervals  # noqa: E402


def synthetic_result(n_in: int, n_out: int, sets: int) -> ProtocolResult:
    """MSP and ODIN records of ``sets`` OOD sets with random scores (rounded to 1e-4, so with ties)."""
    g = torch.Generator().manual_seed(0)
    msp, odin = ("msp", ()), ("odin", (1000.0, 0.0014))
    scores = lambda n, shift: (torch.rand(n, generator=g, dtype=torch.float64) + shift).round(decimals=4)  # noqa: E731
    plan = ProtocolPlan((MethodGrid.of("msp"), MethodGrid.of("odin", {"temperature": [1000.0], "epsilon": [0.0014]})))
    result = ProtocolResult(plan, in_test_scores={msp: scores(n_in, 0.3), odin: scores(n_in, 0.4)})
    for i in range(sets):
        name = f"set{i}"
        result.ood_test_scores[name] = {msp: scores(n_out, 0.0), odin: scores(n_out, 0.0)}
        result.records += [Record(name, method, setting, {}, {}, n_in, n_out) for method, setting in (msp, odin)]
    return result


def timed(n_in: int, n_out: int, sets: int, resamples: int) -> float:
    result = synthetic_result(n_in, n_out, sets)
    start = time.perf_counter()
    with_intervals(result, resamples)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_in", type=int, default=9000)
    parser.add_argument("--n_out", type=int, default=9000)
    parser.add_argument("--sets", type=int, default=6)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    print(f"{args.resamples} paired resamples, MSP and ODIN, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("\n| run sizes | records | time |\n|---|---|---|")
    for label, n_in, n_out, sets in ((f"{args.n_in} in / {args.n_out} out x {args.sets} sets", args.n_in, args.n_out,
                                      args.sets), ("quickstart: 300 in / 150 out x 3 sets", 300, 150, 3)):
        print(f"| {label} | {2 * sets} | {timed(n_in, n_out, sets, args.resamples):.2f}s |")


if __name__ == "__main__":
    main()
