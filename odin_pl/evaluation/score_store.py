"""Per-image score files that say what produced them and prove their content, written atomically, so that an
evaluation can resume.

``<folder>/<set>__<split>.pt`` holds a whole scoring pass: ``{"plan": {method: [setting, ...]}, "scores": {method:
Tensor[len(settings), n]}, "scores_sha256": ..., "context": {...}}``. A long pass is also saved as it goes, in
chunks: ``<folder>/<set>__<split>.<start>-<stop>.pt`` holds the same for the images ``start`` to ``stop - 1`` of the
split (in the split's own index order, whatever the number of processes), with ``"range": [start, stop]``; a chunk
is written every :data:`CHUNK_SECONDS` of work, and the chunks of a pass are removed once its whole file is saved.

The context is the run's fixed facts (the weights' SHA-256, image spec, dtype, seed, tuning size, ...) plus the set's
own (its source, size and the SHA-256 of its images, :func:`odin_pl.fingerprint.dataset_sha256`); with the seed,
tuning size and set size it fixes the split indices. A saved file is used only when its context and plan equal the
run's, its scores match the SHA-256 ``scores_sha256`` saved with them, and every score is finite and inside its
method's range (``ranges``, up to :data:`ULPS` units in the last place); otherwise one line says which file and why,
and its scores are computed again.
"""

from __future__ import annotations

import glob
import math
import re
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from odin_pl.errors import UserError
from odin_pl.files import named_file, save_atomically
from odin_pl.fingerprint import tensors_sha256

Plan = Mapping[str, Sequence[Sequence[float]]]
Span = tuple[int, int]  # images [start, stop) of a split
#: Which saved scores a run uses: ``never`` (score everything), ``matching`` (resume: the files that prove to match),
#: ``required`` (every whole pass from its file; a missing or refused file is an error).
Reuse = Literal["never", "matching", "required"]
#: Seconds of work after which the scores computed so far in a pass are written as a chunk.
CHUNK_SECONDS = 120.0
#: Slack of the range check, in units in the last place of the range's largest finite bound (at least 1).
ULPS = 4


def _plan(plan: Plan) -> dict[str, list[list[float]]]:
    return {method: [[float(v) for v in setting] for setting in settings] for method, settings in plan.items()}


def _context_change(saved: Any, current: Mapping[str, Any]) -> str | None:
    """Why a file's saved context is not the run's (weights, then run settings, then the set's images), or None."""
    if not isinstance(saved, dict):
        return "it is not a score file of this version"
    if saved.get("weights_sha256") != current.get("weights_sha256"):
        return "it was made with other weights"
    settings = sorted(k for k in saved.keys() | current.keys() if k != "set" and saved.get(k) != current.get(k))
    if settings:
        return f"it was made with other settings ({', '.join(settings)})"
    if current["set"] is None or current["set"].get("images_sha256") is None:
        return "the images of its set cannot be fingerprinted, so no saved score can be proven to match them"
    if saved.get("set") != current["set"]:
        return "its images changed since it was saved"
    return None


def _out_of_range(method: str, scores: Tensor, bounds: tuple[float, float] | None) -> str | None:
    """Why a method's saved scores cannot be its scores (NaN or Inf, or outside ``bounds``), or None."""
    if not bool(torch.isfinite(scores).all()):
        return f"its {method} scores contain NaN or Inf"
    if bounds is None or scores.numel() == 0:
        return None
    low, high = bounds
    slack = ULPS * torch.finfo(scores.dtype).eps * max([1.0, *(abs(b) for b in bounds if math.isfinite(b))])
    if float(scores.min()) < low - slack or float(scores.max()) > high + slack:
        return (f"its {method} scores lie in [{float(scores.min()):.8g}, {float(scores.max()):.8g}], outside the "
                f"method's range [{low:.8g}, {high:.8g}]")
    return None


