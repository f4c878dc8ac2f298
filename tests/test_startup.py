"""The start-up: models loading in the background (``knnvc.cli.loading``), errors from there surfacing as before,
silero-vad imported only to trim, and the program ending at once (``knnvc.cli.app.exit_at_once``).

Behaviour only; how fast it is, is ``python -m bench.startup``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from knnvc.cli import app
from knnvc.cli.loading import Ahead
from knnvc.errors import DeviceError, InputError, WeightsError
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

MODELS = ["--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER), "--device", "cpu"]
ENV = {**os.environ, "KNNVC_OFFLINE": "1"}
SPY = """
import atexit, importlib.abc, sys
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ('torch', 'silero_vad'):
            sys.stderr.write(f'<<import {name}>>\\n'); sys.stderr.flush()
sys.meta_path.insert(0, Spy())
atexit.register(lambda: (sys.stderr.write('<<atexit>>\\n'), sys.stderr.flush()))
sys.argv = ['knnvc', *sys.argv[1:]]
from knnvc.cli import app
app()
"""


def program(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``knnvc ARGS`` as the program runs it (``app()`` called bare), with imports of torch and silero_vad and the
    ``atexit`` functions reported on stderr as ``<<...>>`` lines."""
    command = [sys.executable, "-c", SPY, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, check=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line and not line.startswith("<<")]


def cli(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={"KNNVC_OFFLINE": "1"})


def steps(log: list[str], fail: str | None = None) -> Iterator[tuple[str, Any]]:
    for name in ("torch", "wavlm", "vocoder"):
        log.append(name)
        if name == fail:
            raise WeightsError(f"{name}: bad weights")
        yield name, name.upper()


# -- Ahead ---------------------------------------------------------------------------------------------------------


def test_ahead_hands_each_step_over_in_order() -> None:
    log: list[str] = []
    loads = Ahead(steps(log))
    assert [loads.take(n) for n in ("torch", "wavlm", "vocoder")] == ["TORCH", "WAVLM", "VOCODER"]
    assert log == ["torch", "wavlm", "vocoder"]


def test_ahead_raises_a_steps_error_where_it_is_taken_and_runs_nothing_after_it() -> None:
    log: list[str] = []
    loads = Ahead(steps(log, fail="wavlm"))
    assert loads.take("torch") == "TORCH"  # the steps before the failing one are handed over as usual
    with pytest.raises(WeightsError, match="wavlm: bad weights"):
        loads.take("wavlm")
    with pytest.raises(WeightsError, match="wavlm: bad weights"):  # and a later step fails with the same error
        loads.take("vocoder")
    assert log == ["torch", "wavlm"]


def test_ahead_close_stops_after_the_step_under_way_and_leaves_no_thread() -> None:
    """A command that failed before taking its steps: closed, the loading stops at the next step (in process, the
    close waits for the step under way: nothing of that command keeps running)."""
    started, release, log = threading.Event(), threading.Event(), []

    def slow() -> Iterator[tuple[str, Any]]:
        started.set()
        release.wait(30)
        log.append("torch")
        yield "torch", None
        log.append("wavlm")  # never reached: closed during the first step
        yield "wavlm", None

    loads = Ahead(slow(), name="knnvc-test-ahead")
    assert started.wait(30)
    threading.Timer(0.2, release.set).start()
    loads.close()
    assert log == ["torch"]
    assert not any(t.name == "knnvc-test-ahead" for t in threading.enumerate())


