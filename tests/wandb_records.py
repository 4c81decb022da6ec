"""Read offline W&B runs back: the records of ``offline-run-*/run-<id>.wandb`` (wandb 0.31 has no reader), parsed
with wandb's own protobuf classes (``wandb.proto.wandb_internal_pb2.Record``).

The file is a LevelDB-style log (https://github.com/google/leveldb/blob/main/doc/log_format.md): a 7-byte header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of records, each a 7-byte header (CRC-32, length, type:
full, first, middle or last piece) and its bytes; a block's tail shorter than a header is zero padding.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = struct.Struct("<IHB")  # checksum, length, type
FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    """Every record of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a .wandb file of a known version"
    records, pieces, offset = [], [], FILE_HEADER.size
    while offset + HEADER.size <= len(data):
        if BLOCK - offset % BLOCK < HEADER.size:  # zero padding at the end of a block
            offset += BLOCK - offset % BLOCK
            continue
        checksum, length, kind = HEADER.unpack_from(data, offset)
        payload = data[offset + HEADER.size:offset + HEADER.size + length]
        offset += HEADER.size + length
        if kind == 0 and length == 0:  # the unwritten rest of the last block
            break
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == checksum, f"{path}: bad checksum at {offset}"
        pieces.append(payload)
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = []
    return records


def _set(target: dict, item: Any) -> None:
    """Put a config/summary/history item (``key`` or ``nested_key``, ``value_json``) into ``target``."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """One offline run as its records give it."""

    run: Any = None  # the RunRecord: run_id, display_name, run_group, job_type, project
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one dict per logged step
    artifacts: list[Any] = field(default_factory=list)  # ArtifactRecords (name, type, digest, aliases, manifest)


def read_run(path: Path) -> OfflineRun:
    """The run of one ``.wandb`` file."""
    run = OfflineRun()
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
            for item in record.run.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, item)
        elif kind == "history":
            step: dict = {}
            for item in record.history.item:
                _set(step, item)
            run.history.append(step)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """The offline runs saved under ``wandb_dir`` (a logger's ``<save_dir>/wandb``), oldest first."""
    return [read_run(next(folder.glob("run-*.wandb"))) for folder in sorted(wandb_dir.glob("offline-run-*"))]
