"""Out of memory: a simulated ``torch.OutOfMemoryError`` (on CPU) makes the pipeline halve its batch, then its
window, and only then fail with a ``DeviceError`` that names the file and says what to change (exit 7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from knnvc.errors import DeviceError
from knnvc.nn.encoder import num_frames
from knnvc.options import FRAME_RATE, SAMPLE_RATE, ConvertOptions, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.runtime import oom
from knnvc.runtime.windows import ENCODER_CORE
from tests.conftest import REF_DIR, SOURCE_WAV
from tests.fault_tools import FAST, cli, one_line, tiny_pipeline, tiny_voice_file, tone, write_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def fake_encoder(vc: KnnVC, monkeypatch: pytest.MonkeyPatch, fits: Callable[[list[Tensor]], bool]) -> list[int]:
    """Encoder that raises out-of-memory unless ``fits(batch)``; else zeros of the right shape. Returns sizes."""
    calls: list[int] = []
    dim = vc.encoder.dim

    def encode_batch(wavs: list[Tensor]) -> list[Tensor]:
        calls.append(len(wavs))
        if not fits(wavs):
            raise out_of_memory()
        return [torch.ones(num_frames(len(w)), dim) for w in wavs]

    monkeypatch.setattr(vc.encoder, "encode_batch", encode_batch)
    return calls


def test_batch_is_halved_and_results_are_unchanged(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    vc = tiny_pipeline()
    expected = vc.build_voice(REF_DIR, trim=False).frames
    real = vc.encoder.encode_batch
    sizes: list[int] = []

    def one_at_a_time(wavs: list[Tensor]) -> list[Tensor]:
        sizes.append(len(wavs))
        if len(wavs) > 1:
            raise out_of_memory()
        return list(real(wavs))

    monkeypatch.setattr(vc.encoder, "encode_batch", one_at_a_time)
    vc = tiny_pipeline(batch_size=8)  # a fresh pipeline: nothing learnt yet
    vc.slack = 1.0  # one batch for the three references, however different their lengths
    with caplog.at_level(logging.WARNING, logger="knnvc"):
        frames = vc.build_voice(REF_DIR, trim=False).frames
    assert sizes == [3, 1, 1, 1]  # 3 references at once, then halved to 1
    torch.testing.assert_close(frames, expected, atol=1e-4, rtol=1e-4)
    assert oom.guard(vc).batch_limit == {"encoding": 1}
    assert "retrying 1 at a time" in caplog.text
    vc.build_voice(REF_DIR, trim=False)  # remembered: starts at one item, no new failure
    assert sizes[4:] == [1, 1, 1]


def test_window_is_halved_at_batch_size_one(monkeypatch: pytest.MonkeyPatch) -> None:
    base = tiny_pipeline()
    vc = KnnVC(base.encoder, base.vocoder, PipelineSettings("cpu", batch_size=8, window_seconds=4, context_seconds=0.5))
    limit = round(2.6 * SAMPLE_RATE)  # windows of up to 2.6 s fit
    calls = fake_encoder(vc, monkeypatch, lambda wavs: len(wavs) == 1 and all(len(w) <= limit for w in wavs))
    voice = vc.build_voice(tone(2.0)[:, 0], sample_rate=SAMPLE_RATE, trim=False)
    wav = tone(9.0)[:, 0]
    out = vc.convert(wav, voice, ConvertOptions(loudness=None), sample_rate=SAMPLE_RATE)
    assert out.shape == wav.shape
    assert vc.window == FRAME_RATE  # 4 s -> 2 s -> 1 s cores (+1 s context: 2 s windows)
    assert max(calls) > 1 and calls[-1] == 1


def test_vocoder_batch_then_window(monkeypatch: pytest.MonkeyPatch) -> None:
    vc = tiny_pipeline(batch_size=8)
    shapes: list[tuple[int, ...]] = []
    hop = vc.vocoder.config.hop

    def forward(features: Tensor) -> Tensor:
        shapes.append(tuple(features.shape))
        if features.shape[0] > 1 or features.shape[1] > 300:
            raise out_of_memory()
        return torch.zeros(features.shape[0], 1, features.shape[1] * hop)

    monkeypatch.setattr(vc.vocoder, "forward", forward)
    features = torch.randn(1400, vc.encoder.dim)
    wav = vc.vocode(features)
    assert wav.shape == (1400 * hop,)
    assert any(s[0] > 1 for s in shapes) and any(s[1] > 300 for s in shapes)  # both were tried, and failed
    assert oom.vocoder_core(vc) == 250 and oom.guard(vc).batch_limit["vocoding"] == 1
    last = len(shapes) - 1 - [s[0] > 1 or s[1] > 300 for s in reversed(shapes)].index(True)
    assert all(s[0] == 1 and s[1] <= 300 for s in shapes[last + 1 :])  # then it ran in windows that fit


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


def test_only_memory_errors_are_retried() -> None:
    assert oom.is_out_of_memory(out_of_memory())
    assert oom.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    cpu = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
    assert oom.is_out_of_memory(RuntimeError(cpu))
    assert not oom.is_out_of_memory(RuntimeError("shape mismatch"))
    guard = oom.OomGuard(torch.device("cpu"))
    calls: list[int] = []

    def broken(items: Tensor) -> Tensor:
        calls.append(len(items))
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        guard.batched("encoding", broken, torch.zeros(4, 2))
    assert calls == [4]  # not retried, not turned into a DeviceError

    def flaky() -> np.ndarray:
        calls.append(0)
        if len(calls) < 3:
            raise out_of_memory()
        return np.zeros(1)

    class Owner:
        window = 4 * FRAME_RATE

    assert guard.retry("encoding", flaky, Owner()).shape == (1,)


def test_nothing_changes_when_memory_suffices(tmp_path: Path) -> None:
    vc = tiny_pipeline()
    out = vc.convert(SOURCE_WAV, tiny_voice_file(tmp_path))
    assert oom.guard(vc).batch_limit == {} and oom.guard(vc).vocoder_halvings == 0
    assert vc.window == ENCODER_CORE and np.isfinite(out).all()
