"""Files, for knnvc: the sha256 of a file, one-line messages for failed writes, and writable output folders.

Every file is written through the one atomic writer, ``vocoder.atomic.write_atomically`` (it lives in the standalone
``vocoder`` package, which never imports knnvc). Nothing here knows about audio or models.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from knnvc.errors import DiskFullError, OutputError
from vocoder.atomic import temp_path

CHUNK = 1 << 20  # bytes read at a time when hashing a file


def sha256(source: str | os.PathLike[str] | Iterable[bytes | memoryview]) -> str:
    """Hex sha256 of a file (read in ``CHUNK`` blocks) or of the concatenation of byte chunks."""
    digest = hashlib.sha256()
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
    else:
        for chunk in source:
            digest.update(chunk)
    return digest.hexdigest()


def write_error(path: Path, exc: OSError, what: str = "write") -> OutputError:
    """The one-line ``OutputError`` for a failed write of ``path``, saying why and what to do.

    A full disk (or quota) gives a ``DiskFullError``, which stops a batch at once.
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"cannot {what} {path}: the disk is full; free some space or choose another folder")
    if isinstance(exc, PermissionError):
        why = "permission denied"
    elif exc.errno == errno.EROFS:
        why = "the file system is read-only"
    elif isinstance(exc, IsADirectoryError):
        return OutputError(f"cannot {what} {path}: it is a folder; give a file name")
    elif isinstance(exc, NotADirectoryError | FileExistsError):
        return OutputError(f"cannot {what} {path}: a part of its folder path is a file; choose another folder")
    else:
        return OutputError(f"cannot {what} {path}: {exc.strerror or exc}; check the folder and the disk")
    return OutputError(f"cannot {what} {path}: {why}; choose a folder you can write to")


def writable_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) if needed and prove it writable with a probe file, before any work.

    Raises:
        OutputError: the folder cannot be created or written (``DiskFullError`` for a full disk).
    """
    probe = temp_path(folder / "write-probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise write_error(folder, exc, "write into") from exc
    return folder
