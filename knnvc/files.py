"""The one atomic writer and the one sha256 helper of knnvc.

Every file knnvc writes (audio outputs, voices, downloaded weights, prematched features' side files) goes through
:func:`write_atomically`: a hidden temporary file in the same folder, fsync, an optional check, ``os.replace`` over
the final name, then fsync of the folder. A reader never sees a partial file, and a failure or an interruption
(Ctrl-C, SIGTERM) leaves no temporary file behind. Nothing here knows about audio or models.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from knnvc.errors import DiskFullError, OutputError

CHUNK = 1 << 20  # bytes read at a time when hashing a file

Writer = Callable[[BinaryIO], None]
"""Writes the file's contents into the open (binary) temporary file."""


def temp_path(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path`` (folder listings skip names starting with '.')."""
    return path.parent / f".{path.name[:200]}.{secrets.token_hex(4)}.tmp"


def write_atomically(
    path: str | os.PathLike[str],
    data: bytes | memoryview | Writer,
    *,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``data`` (bytes, or a function that writes into a binary file) to ``path`` atomically.

    Parent folders are created. ``check(temp_file)`` runs after the fsync and before the rename: whatever it
    raises aborts the write (the temporary file is deleted, ``path`` is left as it was).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: from the file system, unchanged (callers turn it into their own message, for example with
            :func:`write_error`); anything the writer or ``check`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
