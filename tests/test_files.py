"""The atomic writer (vocoder.atomic), the sha256 helper (knnvc.files), and the folder check every command uses."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from knnvc import files
from knnvc.errors import DiskFullError, OutputError
from vocoder import atomic


def test_write_atomically_bytes_and_writer(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "out.bin"
    assert atomic.write_atomically(path, b"first") == path and path.read_bytes() == b"first"
    atomic.write_atomically(path, lambda fh: fh.write(b"second"))
    assert path.read_bytes() == b"second" and sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]


def test_a_failed_check_or_interrupt_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def refuse(tmp: Path) -> None:
        assert tmp.read_bytes() == b"new" and tmp.name.startswith(".out.bin.")  # the check sees the full file
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        atomic.write_atomically(path, b"new", check=refuse)

    def interrupted(fh: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomically(path, interrupted)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_the_folder_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What is flushed to the disk before the write returns, as the operating system sees it: the file's data,
    then its folder (which holds the new name)."""
    flushed: list[tuple[bool, int]] = []  # (a folder?, inode) of each fsync, at the system boundary
    real = os.fsync

    def fsync(fd: int) -> None:
        found = os.fstat(fd)
        flushed.append((stat.S_ISDIR(found.st_mode), found.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_atomically(tmp_path / "x", b"data")
    assert flushed == [(False, (tmp_path / "x").stat().st_ino), (True, tmp_path.stat().st_ino)]


def test_sha256_of_files_and_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * files.CHUNK + 5)
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert files.sha256(tmp_path / "f") == files.sha256(str(tmp_path / "f")) == expected
    assert files.sha256([data[:10], memoryview(data)[10:]]) == expected


def test_write_errors_are_one_line_with_advice(tmp_path: Path) -> None:
    full = files.write_error(tmp_path / "a.wav", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, DiskFullError) and "disk is full" in str(full)
    denied = files.write_error(tmp_path / "a.wav", PermissionError(errno.EACCES, "Permission denied"))
    assert isinstance(denied, OutputError) and not isinstance(denied, DiskFullError)
    assert "permission denied; choose a folder" in str(denied)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_writable_folder_refuses_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            files.writable_folder(ro / "sub")
    finally:
        ro.chmod(0o700)


def test_writable_folder_creates_and_leaves_nothing(tmp_path: Path) -> None:
    assert files.writable_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="a part of its folder path is a file"):
        files.writable_folder(tmp_path / "file" / "sub")
