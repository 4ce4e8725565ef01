"""Reader for the IDX files MNIST-style datasets ship in, gzip-compressed or plain.

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions
n, then n uint32 sizes) followed by the values in C order, also big-endian.
"""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from lightning_diff.errors import UserError

IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(content: bytes, source: str) -> np.ndarray:
    """The array held by the (decompressed) IDX bytes ``content``; ``source`` names them in errors."""
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] not in IDX_TYPES:
        codes = " ".join(f"{code:02x}" for code in IDX_TYPES)
        raise UserError(
            f"{source} is not an IDX file: it starts with bytes {content[:4].hex(' ') or '(none)'}, but an IDX "
            f"file starts with 00 00, a type code (one of {codes}) and the number of dimensions; fetch the file again"
        )
    dtype, ndim = IDX_TYPES[content[2]], content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise UserError(f"{source} is truncated inside its IDX header ({len(content)} bytes); fetch the file again")
    shape = tuple(int(size) for size in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        raise UserError(
            f"{source} holds {len(content)} bytes but its IDX header (type {dtype.name}, shape {shape}) needs "
            f"{expected}; the file is truncated or corrupt, fetch it again"
        )
    values = np.frombuffer(content, dtype=dtype, offset=header_size).reshape(shape)
    # A native-order copy: frombuffer's view is read-only and torch wants native byte order.
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """The array stored in the IDX file ``path``; gzip compression is detected from the content."""
    try:
        content = path.read_bytes()
        if content[:2] == GZIP_MAGIC:
            content = gzip.decompress(content)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"cannot read IDX file {path} ({err}); the file is unreadable or corrupt, fetch it again"
        ) from err
    return parse_idx(content, str(path))
