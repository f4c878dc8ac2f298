"""Files, for knnvc: the sha256 of a file, one-line messages for failed writes, writable output folders, the one
check that no output replaces an input (``check_not_inputs``), and saved objects (voices, pairs) as safetensors with
JSON metadata (``save_tensors``, ``read_tensors``).

Every file is written through the one atomic writer, ``vocoder.atomic.write_atomically`` (it lives in the standalone
``vocoder`` package, which never imports knnvc). Nothing here knows about audio or models.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knnvc.errors import DiskFullError, KnnvcError, OutputError, UsageError
from vocoder.atomic import temp_path, write_atomically

if TYPE_CHECKING:
    from torch import Tensor

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


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names (links followed), or None when there is none."""
    try:
        found = path.stat()
    except (OSError, ValueError):
        return None
    return found.st_dev, found.st_ino


def _real(path: Path) -> Path:
    """``path`` absolute, with every link and ``..`` resolved as far as it exists."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop
        return path.absolute()


def check_not_inputs(
    outputs: Iterable[Path],
    inputs: Mapping[str, Iterable[Path | None]],
    *,
    folders: Iterable[Path] = (),
) -> None:
    """Refuse, before anything is written, an output that would replace one of a command's inputs.

    ``inputs`` maps what each input is (``"source"``, ``"reference"``...) to its paths: files (a reference folder is
    given as its audio files) and folders (training data). An output file may not be an input file by any name:
    the same resolved path, a symlink to it or a hard link (the same device and inode). An output folder (``folders``)
    may not be an input folder (by any name). Nothing lifts this, ``--overwrite`` included.

    Raises:
        UsageError: one line naming the output and the input it would replace.
    """
    named = [(role, path) for role, paths in inputs.items() for path in paths if path is not None]
    by_identity = {key: (role, path) for role, path in named if path.is_file() and (key := _identity(path)) is not None}
    for output in outputs:
        key = _identity(output)
        if key is not None and key in by_identity:
            role, path = by_identity[key]
            raise UsageError(f"{output}: the output would replace the {role} {path}; no option (--overwrite "
                             "included) writes over an input: choose another output")  # fmt: skip
    input_folders = [(role, path, _real(path)) for role, path in named if path.is_dir()]
    for folder in folders:
        real = _real(folder)
        for role, path, where in input_folders:
            if real == where:
                raise UsageError(f"{folder}: the output folder is the {role} {path}, which it would write over; no "
                                 "option (--overwrite included) allows it: choose another folder")  # fmt: skip


def save_tensors(path: Path, tensors: Mapping[str, Tensor], key: str, metadata: Mapping[str, Any], what: str) -> Path:
    """Write ``tensors`` (moved to the CPU) and ``metadata`` (JSON, under header key ``key``) as one safetensors file,
    atomically (a temporary file renamed into place): loading it never unpickles anything.

    Raises:
        OutputError: the file cannot be written (``DiskFullError`` when the disk is full); nothing is left behind.
    """
    import json

    from safetensors.torch import save

    host = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    data = save(host, metadata={key: json.dumps(metadata)})
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise write_error(path, exc, f"write {what}") from exc
    return path


def read_tensors(
    path: Path, key: str, what: str, error: type[KnnvcError], hint: str
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(metadata, tensors) of a file written by ``save_tensors``; ``error`` (one line naming ``path`` and ``what`` it
    should be, ending with ``hint``) when it is not one or is damaged."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[key])
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise error(f"{path}: not a knnvc {what} file, or a damaged one ({exc}); {hint}") from exc
    if not isinstance(meta, dict):
        raise error(f"{path}: damaged {what} metadata; {hint}")
    return meta, tensors
