"""Interruption: SIGINT (Ctrl-C) and SIGTERM sent to a real ``knnvc convert`` subprocess in the middle of a batch.

It stops cleanly with exit status 130: every output present is complete (the expected length, decodable), no
temporary file remains, and rerunning the same command converts only the files that were not finished.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile as sf

from knnvc.errors import EXIT_INTERRUPTED
from knnvc.runtime.interrupt import Terminated, sigterm_as_interrupt
from tests.fault_tools import FAST, SR, cli, json_summary, temp_files, write_audio

FILES = 30
SECONDS = 1.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def knnvc_command() -> list[str]:
    script = Path(sys.executable).parent / "knnvc"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "knnvc"]


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Children inherit an ignored SIGINT (pytest started in the background): let them see it as Ctrl-C."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous == signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


class Run:
    """One ``knnvc convert SRC VOICE -o OUT`` subprocess, interrupted by ``signum`` once some outputs exist."""

    def __init__(self, root: Path, voice: Path, signum: int) -> None:
        self.src, self.out, self.signum = root / "src", root / "out", signum
        for i in range(FILES):
            write_audio(self.src / f"part {i // 10}" / f"take_{i:02d}.wav", SECONDS)
        self.args = [self.src, voice, "-o", self.out, *FAST, "--json", "--batch-size", "2"]
        env = {**os.environ, "KNNVC_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one core each: two run at once
        with sigint_not_ignored():
            self.proc = subprocess.Popen(
                [*knnvc_command(), "convert", *map(str, self.args)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip

    def outputs(self) -> list[Path]:
        return sorted(p for p in self.out.rglob("*.wav") if not p.name.startswith("."))

    def interrupt_when_some_are_done(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.outputs()) < 3:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "no outputs appeared"
            time.sleep(0.02)
        self.proc.send_signal(self.signum)


@pytest.mark.slow  # four conversion processes (interrupted, then rerun): ~8 s on 2 cores
def test_sigint_and_sigterm_mid_batch_then_rerun(tmp_path: Path, voice: Path) -> None:
    runs = [Run(tmp_path / name, voice, signum) for name, signum in (("int", signal.SIGINT), ("term", signal.SIGTERM))]
    waiters = [threading.Thread(target=run.interrupt_when_some_are_done) for run in runs]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    for run in runs:
        stdout, stderr = run.proc.communicate(timeout=120)
        assert run.proc.returncode == EXIT_INTERRUPTED, (run.signum, stderr)
        assert "Traceback" not in stderr and "interrupted" in stderr and "rerun" in stderr
        summary = json.loads(stdout)
        done = run.outputs()
        assert summary["interrupted"] and 3 <= len(done) < FILES
        assert {str(p) for p in done} >= set(summary["outputs"])  # nothing reported that is not there
        for path in done:  # every output present is complete
            data, rate = sf.read(path, dtype="float32")
            assert rate == SR and len(data) == round(SECONDS * SR), path
        assert temp_files(run.out) == []
        rerun = json_summary(cli("convert", *run.args))
        assert (rerun["skipped"], rerun["converted"], rerun["failed"]) == (len(done), FILES - len(done), 0)
        assert sorted(rerun["skipped_outputs"]) == [str(p) for p in done]
        assert len(run.outputs()) == FILES and temp_files(run.out) == []


def test_sigterm_handler_is_scoped_to_the_batch() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) != before
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    assert signal.getsignal(signal.SIGTERM) == before
    assert issubclass(Terminated, KeyboardInterrupt)
    seen: list[object] = []

    def in_a_thread() -> None:
        with sigterm_as_interrupt():  # not the main thread: nothing installed, nothing raised
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [before]
