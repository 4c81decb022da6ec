"""Score every image of a data set with a :class:`~odin_pl.deploy.detector.Detector`, on any number of processes, and
write one CSV row per image in input order.

Process r of W scores the images r, r + W, ... (:func:`~odin_pl.distributed.shard_indices`, no padding), so every
image is scored exactly once; :func:`~odin_pl.distributed.gather_shards` puts the detections back in input order,
and process 0 writes the file.
"""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from odin_pl.deploy.detector import Detection, Detector
from odin_pl.distributed import agree_on_failure, gather_shards, shard_indices, world
from odin_pl.errors import NonFiniteScoresError
from odin_pl.csv_cells import safe_row
from odin_pl.files import atomic_write
from odin_pl.methods import method_with_role

#: <baseline>: the baseline's score, named after it (``method_with_role("baseline")``); <method>: the method's score
COLUMNS = ("index", "path", "predicted_class", "class_name", "<baseline>", "<method>", "is_ood")


def detect_dataset(detector: Detector, dataset: Dataset, *, batch_size: int = 256, num_workers: int = 0
                   ) -> Detection:
    """The detections of every image of ``dataset`` (yielding (image, label)), in input order on every process;
    the images go to the detector model's device and dtype."""
    parameter = next(detector.model.parameters())
    rank, world_size = world()
    shard = Subset(dataset, shard_indices(len(dataset), rank, world_size))
    parts, error = [], None
    try:
        for images, _ in DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            parts.append(detector.predict_all(images.to(device=parameter.device, dtype=parameter.dtype)))
    except NonFiniteScoresError as err:  # at the first such batch; every process stops (no one waits in a gather)
        error = err
    agree_on_failure(error)
    local = {}
    for name in (f.name for f in fields(Detection)):
        if parts:
            local[name] = torch.cat([getattr(part, name) for part in parts]).cpu()
        else:  # a shard with no image (more processes than images): an empty piece of the right type
            dtype = {"predicted_class": torch.long, "is_ood": torch.bool}.get(name, parameter.dtype)
            local[name] = torch.empty(0, dtype=dtype)
    return Detection(**{name: gather_shards(values, len(dataset)) for name, values in local.items()})


def write_detections(path: str | Path, detections: Detection, method: str,
                     paths: Sequence[str | Path] | None = None, class_names: Sequence[str] = ()) -> Path:
    """Write one row per image (columns :data:`COLUMNS`, the score's named after ``method``) atomically; ``paths``
    (the images' files) and ``class_names`` fill the ``path`` and ``class_name`` columns when given; every cell
    goes through :func:`odin_pl.csv_cells.safe_row` (no formula, any file name). Returns the path."""
    rows = zip(detections.predicted_class.tolist(), detections.baseline.tolist(), detections.score.tolist(),
               detections.is_ood.tolist())
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle)
        names = {"<method>": method, "<baseline>": method_with_role("baseline")}
        writer.writerow([names.get(column, column) for column in COLUMNS])
        writer.writerows(safe_row([index, str(paths[index]) if paths is not None else "", label,
                                   class_names[label] if label < len(class_names) else "", baseline, score, is_ood])
                         for index, (label, baseline, score, is_ood) in enumerate(rows))
    return Path(path)
