"""Per-image score files that say what produced them, written atomically, so that an evaluation can resume.

``<folder>/<set>__<split>.pt`` holds ``{"plan": {method: [setting, ...]}, "scores": {method: Tensor[len(settings),
n]}, "context": {...}}``. The context is the run's fixed facts (a fingerprint of the weights, dtype, seeds, tuning
size, ...) plus the set's own (its source and size); with the seed, tuning size and set size it fixes the split
indices. :meth:`ScoreStore.load` returns scores only when plan and context both match (a file of another plan, or
of an earlier version, is scored again).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

Plan = Mapping[str, Sequence[Sequence[float]]]


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed into place: never a half-written file. Saved
    through a file handle, the bytes depend on ``obj`` alone (a path would name the archive inside after the
    temporary file), so that equal contents have equal SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
    os.replace(temporary, path)


def _plan(plan: Plan) -> dict[str, list[list[float]]]:
    return {method: [[float(v) for v in setting] for setting in settings] for method, settings in plan.items()}


class ScoreStore:
    """Saves and finds the score tensors of one evaluation run.

    ``context``: facts shared by all sets (JSON-like values); ``sets``: per set name, facts of that set.
    """

    def __init__(self, folder: str | Path, context: dict[str, Any], sets: dict[str, dict[str, Any]]) -> None:
        self.folder = Path(folder)
        self.context, self.sets = context, sets
        self.reused: list[str] = []

    def path(self, name: str, split: str) -> Path:
        return self.folder / f"{name}__{split}.pt"

    def _context(self, name: str) -> dict[str, Any]:
        return {**self.context, "set": self.sets.get(name)}

    def save(self, name: str, split: str, plan: Plan, scores: Mapping[str, Tensor]) -> None:
        """Write the scores atomically (see :func:`save_atomically`)."""
        save_atomically({"plan": _plan(plan), "scores": {m: t.cpu() for m, t in scores.items()},
                         "context": self._context(name)}, self.path(name, split))

    def load(self, name: str, split: str, plan: Plan) -> dict[str, Tensor] | None:
        """The saved scores of (set, split) for exactly this plan and this context, else None."""
        path = self.path(name, split)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable (foreign or damaged file): score again
            return None
        if (not isinstance(saved, dict) or saved.get("context") != self._context(name)
                or saved.get("plan") != _plan(plan)):
            return None
        self.reused.append(path.name)
        return saved["scores"]
