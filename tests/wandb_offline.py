"""Read what an offline W&B run recorded, without network or the W&B service.

A run's ``run-<id>.wandb`` file is a 7-byte ``:W&B`` header followed by protobuf ``Record``s
(``wandb.proto.wandb_internal_pb2``) in LevelDB's log framing: 32 KiB blocks; each chunk has
a 7-byte header (CRC 4, length 2 little-endian, type 1: full, first, middle, last); a block
tail shorter than a header is padding.
"""

import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        if BLOCK - offset % BLOCK < HEADER:
            offset += BLOCK - offset % BLOCK
            continue
        length, kind = struct.unpack_from("<HB", data, offset + 4)
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            break  # zero-filled tail of a file still being written
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def run_record(run_dir: Path) -> wandb_internal_pb2.RunRecord:
    """The run record (id, group, project, ...) of an ``offline-run-*`` directory."""
    (path,) = run_dir.glob("run-*.wandb")
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise ValueError(f"{path} holds no run record")


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run directories under a lightning_diff run directory."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))
