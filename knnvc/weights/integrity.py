"""Is a cached weights file the one expected? Its sha256 when one is known, else an intact zip archive.

A hash is known when it is published (the registry pins it) or was recorded at the file's first download.
Records live in ``sha256.json`` in the knnvc cache: ``{"recorded": {file: sha256}, "checked": {file: [size,
mtime_ns, sha256]}}``. "checked" remembers a file that already matched, so an unchanged 1.2 GB WavLM is not
hashed again at every start; any change of size or modification time hashes it again.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from knnvc import files
from vocoder import atomic

logger = logging.getLogger(__name__)

RECORD = "sha256.json"


def zip_problem(path: Path) -> str | None:
    """Why ``path`` is not an intact zip-format torch checkpoint (cheap: the zip directory only), or None."""
    try:
        if not zipfile.is_zipfile(path):
            return "not a zip-format torch checkpoint (truncated or not a checkpoint)"
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
        size = path.stat().st_size
    except (zipfile.BadZipFile, OSError) as exc:
        return f"unreadable zip archive ({exc})"
    if not infos or max(i.header_offset + i.compress_size for i in infos) > size:
        return "archive members extend past the end of the file (truncated)"
    return None


def problem(path: Path, expected: str | None) -> str | None:
    """Why the cached ``path`` is not the file expected, or None: its sha256 against ``expected`` when given
    (remembered while the file is unchanged), else its zip structure."""
    if expected is None:
        return zip_problem(path)
    expected = expected.lower()
    try:
        stat = path.stat()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    stamp = [stat.st_size, stat.st_mtime_ns, expected]
    table = _read(path.parent)
    if table["checked"].get(path.name) == stamp:
        return None
    got = files.sha256(path)
    if got != expected:
        return f"its sha256 is {got}, not the expected {expected}"
    _mark(path, table, got)
    return None


def checked(path: Path, sha256: str) -> None:
    """Remember that ``path`` (as it is now) has ``sha256``: a fresh download whose hash was just verified."""
    _mark(path, _read(path.parent), sha256.lower())


def recorded(cache: Path, name: str) -> str | None:
    """The sha256 recorded for the file ``name`` at its first download into ``cache``, or None."""
    value = _read(cache)["recorded"].get(name)
    return str(value) if value else None


def record(path: Path) -> str:
    """Record the sha256 of a file with no published hash (in its folder's record); returns it."""
    table = _read(path.parent)
    digest = files.sha256(path)
    table["recorded"][path.name] = digest
    _mark(path, table, digest)
    logger.info("recorded sha256 %s for %s (no published hash)", digest, path)
    return digest


def _mark(path: Path, table: dict[str, dict[str, object]], sha256: str) -> None:
    stat = path.stat()
    table["checked"][path.name] = [stat.st_size, stat.st_mtime_ns, sha256]
    _write(path.parent, table)


def _read(cache: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((cache / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {key: dict(data.get(key) or {}) for key in ("recorded", "checked")}


def _write(cache: Path, table: dict[str, dict[str, object]]) -> None:
    """Best effort: a cache that cannot record only means hashing again next time (recorded hashes are lost)."""
    try:
        atomic.write_atomically(cache / RECORD, json.dumps(table, indent=1, sort_keys=True).encode("utf-8"))
    except OSError as exc:
        logger.warning("cannot update %s (%s)", cache / RECORD, exc)
