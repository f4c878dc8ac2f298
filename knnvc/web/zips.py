"""Zip archives in and out of the batch tab: extracted safely (no path escapes, bounded size), written whole."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from knnvc.errors import UsageError


def extract(archive: Path, folder: Path, *, max_bytes: int, max_files: int, label: str = "") -> list[Path]:
    """Extract the regular files of ``archive`` into ``folder``; returns them, sorted.

    Names that are absolute or climb out with ``..`` are refused, as are links, archives over ``max_files``
    entries or ``max_bytes`` uncompressed (checked from the directory, then enforced while copying, so a zip
    bomb stops at the limit). Hidden entries (``__MACOSX/``, ``.DS_Store``) are skipped.

    Raises:
        UsageError: not a zip, a damaged one, an unsafe name, or over a limit; the message names ``label``.
    """
    name = label or archive.name
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = [info for info in zf.infolist() if not info.is_dir() and not _hidden(info.filename)]
            if len(entries) > max_files:
                raise UsageError(f"{name}: {len(entries)} files; a batch takes at most {max_files}")
            if sum(info.file_size for info in entries) > max_bytes:
                raise UsageError(f"{name}: over {max_bytes / 1e6:.0f} MB uncompressed; split it into smaller zips")
            written, budget = [], max_bytes
            for info in entries:
                target = folder / _safe_member(info, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    budget -= _copy_bounded(src, dst, budget, name, max_bytes)
                written.append(target)
    except zipfile.BadZipFile as exc:
        raise UsageError(f"{name}: not a zip file, or a damaged one ({exc}); send a .zip of audio files") from exc
    except (OSError, EOFError, RuntimeError) as exc:  # truncated data, encrypted entries, unsupported methods
        raise UsageError(f"{name}: cannot extract ({exc}); make the zip again without a password") from exc
    return sorted(written)


def _hidden(filename: str) -> bool:
    parts = [p for p in PurePosixPath(filename.replace("\\", "/")).parts if p not in (".", "..")]
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _safe_member(info: zipfile.ZipInfo, name: str) -> Path:
    """The entry's relative path, or ``UsageError`` for one that would land outside the folder or is a link."""
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or ":" in path.parts[0]:
        raise UsageError(f"{name}: entry {info.filename!r} would land outside the batch folder; remake the zip")
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        raise UsageError(f"{name}: entry {info.filename!r} is a link; a batch zip holds plain audio files")
    return Path(*path.parts)


def _copy_bounded(src: IO[bytes], dst: IO[bytes], budget: int, name: str, limit: int) -> int:
    """Copy until EOF; ``UsageError`` once more than ``budget`` bytes came out (a lying directory)."""
    copied = 0
    while True:
        block = src.read(1 << 20)
        if not block:
            return copied
        copied += len(block)
        if copied > budget:
            raise UsageError(f"{name}: over {limit / 1e6:.0f} MB uncompressed; split it into smaller zips")
        dst.write(block)


def pack(folder: Path, archive: Path) -> Path:
    """Zip every file under ``folder`` (paths relative to it) into ``archive``; audio is stored, not deflated."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            method = zipfile.ZIP_DEFLATED if path.suffix in {".json", ".txt"} else zipfile.ZIP_STORED
            zf.write(path, path.relative_to(folder).as_posix(), compress_type=method)
    return archive


def remove(path: Path) -> None:
    """Delete a file or folder tree if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
