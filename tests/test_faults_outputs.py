"""Faults in outputs: existing outputs, read-only folders, a full disk, Ctrl-C while writing; atomic writes.

Every output (audio or voice) is written to a hidden temporary name in its folder and renamed into place, so
no failure or interruption ever leaves a partial file under the final name, nor a temporary file behind.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from knnvc import files, progress
from knnvc.audio import write
from knnvc.batch import runner
from knnvc.batch.manifest import MANIFEST_NAME
from knnvc.errors import EXIT_INTERRUPTED, DiskFullError, OutputError
from knnvc.voice import Voice
from tests.conftest import REF_DIR, TINY_WAVLM
from tests.fault_tools import (
    FAST,
    SR,
    cli,
    json_summary,
    one_line,
    temp_files,
    write_audio,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sources(folder: Path, count: int, seconds: float = 0.3) -> list[Path]:
    return [write_audio(folder / f"f{i:02d}.wav", seconds) for i in range(count)]


def fail_file_fsync(monkeypatch: pytest.MonkeyPatch, error: Callable[[], BaseException], after: int) -> list[int]:
    """Make ``os.fsync`` of regular files raise ``error()`` once ``after`` files have been written."""
    real, calls = os.fsync, []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls.append(fd)
            if len(calls) > after:
                raise error()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_existing_outputs_are_skipped_then_replaced_atomically(tmp_path: Path, voice: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    sources(src, 3)
    out.mkdir()
    (out / "f01.wav").write_bytes(b"precious work from yesterday")
    summary = json_summary(cli("convert", src, voice, "-o", out, *FAST, "--json"))
    assert (summary["converted"], summary["skipped"]) == (2, 1)
    assert summary["skipped_outputs"] == [str(out / "f01.wav")]
    assert (out / "f01.wav").read_bytes() == b"precious work from yesterday"
    before = (out / "f01.wav").stat().st_ino
    summary = json_summary(cli("convert", src, voice, "-o", out, *FAST, "--json", "--overwrite"))
    assert summary["converted"] == 3
    assert (out / "f01.wav").stat().st_ino != before  # a new file renamed over the old one, not rewritten
    assert sf.info(out / "f01.wav").frames == round(0.3 * SR)


def test_outputs_are_only_ever_written_under_temporary_names(
    tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    renamed: list[tuple[str, str]] = []
    real_open, real_replace = builtins.open, os.replace

    def spy_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+") and Path(os.fsdecode(file)).is_relative_to(tmp_path):
            opened.append(os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    def spy_replace(a: Any, b: Any) -> None:
        renamed.append((os.fsdecode(a), os.fsdecode(b)))
        real_replace(a, b)

    monkeypatch.setattr(builtins, "open", spy_open)  # every writer: vocoder.atomic's, and any other
    monkeypatch.setattr(os, "replace", spy_replace)
    src, out = tmp_path / "src", tmp_path / "out"
    sources(src, 3)
    json_summary(cli("convert", src, voice, "-o", out, *FAST, "--json"))
    finals = sorted(str(p) for p in out.iterdir() if p.name != MANIFEST_NAME)  # the manifest: test_batch_reruns
    assert len(finals) == 3 and not set(opened) & set(finals)
    assert sum(Path(p).parent == out for p in opened) >= 3  # the writes were seen: each output's temporary file
    assert all(Path(p).name.startswith(".") and p.endswith(".tmp") for p in opened)
    assert sorted(b for _, b in renamed if b in finals) == finals
    assert all(Path(a).parent == Path(b).parent for a, b in renamed)  # same folder: an atomic rename


@pytest.mark.parametrize(("code", "words"), [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_read_only_output_folder(
    tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    """Simulated (tests often run as root, whom chmod does not stop); test_audio checks a real chmod 0500."""
    real_open = builtins.open
    locked = tmp_path / "locked"

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+") and Path(os.fsdecode(file)).parent == locked:
            error = PermissionError if code == errno.EACCES else OSError
            raise error(code, os.strerror(code), os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", guarded_open, raising=False)
    source = write_audio(tmp_path / "a.wav", 0.3)
    result = cli("convert", source, voice, "-o", locked / "out.wav", *FAST)
    assert result.exit_code == OutputError.exit_code
    line = one_line(result)
    assert "out.wav" in line and words in line and "choose a folder" in line
    assert list(locked.iterdir()) == []


def test_real_read_only_folder(tmp_path: Path, voice: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user (root) whom chmod does not stop from writing")
        result = cli("convert", write_audio(tmp_path / "a.wav", 0.3), voice, "-o", locked / "o.wav", *FAST)
        assert result.exit_code == OutputError.exit_code and "permission denied" in one_line(result)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_full_disk_stops_the_batch_and_a_rerun_finishes_it(
    tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    sources(src, 6)
    fail_file_fsync(monkeypatch, no_space, after=2)
    result = cli("convert", src, voice, "-o", out, *FAST, "--json")
    summary = json_summary(result)
    assert result.exit_code == OutputError.exit_code == DiskFullError.exit_code
    assert (summary["files"], summary["converted"], summary["failed"]) == (6, 2, 1)  # 3 never attempted
    assert "disk is full" in summary["stopped"] and "free some space" in summary["stopped"]
    assert summary["failures"][0]["file"] == str(src / "f02.wav")
    labels = [ln.split(":")[0] for ln in result.stderr.splitlines() if ln.startswith(("failed", "stopped", "error"))]
    assert labels == ["failed", "stopped"]  # (and a warning that the settings record could not be written)
    assert sorted(p.name for p in out.iterdir()) == ["f00.wav", "f01.wav"] and temp_files(tmp_path) == []
    assert all(sf.info(p).frames == round(0.3 * SR) for p in out.iterdir())
    monkeypatch.undo()  # space freed
    summary = json_summary(cli("convert", src, voice, "-o", out, *FAST, "--json"))
    assert (summary["converted"], summary["skipped"], summary["failed"]) == (4, 2, 0)


def test_full_disk_for_a_single_file_and_a_voice(tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    existing = tmp_path / "out.wav"
    write.save(existing, np.full(100, 0.5, dtype=np.float32))
    fail_file_fsync(monkeypatch, no_space, after=0)
    result = cli("convert", write_audio(tmp_path / "a.wav", 0.3), voice, "-o", existing, *FAST, "--overwrite")
    assert result.exit_code == OutputError.exit_code and "disk is full" in one_line(result)
    assert sf.info(existing).frames == 100  # the old output is intact
    with pytest.raises(DiskFullError, match="v.voice.*disk is full"):
        Voice.load(voice).save(tmp_path / "v.voice")
    result = cli("voice", "build", REF_DIR, "-o", tmp_path / "w.voice", "--wavlm", TINY_WAVLM, "--device", "cpu")
    assert result.exit_code == OutputError.exit_code and "disk is full" in one_line(result)
    assert temp_files(tmp_path) == [] and not (tmp_path / "v.voice").exists()


def test_ctrl_c_while_writing_leaves_no_partial_file(
    tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "out.wav"
    write.save(final, np.full(100, 0.25, dtype=np.float32))
    fail_file_fsync(monkeypatch, KeyboardInterrupt, after=0)
    with pytest.raises(KeyboardInterrupt):
        write.save(final, np.zeros(SR, dtype=np.float32))
    with pytest.raises(KeyboardInterrupt):
        Voice.load(voice).save(tmp_path / "v.voice")
    assert sf.info(final).frames == 100 and temp_files(tmp_path) == []
    assert not (tmp_path / "v.voice").exists()


def test_ctrl_c_during_a_batch_write(tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    sources(src, 4)
    fail_file_fsync(monkeypatch, KeyboardInterrupt, after=1)
    result = cli("convert", src, voice, "-o", out, *FAST, "--json")
    assert result.exit_code == EXIT_INTERRUPTED
    summary = json_summary(result)
    assert summary["interrupted"] and summary["converted"] == 1
    assert [p.name for p in out.iterdir()] == ["f00.wav"] and temp_files(tmp_path) == []
    assert "rerun" in result.stderr


def test_batch_run_records_output_errors_per_file(tmp_path: Path) -> None:
    """A library caller gets the same report: the failing file listed, the batch stopped on a full disk."""

    class Fake:
        sample_rate = SR
        batch_size = 2

        def load_audio(self, source: Path) -> np.ndarray:
            return np.zeros(SR // 10, dtype=np.float32)

        def load_vocoder(self) -> None:
            pass

        def check_target(self, target: object, options: object) -> None:
            pass

        def output_rate(self, options: object) -> int:
            return SR

        def voices_for(self, voice: object, options: object) -> tuple[object, object]:
            return voice, options

        def convert_batch(self, wavs: list[np.ndarray], voice: object, *args: object, **kw: object) -> list[np.ndarray]:
            return [np.zeros(SR // 10, dtype=np.float32) for _ in wavs]

        def finish(self, wav: np.ndarray, options: object) -> np.ndarray:
            return wav

    jobs = [progress.Job(tmp_path / f"{i}.wav", tmp_path / "out" / f"{i}.flac") for i in range(3)]
    voice = Voice(frames=torch.zeros(4, 8), encoder="x", encoder_fingerprint="y", layer=6)
    real_write = sf.write

    def full(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("format") == "FLAC" and len(list((tmp_path / "out").iterdir())) >= 1:
            raise no_space()
        real_write(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sf, "write", full)
        report = runner.run(Fake(), jobs, voice)  # type: ignore[arg-type]
    assert [j.source.name for j in report.converted] == ["0.wav"]
    assert isinstance(report.stopped, DiskFullError) and len(report.failed) == 1 and not report.ok
