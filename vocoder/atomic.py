"""The vocoder package's one atomic writer.

``vocoder`` never imports ``knnvc`` (it stands alone, so a training job needs nothing else), so it cannot use
``knnvc.files.write_atomically``; this is its only copy, used for generator checkpoints, training states and
the prematched features' files. Same contract: a temporary file in the same folder, fsync, rename, fsync the
folder; a failure or an interruption leaves the final name untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, or a function writing into a binary file) to ``path``; parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name[:200]}.{secrets.token_hex(4)}.tmp"  # open(): the usual mode, not 0600
    try:
        with open(tmp, "xb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError, AttributeError):
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path
