"""The project's cache directory, and files in it that are verified by checksum.

Compute nodes are often offline: ``python -m lightning_diff.prefetch`` fills the cache on a
machine with network, and ``LIGHTNING_DIFF_CACHE`` points the compute nodes at it. Every file
that comes from elsewhere is checked against a known checksum before it is used, so a
truncated download or a different file is refused with one clear message instead of giving
silently wrong numbers.

A checksum is written ``sha256:<hex>`` or ``md5:<hex>`` (torchvision publishes MD5s for its
datasets); a bare hex string is SHA-256. A SHA-256 shorter than 64 digits is a prefix, the
convention of torch hub file names (``weights-...-6726825d.pth``).
"""

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from lightning_diff.errors import UserError
from lightning_diff.run.atomic import atomic_write

CACHE_ENV = "LIGHTNING_DIFF_CACHE"
ALGORITHMS = ("sha256", "md5")
_BLOCK = 1 << 20


def cache_dir() -> Path:
    """``$LIGHTNING_DIFF_CACHE``, or ``~/.cache/lightning_diff`` when it is unset."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lightning_diff"


def split_checksum(checksum: str) -> tuple[str, str]:
    """(algorithm, lower-case hex digest) of a checksum string."""
    algorithm, _, digest = checksum.rpartition(":")
    algorithm = algorithm.lower() or "sha256"
    digest = digest.strip().lower()
    if algorithm not in ALGORITHMS or not digest or any(c not in "0123456789abcdef" for c in digest):
        raise UserError(
            f"checksum {checksum!r} is not valid; write sha256:<hex digits> or md5:<hex digits> "
            "(a bare hex string is SHA-256)"
        )
    return algorithm, digest


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def matches(path: Path, checksum: str) -> bool:
    """Whether the file at ``path`` has ``checksum`` (a SHA-256 prefix matches its full digest)."""
    algorithm, expected = split_checksum(checksum)
    actual = file_digest(path, algorithm)
    return actual.startswith(expected) if algorithm == "sha256" else actual == expected


def verify(path: Path, checksum: str, what: str, fix: str) -> None:
    """Raise a :class:`UserError` naming ``what`` and how to ``fix`` it unless ``path`` has ``checksum``."""
    if not matches(path, checksum):
        algorithm, expected = split_checksum(checksum)
        raise UserError(
            f"{what} {path} has the wrong checksum: {algorithm} {file_digest(path, algorithm)}, expected {expected}; "
            f"the file is truncated, corrupted or a different file: {fix}"
        )


def download(url: str, dest: Path, checksum: str, what: str, timeout_s: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest``, kept only if its checksum matches (the cache never holds a bad file)."""

    def fetch(handle: BinaryIO) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False, delay=2) as bar:
                    while block := response.read(_BLOCK):
                        handle.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise UserError(
                f"could not download {what} from {url} ({err}); run this on a machine with network, or point "
                "the URL at a mirror you can reach"
            ) from err

    def refuse_a_mismatch(fetched: Path) -> None:
        if not matches(fetched, checksum):
            algorithm, expected = split_checksum(checksum)
            raise UserError(
                f"refused the download of {what} from {url}: its {algorithm} is {file_digest(fetched, algorithm)}, "
                f"expected {expected}; the server sent a different or damaged file (nothing was written to {dest}); "
                "use the official URL or a faithful mirror"
            )

    atomic_write(dest, fetch, verify=refuse_a_mismatch)
    return dest


def copy_verified(source: Path, dest: Path, checksum: str, what: str) -> Path:
    """Copy a local file into the cache after checking its checksum."""
    verify(source, checksum, what, "reinstall the package that ships it, or download the file instead")
    with open(source, "rb") as handle:
        atomic_write(dest, lambda out: shutil.copyfileobj(handle, out, _BLOCK))
    return dest
