"""A batch of 200 files, 10% of them corrupt in ten different ways: every good file converts, every bad one is
listed by name with its reason, the exit status is 1, no partial or temporary file is left, and a rerun
redoes nothing that was done.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from knnvc.batch.manifest import MANIFEST_NAME
from knnvc.errors import EXIT_PARTIAL
from tests.fault_tools import FAST, SR, cli, json_summary, temp_files, tone

GOOD, SECONDS = 180, 0.1

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _flac_bytes() -> bytes:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"knnvc-batch-{os.getpid()}.flac"
    sf.write(path, tone(1.0), SR)
    data = path.read_bytes()
    path.unlink()
    return data


def _nan_wav(path: Path) -> None:
    data = tone(SECONDS)
    data[10] = np.nan
    sf.write(path, data, SR, subtype="FLOAT")


CORRUPT: dict[str, tuple[str, Callable[[Path], object]]] = {
    "random": (".wav", lambda p: p.write_bytes(np.random.default_rng(1).bytes(3000))),
    "text": (".wav", lambda p: p.write_text("not audio at all\n" * 50)),
    "empty": (".wav", lambda p: p.write_bytes(b"")),
    "header_only": (".wav", lambda p: sf.write(p, np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")),
    "truncated": (".flac", lambda p: p.write_bytes(_flac_bytes()[:1500])),
    "nan": (".wav", _nan_wav),
    "too_short": (".wav", lambda p: sf.write(p, tone(100 / SR), SR)),
    "garbage": (".flac", lambda p: p.write_bytes(b"fLaC" + bytes(range(256)) * 8)),
    "zeros": (".ogg", lambda p: p.write_bytes(bytes(5000))),
    "odd_rate": (".wav", lambda p: sf.write(p, tone(0.2, 500), 500)),
}


def make_batch(src: Path) -> tuple[list[str], list[str]]:
    """180 good 0.1 s files and 20 corrupt ones (two of each kind), spread over nested folders."""
    good, bad = [], []
    clip = tone(SECONDS)
    for i in range(GOOD):
        rel = f"speaker {i % 4}/take {i:03d}.wav"
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(src / rel, clip, SR, subtype="PCM_16")
        good.append(rel)
    for n, (kind, (ext, write)) in enumerate(sorted(CORRUPT.items()) * 2):
        rel = f"speaker {n % 4}/bad {n:02d} {kind}{ext}"
        write(src / rel)
        bad.append(rel)
    return good, bad


def test_two_hundred_files_with_ten_percent_corrupt(tmp_path: Path, voice: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    good, bad = make_batch(src)
    assert len(good) + len(bad) == 200 and len(bad) == 20
    result = cli("convert", src, voice, "-o", out, *FAST, "--json", "--batch-size", "16")
    summary = json_summary(result)
    assert result.exit_code == EXIT_PARTIAL
    assert (summary["files"], summary["converted"], summary["failed"], summary["skipped"]) == (200, 180, 20, 0)
    failures = {Path(f["file"]).relative_to(src).as_posix(): f["error"] for f in summary["failures"]}
    assert sorted(failures) == sorted(bad)
    assert all(rel in error or str(src / rel) in error for rel, error in failures.items())
    failed_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed_lines) == 20 and all(any(rel in ln for ln in failed_lines) for rel in bad)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    assert written == sorted(good)  # every good file, and nothing for the bad ones
    for rel in good[::9]:
        data, rate = sf.read(out / rel, dtype="float32")
        assert rate == SR and len(data) == round(SECONDS * SR) and np.isfinite(data).all()
    assert temp_files(tmp_path) == []
    again = cli("convert", src, voice, "-o", out, *FAST, "--json")
    summary = json_summary(again)
    assert again.exit_code == EXIT_PARTIAL
    assert (summary["converted"], summary["skipped"], summary["failed"]) == (0, 180, 20)
    shutil.rmtree(out / "speaker 2")  # lose some work: the rerun redoes exactly that
    summary = json_summary(cli("convert", src, voice, "-o", out, *FAST, "--json"))
    assert (summary["converted"], summary["skipped"]) == (45, 135)
