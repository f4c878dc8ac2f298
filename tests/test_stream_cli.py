"""``knnvc stream`` as a real pipe (fed at real-time pace, read as it goes) and ``knnvc live`` (extra [live])."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from knnvc.cli import live as live_cli
from knnvc.errors import DeviceError, ExtraError
from knnvc.options import ConvertOptions
from knnvc.stream.settings import StreamSettings
from knnvc.stream.streamer import Streamer
from tests.conftest import SOURCE_WAV
from tests.fault_tools import MODELS, _tiny_voice, cli, one_line, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHUNK = 1600  # samples: 100 ms at 16 kHz


def pcm(wav: np.ndarray) -> bytes:
    return bytes((np.clip(wav, -1, 1) * 32767).round().astype("<i2").tobytes())


@pytest.mark.slow  # 7.8 s of audio fed at real-time pace, after an interpreter that imports torch: ~15 s
def test_pipe_at_real_time_pace(voice: Path) -> None:
    """Issue 13: PCM piped through ``knnvc stream`` at real-time pace comes back converted while the input is still
    coming, exactly as long as the input and equal to the in-process ``Streamer``; stderr only carries text."""
    wav, _ = sf.read(SOURCE_WAV, dtype="int16")
    data = np.tile(wav, 2).astype("<i2").tobytes()  # about 7.8 s
    env = {**os.environ, "KNNVC_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "knnvc", "stream", str(voice), *MODELS, "--loudness", "none"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    ready = proc.stderr.readline().decode()  # models loaded: the stream starts now
    assert ready.startswith("streaming:"), ready + proc.stderr.read().decode()
    out = bytearray()
    came_back = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        while block := os.read(proc.stdout.fileno(), 65536):
            out.extend(block)
            came_back.set()

    thread = threading.Thread(target=reader)
    thread.start()
    start = time.monotonic()
    chunks = range(0, len(data), 2 * CHUNK)
    for i, first in enumerate(chunks):  # one chunk every 100 ms, on the wall clock
        time.sleep(max(0.0, start + i * CHUNK / 16_000 - time.monotonic()))
        proc.stdin.write(data[first : first + 2 * CHUNK])
        proc.stdin.flush()
        if i == len(chunks) // 2:  # halfway: the rest of the input waits until converted audio has come back
            assert came_back.wait(timeout=120), "no converted audio came back while the input was still coming"
    proc.stdin.close()
    thread.join(timeout=120)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    assert "Traceback" not in proc.stderr.read().decode()
    assert len(out) == len(data)
    fed = np.frombuffer(data, "<i2").astype(np.float32) / 32768
    streamer = Streamer(tiny_pipeline(), _tiny_voice(), ConvertOptions(loudness=None))
    expected = np.concatenate([streamer.push(fed), streamer.flush()])
    got = np.frombuffer(bytes(out), "<i2").astype(np.float32) / 32768
    assert np.abs(got - expected).max() < 5e-3


def test_rates_and_lengths() -> None:
    """Other rates in and out through the CLI's pump (os-level pipes): the input's length in time, in s16le."""
    from knnvc.cli.stream import pump

    wav = 0.1 * np.sin(np.arange(44_100 // 2) * 2 * np.pi * 220 / 44_100)  # 0.5 s at 44.1 kHz
    options = ConvertOptions(loudness=None, output_sample_rate=8_000)
    streamer = Streamer(tiny_pipeline(), _tiny_voice(), options, StreamSettings(input_rate=44_100))
    fd_in, writer = os.pipe()
    reader, fd_out = os.pipe()
    os.write(writer, pcm(wav)[:-1])  # an odd byte count: the half sample at the end is dropped
    os.close(writer)
    pump(streamer, fd_in, fd_out, chunk_ms=40)
    os.close(fd_out)
    data = os.read(reader, 1 << 20)
    assert len(data) == 2 * 4000


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [(["--chunk-ms", "25"], 2, "multiple of 20 ms"), (["--input-rate", "100"], 2, "--input-rate"),
     (["--k", "0"], 2, "k must be"), (["--loudness", "loud"], 2, "--loudness")],
)  # fmt: skip
def test_bad_options_are_one_line(voice: Path, args: list[str], exit_code: int, message: str) -> None:
    result = cli("stream", voice, *MODELS, *args)
    assert result.exit_code == exit_code and message in one_line(result)
    assert result.stdout == ""


# -- live ---------------------------------------------------------------------------------------------------
def _sounddevice() -> Any:
    try:
        return live_cli.open_sounddevice()
    except (DeviceError, ExtraError):
        return None


def _has_devices() -> bool:
    sd = _sounddevice()
    if sd is None:
        return False
    try:
        sd.query_devices(kind="input")
        sd.query_devices(kind="output")
    except Exception:  # noqa: BLE001 (any PortAudio failure means: no usable device here)
        return False
    return True


def test_live_without_portaudio_or_device_is_one_line(voice: Path) -> None:
    result = cli("live", voice, *MODELS, "--input-device", "no such microphone")
    assert result.exit_code == 7
    line = one_line(result)
    assert "PortAudio" in line or "pip install" in line or "no input device" in line


def test_live_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if it were not installed
    with pytest.raises(ExtraError, match=r'pip install "knnvc\[live\]"'):
        live_cli.open_sounddevice()


def test_find_device_names_what_is_missing() -> None:
    class FakeSd:
        class PortAudioError(Exception):
            pass

        @staticmethod
        def query_devices(device: object, kind: str) -> dict:
            if device not in (None, 3):
                raise ValueError(f"No {kind} device matching {device!r}")
            return {"name": "Mic", "default_samplerate": 48000.0}

    assert live_cli.find_device(FakeSd, "3", "input") == live_cli.AudioDevice(3, 48_000, "Mic")
    with pytest.raises(DeviceError, match="no input device 'usb'.*--list-devices"):
        live_cli.find_device(FakeSd, "usb", "input")


@pytest.mark.skipif(not _has_devices(), reason="no audio device (or no PortAudio) on this machine")
def test_live_lists_devices() -> None:
    result = cli("live", "--list-devices")
    assert result.exit_code == 0 and result.stderr.strip()


def test_live_loop_with_fake_devices() -> None:
    """The live loop reads 20 ms blocks, plays what the stream returns, and plays the tail on Ctrl-C."""
    wav = sf.read(SOURCE_WAV, dtype="float32")[0][:16_000]
    played: list[np.ndarray] = []

    class FakeSd:
        class PortAudioError(Exception):
            pass

        class InputStream:
            def __init__(self, **kw: Any) -> None:
                assert kw["samplerate"] == 48_000 and kw["blocksize"] == 960
                self.left = np.repeat(wav, 3)  # 48 kHz, crudely

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def read(self, n: int) -> tuple[np.ndarray, bool]:
                if not len(self.left):
                    raise KeyboardInterrupt
                block, self.left = self.left[:n], self.left[n:]
                return block[:, None], False

        class OutputStream(InputStream):
            def __init__(self, **kw: Any) -> None:
                assert kw["samplerate"] == 44_100

            def write(self, data: np.ndarray) -> None:
                played.append(data[:, 0])

    streamer = Streamer(tiny_pipeline(), _tiny_voice(), ConvertOptions(output_sample_rate=44_100),
                        StreamSettings(input_rate=48_000))
    live_cli.run(FakeSd, streamer, live_cli.AudioDevice(None, 48_000, "mic"), live_cli.AudioDevice(None, 44_100, "out"))
    assert sum(len(p) for p in played) == 44_100 and len(played) > 2
