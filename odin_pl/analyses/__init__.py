"""The paper's analyses (sections 4.5, 5.1-5.3, appendices D-I) on a trained classifier and a protocol result.

Each analysis writes ``<name>.png`` and the numbers behind it, ``<name>.json``, to the context's output folder;
see the modules for the math. ``run_analyses(parse_analyses("all"), context)`` runs them all, sharing work
(seeded samples, clean logits, the protocol's scores) through the context.
"""

from __future__ import annotations

from typing import Any, Callable

from odin_pl.analyses import distances, gradients, logit_stats, sweeps, taylor, thresholds, tuning_size
from odin_pl.analyses.context import AnalysisContext, AnalysisOutput
from odin_pl.errors import UserError
from odin_pl.methods import method_with_role

ANALYSES: dict[str, Callable[[AnalysisContext], AnalysisOutput]] = {
    "sweeps": sweeps.run,                  # Figures 3, 4, 7-9
    "logit-stats": logit_stats.run,        # Figure 5 a-b, f-g, Figure 10
    "gradient-norms": gradients.run,       # Figure 5 c-e, Figures 11-12
    "distances": distances.run,            # Figure 2, appendix G
    "threshold": thresholds.run_threshold,  # Figure 13
    "tuning-size": tuning_size.run,        # Figure 15
    "accuracy": thresholds.run_accuracy,   # Figure 16
    "taylor": taylor.run,                  # equation (3), appendices D and E
}

# Analyses of the paper method's own mechanism (ODIN's T and epsilon): the roles of the methods they need
# (``odin_pl.methods.registry.method_with_role``).
NEEDS_ROLES = {"sweeps": ("paper",), "logit-stats": ("paper",), "gradient-norms": ("paper",), "taylor": ("paper",)}

__all__ = ["ANALYSES", "AnalysisContext", "AnalysisOutput", "check_analyses", "parse_analyses", "run_analyses",
           "scalar_metrics"]


def parse_analyses(names: str | None) -> list[str]:
    """'sweeps,taylor' or 'all' -> the analysis names, in registry order for 'all'; a clear error for unknown names."""
    requested = [n.strip() for n in (names or "").split(",") if n.strip()]
    if requested == ["all"]:
        return list(ANALYSES)
    unknown = [n for n in requested if n not in ANALYSES]
    if unknown:
        raise UserError(f"unknown analysis {', '.join(map(repr, unknown))}; choose from {', '.join(ANALYSES)} "
                        "or 'all'")
    return list(dict.fromkeys(requested))


def check_analyses(names: list[str], methods: list[str]) -> None:
    """Raise a UserError when an analysis needs a method the run does not evaluate."""
    for name in names:
        missing = [m for m in map(method_with_role, NEEDS_ROLES.get(name, ())) if m not in methods]
        if missing:
            raise UserError(f"the analysis {name!r} studies ODIN's T and epsilon and needs the method(s) "
                            f"{', '.join(missing)}: add them to --tuning.methods or drop {name!r}")


def run_analyses(names: list[str], context: AnalysisContext) -> dict[str, AnalysisOutput]:
    """Run the named analyses; returns what each one wrote."""
    check_analyses(names, [m.name for m in context.result.methods])
    return {name: ANALYSES[name](context) for name in names}


def scalar_metrics(data: Any, prefix: str) -> dict[str, float]:
    """The numbers of an analysis' JSON that are not inside lists, flattened to ``prefix/key/...`` for a logger."""
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in scalar_metrics(value, f"{prefix}/{key}").items()}
    is_number = isinstance(data, (int, float)) and not isinstance(data, bool)
    return {prefix: float(data)} if is_number else {}
