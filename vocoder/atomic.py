"""The one atomic writer of knnvc and its vocoder.

It lives in ``vocoder`` because ``vocoder`` stands alone (it loads and runs a generator on its own) and never imports
``knnvc``; ``knnvc`` writes every file through it too (audio outputs, voices, downloaded weights, converted copies,
settings records). ``write_atomically`` writes a hidden temporary file in the same folder, fsyncs it, runs an
optional check, renames it over the final name, then fsyncs the folder: a reader never sees a partial file, and a
failure or an interruption (Ctrl-C, SIGTERM) leaves the final name untouched and no temporary file behind.
Importing this module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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
        OSError: from the file system, unchanged (callers word it for their users); anything the writer or
            ``check`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)  # open(): the usual mode, not mkstemp's 0600
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
