"""Out of memory: a simulated ``torch.OutOfMemoryError`` (on CPU) makes the pipeline halve its batch, then its
window, and only then fail with a ``DeviceError`` that names the file and says what to change (exit 7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from knnvc.errors import DeviceError
from knnvc.nn.encoder import num_frames
from knnvc.options import FRAME_RATE, SAMPLE_RATE, ConvertOptions, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.runtime import oom
from tests.conftest import REF_DIR, SOURCE_WAV
from tests.fault_tools import FAST, cli, one_line, tiny_pipeline, tiny_voice_file, tone, write_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def fake_encoder(vc: KnnVC, monkeypatch: pytest.MonkeyPatch, fits: Callable[[list[Tensor]], bool]) -> None:
    """A device whose memory holds a batch only when ``fits(batch)``: the encoder raises out-of-memory otherwise,
    else gives ones of the right shape."""
    dim = vc.encoder.dim

    def encode_batch(wavs: list[Tensor]) -> list[Tensor]:
        if not fits(wavs):
            raise out_of_memory()
        return [torch.ones(num_frames(len(w)), dim) for w in wavs]

    monkeypatch.setattr(vc.encoder, "encode_batch", encode_batch)


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings knnvc logged (what ``--verbose`` shows), and forget them."""
    found = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("knnvc")]
    caplog.clear()
    return found


def test_batch_is_halved_and_results_are_unchanged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    vc = tiny_pipeline()
    expected = vc.build_voice(REF_DIR, trim=False).frames
    real = vc.encoder.encode_batch

    def one_at_a_time(wavs: list[Tensor]) -> list[Tensor]:  # a device that holds one reference at a time
        if len(wavs) > 1:
            raise out_of_memory()
        return list(real(wavs))

    monkeypatch.setattr(vc.encoder, "encode_batch", one_at_a_time)
    vc = tiny_pipeline(batch_size=8)  # a fresh pipeline: nothing learnt yet
    vc.slack = 1.0  # one batch for the three references, however different their lengths
    caplog.set_level(logging.WARNING, logger="knnvc")
    frames = vc.build_voice(REF_DIR, trim=False).frames
    torch.testing.assert_close(frames, expected, atol=1e-4, rtol=1e-4)
    assert warnings_in(caplog) == ["out of memory on cpu encoding 3 items at once; retrying 1 at a time"]
    again = vc.build_voice(REF_DIR, trim=False).frames  # remembered: one at a time from the start, no new failure
    assert warnings_in(caplog) == [] and torch.equal(again, frames)