class ScoreStore:
    """Saves and finds the score files of one evaluation run (the protocol's ``ScoreCache``,
    :class:`odin_pl.protocol.run.ScoreCache`).

    ``context``: facts shared by all sets (JSON-like values); ``sets``: per set name, facts of that set (its
    ``images_sha256`` None when its images cannot be fingerprinted: its files are then never reused); ``ranges``:
    per method, the interval its scores lie in (``Method.score_range``); ``reuse``: which saved scores
    :meth:`load` and :meth:`load_ranges` give (:data:`Reuse`). ``reused`` lists the files used.
    """

    def __init__(self, folder: str | Path, context: dict[str, Any], sets: dict[str, dict[str, Any]],
                 ranges: Mapping[str, tuple[float, float]] | None = None, reuse: Reuse = "matching") -> None:
        if reuse not in ("never", "matching", "required"):
            raise ValueError(f"reuse must be 'never', 'matching' or 'required', got {reuse!r}")
        self.folder = Path(folder)
        self.context, self.sets, self.ranges, self.reuse = context, sets, dict(ranges or {}), reuse
        self.reused: list[str] = []
        self._pending: dict[tuple[str, str], tuple[float, int, int, dict[str, list[Tensor]]]] = {}

    def path(self, name: str, split: str) -> Path:
        return named_file(self.folder, f"{name}__{split}.pt")

    def chunk_path(self, name: str, split: str, span: Span) -> Path:
        return named_file(self.folder, f"{name}__{split}.{span[0]}-{span[1]}.pt")

    def chunks(self, name: str, split: str) -> dict[Span, Path]:
        """The chunk files of (set, split) by their range, as their names say."""
        pattern = re.compile(re.escape(f"{name}__{split}.") + r"(\d+)-(\d+)\.pt")
        found = {}
        for path in self.folder.glob(f"{glob.escape(name)}__{split}.*-*.pt"):
            match = pattern.fullmatch(path.name)
            if match:
                found[(int(match[1]), int(match[2]))] = path
        return dict(sorted(found.items()))

    def _context(self, name: str) -> dict[str, Any]:
        return {**self.context, "set": self.sets.get(name)}

    def _write(self, path: Path, name: str, plan: Plan, scores: Mapping[str, Tensor], span: Span | None) -> None:
        scores = {m: t.cpu() for m, t in scores.items()}
        content = {"plan": _plan(plan), "scores": scores, "scores_sha256": tensors_sha256(scores),
                   "context": self._context(name)}
        save_atomically({**content, "range": list(span)} if span is not None else content, path)

    def save(self, name: str, split: str, plan: Plan, scores: Mapping[str, Tensor]) -> None:
        """Write the scores of a whole pass atomically (see :func:`save_atomically`), then remove its chunks."""
        self._write(self.path(name, split), name, plan, scores, None)
        self._pending.pop((name, split), None)
        for path in self.chunks(name, split).values():
            path.unlink(missing_ok=True)

    def save_range(self, name: str, split: str, plan: Plan, start: int, stop: int,
                   scores: Mapping[str, Tensor]) -> None:
        """Keep the scores of the images [start, stop) of a pass; write the kept run of contiguous ranges as a
        chunk file once :data:`CHUNK_SECONDS` have passed since it began, or before a range that does not
        continue it."""
        key = (name, split)
        pending = self._pending.get(key)
        if pending is not None and pending[2] != start:
            self._flush(key, plan)
            pending = None
        if pending is None:
            pending = (time.monotonic(), start, start, {m: [] for m in scores})
        began, first, _, parts = pending
        for method, tensor in scores.items():
            parts[method].append(tensor.cpu())
        self._pending[key] = (began, first, stop, parts)
        if time.monotonic() - began >= CHUNK_SECONDS:
            self._flush(key, plan)

    def _flush(self, key: tuple[str, str], plan: Plan) -> None:
        _, first, stop, parts = self._pending.pop(key)
        self._write(self.chunk_path(*key, (first, stop)), key[0], plan,
                    {m: torch.cat(tensors, dim=1) for m, tensors in parts.items()}, (first, stop))

    def _check(self, path: Path, name: str, plan: Plan, span: Span | None) -> dict[str, Tensor] | str:
        """The scores saved in ``path`` when they prove to be this plan's for this context (and the images
        ``span`` of the split, for a chunk), else why not."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a foreign or damaged file: scored again
            return "it cannot be read (damaged, or not a score file)"
        if (not isinstance(saved, dict) or not {"plan", "scores", "scores_sha256", "context"} <= saved.keys()
                or not isinstance(saved["scores"], dict)
                or not all(isinstance(t, Tensor) and t.is_floating_point() for t in saved["scores"].values())):
            return "it is not a score file of this version (one with the SHA-256 of its scores)"
        change = _context_change(saved["context"], self._context(name))
        if change is not None:
            return change
        if saved["plan"] != _plan(plan):
            return "it was made for other methods or settings"
        scores = saved["scores"]
        if tensors_sha256(scores) != saved["scores_sha256"]:
            return "its scores do not match the SHA-256 saved with them (the file was damaged)"
        if span is not None:
            shapes = {m: tuple(t.shape) for m, t in scores.items()}
            expected = {m: (len(settings), span[1] - span[0]) for m, settings in plan.items()}
            if saved.get("range") != list(span) or shapes != expected:
                return f"it does not hold the scores of images {span[0]} to {span[1] - 1} that its name says"
        for method, tensor in scores.items():
            reason = _out_of_range(method, tensor, self.ranges.get(method))
            if reason is not None:
                return reason
        return scores

    def _refused(self, path: Path, reason: str) -> None:
        print(f"{self.folder.name}/{path.name}: {reason}; scoring again", flush=True)

    def read(self, name: str, split: str, plan: Plan) -> dict[str, Tensor] | str:
        """The saved scores of the whole pass (set, split) for exactly this plan and this context, else why not."""
        path = self.path(name, split)
        if not path.is_file():
            return "it is missing"
        scores = self._check(path, name, plan, None)
        if not isinstance(scores, str):
            self.reused.append(path.name)
        return scores

    def load(self, name: str, split: str, plan: Plan) -> dict[str, Tensor] | None:
        """The saved scores of the whole pass (set, split) when they prove to match (see :meth:`read`), else None
        (with a line that says why, for a file that exists); None with ``reuse="never"``, and a UserError instead of
        None with ``reuse="required"``."""
        if self.reuse == "never":
            return None
        scores = self.read(name, split, plan)
        if not isinstance(scores, str):
            return scores
        if self.reuse == "required":
            raise UserError(f"{self.path(name, split)}: {scores}; run the protocol (again) into this folder with "
                            "--output.resume true first")
        if self.path(name, split).is_file():
            self._refused(self.path(name, split), scores)
        return None

    def load_ranges(self, name: str, split: str, plan: Plan, n: int) -> dict[Span, dict[str, Tensor]]:
        """The saved chunks of (set, split) that prove to match (each refused one says why on a line), by their
        image range within the split's ``n`` images; of overlapping chunks, the one that starts first. Only with
        ``reuse="matching"`` (a resumed run); otherwise none."""
        if self.reuse != "matching":
            return {}
        found: dict[Span, dict[str, Tensor]] = {}
        end = 0
        for span, path in self.chunks(name, split).items():
            if span[0] < end or not 0 <= span[0] < span[1] <= n:
                self._refused(path, f"its images {span[0]} to {span[1] - 1} overlap another chunk's or lie outside "
                                    f"the split's {n} images")
                continue
            scores = self._check(path, name, plan, span)
            if isinstance(scores, str):
                self._refused(path, scores)
                continue
            found[span], end = scores, span[1]
            self.reused.append(path.name)
        return found

