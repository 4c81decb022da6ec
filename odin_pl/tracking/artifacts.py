"""W&B artifacts of odin-pl runs: a training's checkpoint (type ``model``), an evaluation's results (type
``evaluation``), and the reference by which an evaluation records the checkpoint it measured.

A checkpoint's artifact is named ``model-<training run id>`` (Lightning's name for a run's checkpoints; ``model-<run
name>`` when the training had no W&B run) and carries the alias ``sha256-<first 12 hex digits of the file's
SHA-256>``, so ``name:alias`` finds the same file from the training run and from any evaluation of it, also for runs
logged offline and synced later (wandb gives version numbers, ``v0``, ``v1``, ..., only when a run is synced).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

MODEL_TYPE = "model"
RESULTS_TYPE = "evaluation"


def artifact_name(prefix: str, label: str) -> str:
    """``<prefix>-<label>`` with the characters W&B refuses in artifact names replaced by ``-``."""
    return re.sub(r"[^\w.-]", "-", f"{prefix}-{label}")


def content_alias(sha256: str) -> str:
    """The alias that names one checkpoint file by its content."""
    return f"sha256-{sha256[:12]}"


def _checkpoint_artifact(path: Path, name: str, sha256: str, metadata: Mapping[str, Any]) -> Any:
    import wandb

    artifact = wandb.Artifact(name, type=MODEL_TYPE, metadata={**metadata, "sha256": sha256, "file": path.name})
    artifact.add_file(str(path), name=path.name)  # copied: a later training may replace the file before a sync
    return artifact


def log_checkpoint(run: Any, path: Path, name: str, sha256: str, metadata: Mapping[str, Any]) -> None:
    """Training: log the checkpoint file ``path`` as the model artifact ``name`` (aliases ``latest`` and its content
    alias)."""
    run.log_artifact(_checkpoint_artifact(path, name, sha256, metadata), aliases=["latest", content_alias(sha256)])


def link_checkpoint(run: Any, path: Path, name: str, sha256: str, metadata: Mapping[str, Any],
                    log: bool = True) -> dict[str, str]:
    """Evaluation: the reference ``{name, version, digest, type}`` of the evaluated checkpoint's artifact, for the
    run's config. With ``log``: online, the run uses the artifact (W&B logs it first if it has no version with this
    content; the training run's upload of the same file is that version), so W&B's graph shows model ->
    evaluation; offline, where wandb refuses ``use_artifact``, the run logs it. ``version`` is W&B's ``vN`` online,
    else the content alias (``name:version`` finds it once the runs are synced)."""
    artifact = _checkpoint_artifact(path, name, sha256, metadata)
    version = content_alias(sha256)
    if log and run.offline:
        run.log_artifact(artifact, aliases=[version])
    elif log:
        run.use_artifact(artifact, aliases=[version])
        version = artifact.version
    return {"name": name, "version": version, "digest": artifact.digest, "type": MODEL_TYPE}


def log_results(run: Any, files: Mapping[str, Path]) -> None:
    """Evaluation: ``files`` (name in the artifact -> file: results.json, the table, the detectors, ...) as the
    artifact ``evaluation-<run id>``."""
    import wandb

    artifact = wandb.Artifact(artifact_name("evaluation", run.id), type=RESULTS_TYPE)
    for name, path in files.items():
        artifact.add_file(str(path), name=name)
    run.log_artifact(artifact)