def test_a_wait_for_a_step_can_be_interrupted() -> None:
    """Ctrl-C while the command waits for a step: ``KeyboardInterrupt`` in the main thread, as in any wait."""
    release = threading.Event()

    def never() -> Iterator[tuple[str, Any]]:
        release.wait(30)
        yield "torch", None

    loads = Ahead(never())
    interrupt = threading.Timer(0.2, lambda: signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loads.take("torch")
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()
        loads.close()


# -- convert: errors from the loading thread, in process -------------------------------------------------------------


def test_missing_weights_fail_from_the_background_with_one_line_and_exit_4(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "wavlm.pt"
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "o.wav", *MODELS, "--wavlm", missing, "--offline")
    assert result.exit_code == WeightsError.exit_code, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: WavLM weights {missing}: no such file or folder"]
    assert not any(t.name == "knnvc-load-ahead" for t in threading.enumerate())  # closed with the command


def test_a_bad_input_still_fails_first_whatever_the_loading_meets(tmp_path: Path) -> None:
    """A text file as the source and weights that do not exist: the input's error (exit 3), checked first as
    before; the loading's error is never shown, and its thread is gone when the command returns."""
    fake = tmp_path / "text.wav"
    fake.write_text("not audio\n" * 50)
    result = cli("convert", fake, REF_DIR, "-o", tmp_path / "o.wav", *MODELS, "--wavlm", tmp_path / "no.pt")
    assert result.exit_code == InputError.exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot decode {fake}"), lines
    assert not any(t.name == "knnvc-load-ahead" for t in threading.enumerate())


def test_a_missing_vocoder_fails_after_wavlm_loaded(tmp_path: Path) -> None:
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "o.wav", *MODELS, "--vocoder", tmp_path / "v.pt")
    assert result.exit_code == WeightsError.exit_code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "v.pt" in result.stderr, result.stderr
    assert not (tmp_path / "o.wav").exists()


# -- convert as the program: the same lines and codes, silero only to trim, atexit run ------------------------------


@pytest.mark.slow  # five knnvc processes (torch imported in each): ~30 s on 2 cores
def test_the_program_fails_and_succeeds_as_before(tmp_path: Path) -> None:
    """The program, whose exit skips the interpreter's teardown: each error is one line with its exit code (the
    device, checked in the loading thread; missing weights; a bad input met while torch loads), the ``atexit``
    functions run, ``--json`` reaches stdout whole, and silero-vad is imported only when references are trimmed."""
    missing = tmp_path / "none.pt"
    runs = {
        "device": program("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "d.wav", *MODELS, "--device", "cuda:99"),
        "weights": program("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "w.wav", *MODELS, "--vocoder", missing),
        "no-trim": program("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "n.wav", *MODELS, "--no-trim", "--json"),
        "trim": program("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "t.wav", *MODELS, "-q"),
    }
    device, weights = runs["device"], runs["weights"]
    assert device.returncode == DeviceError.exit_code, device.stderr
    assert [ln for ln in error_lines(device.stderr) if ln.startswith("error:")] == error_lines(device.stderr)
    assert len(error_lines(device.stderr)) == 1 and "cuda:99" in device.stderr, device.stderr
    assert weights.returncode == WeightsError.exit_code, weights.stderr
    assert len(error_lines(weights.stderr)) == 1 and "none.pt" in weights.stderr, weights.stderr
    for run in runs.values():
        assert run.stderr.rstrip().endswith("<<atexit>>"), run.stderr
        assert "<<import torch>>" in run.stderr
    no_trim, trim = runs["no-trim"], runs["trim"]
    assert no_trim.returncode == 0 and trim.returncode == 0, (no_trim.stderr, trim.stderr)
    assert json.loads(no_trim.stdout)["converted"] == 1 and (tmp_path / "n.wav").exists()
    assert "<<import silero_vad>>" not in no_trim.stderr
    assert "<<import silero_vad>>" in trim.stderr and (tmp_path / "t.wav").exists()


@pytest.mark.slow  # one knnvc process interrupted while torch loads: ~3 s
def test_ctrl_c_while_the_models_load_exits_130(tmp_path: Path) -> None:
    """SIGINT as torch is being imported in the background: the one ``interrupted`` line and exit 130, at once (the
    loading is not waited for), nothing written."""
    command = [sys.executable, "-c", SPY, "convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(tmp_path / "o.wav"),
               *MODELS]  # fmt: skip
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:  # children inherit an ignored SIGINT (pytest started in the background)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV)
    finally:
        if previous == signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("<<import torch>>"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert [ln.strip() for ln in error_lines(rest)] == ["interrupted"], rest
    assert not (tmp_path / "o.wav").exists()