def test_window_is_halved_at_batch_size_one(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    base = tiny_pipeline()
    vc = KnnVC(base.encoder, base.vocoder, PipelineSettings("cpu", batch_size=8, window_seconds=4, context_seconds=0.5))
    limit = round(2.6 * SAMPLE_RATE)  # windows of up to 2.6 s fit
    fake_encoder(vc, monkeypatch, lambda wavs: len(wavs) == 1 and all(len(w) <= limit for w in wavs))
    voice = vc.build_voice(tone(2.0)[:, 0], sample_rate=SAMPLE_RATE, trim=False)
    wav = tone(9.0)[:, 0]
    caplog.set_level(logging.WARNING, logger="knnvc")
    out = vc.convert(wav, voice, ConvertOptions(loudness=None), sample_rate=SAMPLE_RATE)
    assert out.shape == wav.shape
    said = warnings_in(caplog)
    halved = [m for m in said if "retrying" in m]  # the batch of windows, down to one at a time
    assert halved and halved[-1].endswith("retrying 1 at a time"), said
    # and the windows: 4 s -> 2 s -> 1 s cores (+1 s of context: 2 s windows, which fit)
    assert [m for m in said if "windows" in m] == [
        "out of memory on cpu at batch size 1; encoding in 2 s windows",
        "out of memory on cpu at batch size 1; encoding in 1 s windows",
    ], said


def test_vocoder_batch_then_window(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    vc = tiny_pipeline(batch_size=8)
    hop = vc.vocoder.config.hop

    def forward(features: Tensor) -> Tensor:  # a device that holds one window of at most 300 frames
        if features.shape[0] > 1 or features.shape[1] > 300:
            raise out_of_memory()
        return torch.zeros(features.shape[0], 1, features.shape[1] * hop)

    monkeypatch.setattr(vc.vocoder, "forward", forward)
    features = torch.randn(1400, vc.encoder.dim)
    caplog.set_level(logging.WARNING, logger="knnvc")
    wav = vc.vocode(features)
    assert wav.shape == (1400 * hop,)  # it ran, in windows that fit
    said = warnings_in(caplog)
    batches = [m for m in said if "vocoding" in m and "retrying" in m]
    windows = [m for m in said if "vocoding in" in m]
    # both were tried and failed: the windows shrunk (250 frames fit in 300), their batches halved down to one
    assert windows and windows[-1] == "out of memory on cpu at batch size 1; vocoding in 5 s windows", said
    assert batches and batches[-1].endswith("retrying 1 at a time"), said
    vc.vocode(features)  # remembered: no new failure
    assert warnings_in(caplog) == []


def test_gives_up_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vc, voice = tiny_pipeline(), tiny_voice_file(tmp_path)
    fake_encoder(vc, monkeypatch, lambda wavs: False)  # nothing ever fits
    with pytest.raises(DeviceError) as info:
        vc.convert(tone(30.0)[:, 0], voice, sample_rate=SAMPLE_RATE)
    message = str(info.value)
    assert "out of memory on cpu while encoding at batch size 1 with 1 s windows" in message
    assert "split the file" in message and "simulated" in message
    source = write_audio(tmp_path / "long take.wav", 1.0)
    result = cli("convert", source, voice, "-o", tmp_path / "out.wav", *FAST)  # the cached encoder is patched
    assert result.exit_code == DeviceError.exit_code
    line = one_line(result)
    assert "long take.wav" in line and "out of memory" in line
    assert not (tmp_path / "out.wav").exists()


def test_gpu_advice_names_the_options() -> None:
    guard = oom.OomGuard(torch.device("cuda"))

    class Owner:
        window = FRAME_RATE

    def attempt() -> None:
        raise out_of_memory()

    with pytest.raises(DeviceError) as info:
        guard.retry("encoding", attempt, Owner())
    assert "precision='bf16'" in str(info.value) and "device='cpu'" in str(info.value)  # Python words
    assert "out of memory on cuda while encoding" in str(info.value)


def test_only_memory_errors_are_retried(caplog: pytest.LogCaptureFixture) -> None:
    assert oom.is_out_of_memory(out_of_memory())
    assert oom.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    cpu = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
    assert oom.is_out_of_memory(RuntimeError(cpu))
    assert not oom.is_out_of_memory(RuntimeError("shape mismatch"))
    guard = oom.OomGuard(torch.device("cpu"))
    caplog.set_level(logging.WARNING, logger="knnvc")

    def broken(items: Tensor) -> Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="^shape mismatch$"):  # itself: not turned into a DeviceError
        guard.batched("encoding", broken, torch.zeros(4, 2))
    assert warnings_in(caplog) == []  # not taken for a lack of memory: nothing halved, nothing retried
    failures = iter([out_of_memory(), out_of_memory()])

    def flaky() -> np.ndarray:  # out of memory twice, then it fits
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return np.zeros(1)

    class Owner:
        window = 4 * FRAME_RATE

    assert guard.retry("encoding", flaky, Owner()).shape == (1,)
    assert warnings_in(caplog) == ["out of memory on cpu at batch size 1; encoding in 2 s windows",
                                   "out of memory on cpu at batch size 1; encoding in 1 s windows"]  # fmt: skip


def test_nothing_changes_when_memory_suffices(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vc = tiny_pipeline()
    caplog.set_level(logging.WARNING, logger="knnvc")
    out = vc.convert(SOURCE_WAV, tiny_voice_file(tmp_path))
    assert np.isfinite(out).all() and warnings_in(caplog) == []  # nothing halved, no window shrunk
