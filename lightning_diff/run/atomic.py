"""Every file the project writes is written whole or not at all.

``writer`` fills a temporary file in the target's directory; it is flushed, fsynced and renamed
over the target (a rename within one file system is atomic), so a reader, a crash or a
SLURM kill mid-write sees either the previous file or the complete new one. On any error the
temporary file is removed and the target is left as it was.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | Path,
    writer: Callable[[BinaryIO], None],
    verify: Callable[[Path], None] | None = None,
    exclusive: bool = False,
) -> bool:
    """Write ``path`` through ``writer(handle)``; returns whether the new content was published.

    Args:
        verify: called with the finished temporary file before it is published; raising refuses
            it (e.g. a download with the wrong checksum) and leaves ``path`` untouched.
        exclusive: publish only if ``path`` does not exist yet (a hard link, which fails if it
            does): of several processes writing at once, the first one wins and the rest
            return False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; the file gets the permissions any other would
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(Path(tmp))
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> bool:
    """``text`` (UTF-8) written with :func:`atomic_write`."""
    return atomic_write(path, lambda handle: handle.write(text.encode()))
