"""Read what a W&B run recorded from its local ``run-<id>.wandb`` file, without network or the
W&B service (an offline run's only record of what it logged; an online run keeps one too).

The file is a 7-byte ``:W&B`` header followed by protobuf ``Record``s
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
    """Every complete record of a ``.wandb`` file, in order (a tail still being written is left out)."""
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        if BLOCK - offset % BLOCK < HEADER:
            offset += BLOCK - offset % BLOCK
            continue
        length, kind = struct.unpack_from("<HB", data, offset + 4)
        if (kind == 0 and length == 0) or offset + HEADER + length > len(data):
            break  # the zero-filled or half-written tail of a file still being written
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
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
