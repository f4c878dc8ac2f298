"""Property: whatever audio file is generated, ``knnvc convert`` converts it or fails with the documented error.

Generated: sample rate 8-192 kHz, 1-8 channels, every PCM/float subtype, 0 samples to 10 minutes, NaN and Inf
samples, DC offset and clipping. The expectation is exact: no samples, NaN/Inf, or fewer than 400 samples at
16 kHz give exit 3 with one line naming the file; everything else converts to a finite file exactly as long
as the source. Nothing may end in a traceback or an exception that is not a ``KnnvcError``.

Inputs up to ``TINY_MAX_S`` run through the tiny fixture models; longer ones (to 10 minutes) through
``micro_pipeline`` (the same pipeline code with smaller random weights), so the suite stays fast. The CLI runs
in process, with ``KnnVC.from_pretrained`` answering with the chosen pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from knnvc.errors import AudioError, KnnvcError
from knnvc.options import RECEPTIVE_FIELD
from knnvc.pipeline import KnnVC
from knnvc.voice import Voice
from tests.conftest import REF_DIR
from tests.fault_tools import FAST, SR, check_clean, cli, micro_pipeline, temp_files, tiny_pipeline, torch_threads

RATES = [8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 88_200, 96_000, 176_400, 192_000]
SUBTYPES = [
    ("WAV", "PCM_U8"),
    ("FLAC", "PCM_S8"),
    ("WAV", "PCM_16"),
    ("FLAC", "PCM_16"),
    ("WAV", "PCM_24"),
    ("FLAC", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "FLOAT"),
    ("WAV", "DOUBLE"),
]
MAX_RAW = 20_000_000  # samples (frames x channels) per generated file: 10 min of 16 kHz stereo
TINY_MAX_S = 20.0  # s at 16 kHz: longer inputs use the micro pipeline
LENGTHS = [(5, "empty"), (20, "tiny"), (80, "short"), (95, "medium"), (100, "long")]  # cumulative percent


@dataclass(frozen=True)
class Case:
    rate: int
    channels: int
    fmt: str
    subtype: str
    frames: int
    nan: bool = False
    inf: bool = False
    dc: float = 0.0
    gain: float = 0.3
    seed: int = 0

    @property
    def is_float(self) -> bool:
        return self.subtype in ("FLOAT", "DOUBLE")

    @property
    def samples_16k(self) -> int:
        return math.floor(self.frames * SR / self.rate + 0.5)  # soxr rounds halves up

    def expected_error(self) -> tuple[str, ...] | None:
        """Words, one of which the error this case must fail with says; None when it must convert."""
        if self.frames == 0:  # libsndfile cannot reopen a FLAC file it wrote without samples
            return ("no audio samples", "cannot decode") if self.fmt == "FLAC" else ("no audio samples",)
        if (self.nan or self.inf) and self.is_float:
            return ("NaN or infinite",)
        if self.samples_16k < RECEPTIVE_FIELD:
            return ("too short",)
        return None

    def write(self, path: Path) -> Path:
        rng = np.random.default_rng(self.seed)
        t = np.arange(self.frames, dtype=np.float64) / self.rate
        mono = self.gain * np.sin(2 * np.pi * rng.uniform(80, 400) * t) + self.dc
        data = np.repeat(mono[:, None], self.channels, axis=1) + 0.01 * rng.standard_normal((self.frames, 1))
        if self.frames and self.is_float and (self.nan or self.inf):
            rows = rng.integers(0, self.frames, size=2)
            data[rows[0], rng.integers(self.channels)] = np.nan if self.nan else np.inf
            if self.nan and self.inf:
                data[rows[1], 0] = -np.inf
        sf.write(path, data.astype(np.float32 if self.subtype != "DOUBLE" else np.float64), self.rate,
                 format=self.fmt, subtype=self.subtype)  # fmt: skip
        return path


@st.composite
def cases(draw: st.DrawFn, short: bool = False) -> Case:
    """A generated case; ``short``: at most 3 s (no medium or long inputs)."""
    rate = draw(st.sampled_from(RATES))
    channels = draw(st.integers(1, 8))
    fmt, subtype = draw(st.sampled_from(SUBTYPES))
    roll = draw(st.integers(0, 79 if short else 99))
    kind = next(name for below, name in LENGTHS if roll < below)
    longest = min(600 * rate, MAX_RAW // channels)
    bounds = {
        "empty": (0, 0),
        "tiny": (1, math.ceil(2 * RECEPTIVE_FIELD * rate / SR)),  # around one WavLM frame
        "short": (1, 3 * rate),
        "medium": (3 * rate, 30 * rate),
        "long": (30 * rate, longest),
    }[kind]
    frames = draw(st.integers(bounds[0], max(bounds[0], min(bounds[1], longest))))
    return Case(
        rate, channels, fmt, subtype, frames,
        nan=draw(st.booleans()), inf=draw(st.booleans()),
        dc=draw(st.sampled_from([0.0, 0.0, 0.4, -0.9])),
        gain=draw(st.sampled_from([0.001, 0.3, 1.0, 4.0, 50.0])),  # 1.0 and up clip (float subtypes keep > 1)
        seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[KnnVC, Path]]]:
    folder = tmp_path_factory.mktemp("voices")
    with torch_threads(1):
        tiny = tiny_pipeline()
        micro, micro_voice = micro_pipeline()
        tiny_voice = tiny.build_voice(REF_DIR, trim=False)
        yield {
            "tiny": (tiny, tiny_voice.save(folder / "tiny.voice")),
            "micro": (micro, micro_voice.save(folder / "micro.voice")),
        }


HYPOTHESIS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
}


def edges(test: Any) -> Any:
    """The edge cases every run tries: just long enough, just too short, and empty."""
    test = example(case=Case(44_100, 2, "FLAC", "PCM_16", 1102))(test)  # 399.6 -> 400 samples at 16 kHz: converts
    test = example(case=Case(8_000, 1, "WAV", "PCM_U8", 199))(test)  # 398 samples at 16 kHz: too short
    return example(case=Case(48_000, 3, "WAV", "DOUBLE", 0))(test)


@settings(max_examples=15, **HYPOTHESIS)  # type: ignore[arg-type]
@given(case=cases(short=True))
@edges
def test_any_short_audio_converts_or_fails_as_documented(
    case: Case, pipelines: dict[str, tuple[KnnVC, Path]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Up to 3 s: the quick share of the property below."""
    converts_or_fails_as_documented(case, pipelines, tmp_path_factory)


