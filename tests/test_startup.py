"""The start-up as the program runs it: the program ends at once when its command is done
(``knnvc.cli.app.exit_at_once``: the ``atexit`` functions run, every line and exit code as before), silero-vad is
imported only when references are trimmed, and Ctrl-C while torch loads exits 130.

Behaviour only; how fast it is, is ``python -m bench.startup``.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from knnvc.cli import app
from knnvc.cli.app import exit_at_once
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


# -- exit_at_once: when it ends the process itself, and when it leaves the exit to Python ----------------------------


class Exited(Exception):
    """``os._exit`` called (in place of ending the test process)."""


def test_exit_at_once_ends_the_process_only_when_it_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def fake_exit(code: int) -> None:
        calls.append(code)
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: calls.append("atexit"))
    exit_at_once(SystemExit("a message for Python to print"))  # not a number: Python prints it, exits 1
    assert calls == []
    release = threading.Event()
    worker = threading.Thread(target=release.wait, args=(30,))  # not a daemon: a normal exit waits for it
    worker.start()
    try:
        exit_at_once(SystemExit(0))
        assert calls == []
    finally:
        release.set()
        worker.join()
    with pytest.raises(Exited):
        exit_at_once(SystemExit(4))
    assert calls == ["atexit", 4]  # the atexit functions first, then the status as it was
    calls.clear()
    with pytest.raises(Exited):
        exit_at_once(SystemExit(None))
    assert calls == ["atexit", 0]
    calls.clear()

    class Broken:
        def flush(self) -> None:
            raise BrokenPipeError

    monkeypatch.setattr(sys, "stdout", Broken())
    exit_at_once(SystemExit(0))  # a flush that fails: Python reports it and exits 120, as always
    assert calls == ["atexit"]


# -- in process: the errors of the start, in their order ---------------------------------------------------------


def test_missing_weights_fail_with_one_line_and_exit_4(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "wavlm.pt"
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "o.wav", *MODELS, "--wavlm", missing, "--offline")
    assert result.exit_code == WeightsError.exit_code, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: WavLM weights {missing}: no such file or folder"]


def test_a_bad_input_fails_before_any_weights_are_looked_at(tmp_path: Path) -> None:
    """A text file as the source and weights that do not exist: the input's error (exit 3), checked before any
    model loads."""
    fake = tmp_path / "text.wav"
    fake.write_text("not audio\n" * 50)
    result = cli("convert", fake, REF_DIR, "-o", tmp_path / "o.wav", *MODELS, "--wavlm", tmp_path / "no.pt")
    assert result.exit_code == InputError.exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot decode {fake}"), lines


def test_a_missing_vocoder_fails_after_wavlm_loaded(tmp_path: Path) -> None:
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "o.wav", *MODELS, "--vocoder", tmp_path / "v.pt")
    assert result.exit_code == WeightsError.exit_code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "v.pt" in result.stderr, result.stderr
    assert not (tmp_path / "o.wav").exists()


# -- convert as the program: the same lines and codes, silero only to trim, atexit run ------------------------------


@pytest.mark.slow  # five knnvc processes (torch imported in each): ~30 s on 2 cores
def test_the_program_fails_and_succeeds_as_before(tmp_path: Path) -> None:
    """The program, whose exit skips the interpreter's teardown: each error is one line with its exit code (the
    device, missing weights), the ``atexit`` functions run, ``--json`` reaches stdout whole, the output is written,
    and silero-vad is imported only when references are trimmed."""
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
    """SIGINT as torch is being imported: the one ``interrupted`` line and exit 130, nothing written."""
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