@pytest.mark.slow  # 35 cases up to 10 minutes long: ~12 s on 2 cores
@settings(max_examples=30, **HYPOTHESIS)  # type: ignore[arg-type]
@given(case=cases())
@example(case=Case(16_000, 1, "WAV", "PCM_16", 600 * 16_000, dc=0.2, gain=4.0))  # 10 minutes, DC, clipped
@example(case=Case(192_000, 8, "WAV", "FLOAT", 12 * 192_000, nan=True))  # 8 channels at 192 kHz with a NaN
@edges
def test_any_audio_converts_or_fails_as_documented(
    case: Case, pipelines: dict[str, tuple[KnnVC, Path]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    converts_or_fails_as_documented(case, pipelines, tmp_path_factory)


def converts_or_fails_as_documented(
    case: Case, pipelines: dict[str, tuple[KnnVC, Path]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``knnvc convert`` on the case's file: a file as long as the input, or exit 3 with one line naming it."""
    folder = tmp_path_factory.mktemp("case")
    source = case.write(folder / f"in put {case.rate} {case.subtype}.{case.fmt.lower()}")
    size = "tiny" if case.samples_16k <= TINY_MAX_S * SR else "micro"
    vc, voice = pipelines[size]
    out = folder / "out" / "converted.wav"
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setattr(KnnVC, "from_pretrained", classmethod(lambda cls, *args, **kwargs: vc))
        result = cli("convert", source, voice, "-o", out, *FAST)
        if size == "tiny":  # the library itself: a result or a KnnvcError, nothing else
            try:
                vc.convert(source, Voice.load(voice))
            except KnnvcError as exc:
                assert isinstance(exc, AudioError) and case.expected_error() is not None, exc
    check_clean(result)
    assert temp_files(folder) == []
    expected = case.expected_error()
    event(f"{size} pipeline, {'converts' if expected is None else 'fails: ' + expected[0]}")
    if expected is None:
        assert result.exit_code == 0, (case, result.stderr)
        wav, rate = sf.read(out, dtype="float32")
        assert rate == SR and len(wav) == case.samples_16k, case
        assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    else:
        assert result.exit_code == AudioError.exit_code, (case, result.stderr)
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith(("failed:", "error:"))]
        assert len(errors) == 1 and source.name in errors[0], (case, result.stderr)
        assert any(words in errors[0] for words in expected), (case, errors[0])
        assert not out.exists()
