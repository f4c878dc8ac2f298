"""Faults in audio content: corrupt, truncated, empty, too short, silent, NaN/Inf, DC, clipping; every subtype,
rate (8-192 kHz) and channel count (1-8); a 1-hour file decoded in bounded memory.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from knnvc.audio import decode, loudness
from knnvc.errors import AudioError
from knnvc.options import RECEPTIVE_FIELD
from tests.fault_tools import (
    FAST,
    SR,
    cli,
    json_summary,
    one_line,
    temp_files,
    tone,
    write_audio,
)

RATES = [8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 88_200, 96_000, 176_400, 192_000]
SUBTYPES = [
    ("WAV", "PCM_U8"),
    ("FLAC", "PCM_S8"),
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "FLOAT"),
    ("WAV", "DOUBLE"),
    ("FLAC", "PCM_24"),
    ("WAV", "ULAW"),
    ("AIFF", "PCM_16"),
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# -- corrupt, truncated, empty, too short ---------------------------------------------------------------------


def _damaged(tmp_path: Path, kind: str) -> Path:
    flac, wav = tmp_path / "good.flac", tmp_path / "good.wav"
    sf.write(flac, tone(2.0), SR)
    sf.write(wav, tone(2.0), SR)
    data = {"flac": flac.read_bytes(), "wav": wav.read_bytes()}
    path = tmp_path / f"{kind}.{'flac' if 'flac' in kind else 'wav'}"
    if kind == "truncated_flac":
        path.write_bytes(data["flac"][: len(data["flac"]) // 2])
    elif kind == "corrupt_flac":
        body = data["flac"]
        path.write_bytes(body[:3000] + os.urandom(4000) + body[7000:])
    elif kind == "garbage_wav":
        path.write_bytes(b"RIFF" + os.urandom(5000))
    elif kind == "header_only_wav":
        path.write_bytes(data["wav"][:44])
    elif kind == "truncated_wav":
        path.write_bytes(data["wav"][: len(data["wav"]) // 2])
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("truncated_flac", "cannot decode"),
        ("corrupt_flac", "cannot decode"),
        ("garbage_wav", "cannot decode"),
        ("header_only_wav", "no audio samples"),
    ],
)
def test_corrupt_files_are_refused(tmp_path: Path, voice: Path, kind: str, words: str) -> None:
    path = _damaged(tmp_path, kind)
    with pytest.raises(AudioError, match=words) as info:
        decode.load(path)
    assert str(path) in str(info.value)
    result = cli("convert", path, voice, "-o", tmp_path / "out.wav", *FAST)
    assert result.exit_code == AudioError.exit_code
    assert path.name in one_line(result) and words in one_line(result)
    assert not (tmp_path / "out.wav").exists() and temp_files(tmp_path) == []


def test_truncated_wav_converts_what_is_there(tmp_path: Path, voice: Path) -> None:
    """A WAV cut short (an interrupted copy) still decodes up to the cut: its header cannot tell."""
    path = _damaged(tmp_path, "truncated_wav")
    summary = json_summary(cli("convert", path, voice, "-o", tmp_path / "out.wav", *FAST, "--json"))
    assert summary["converted"] == 1
    assert sf.info(tmp_path / "out.wav").frames == pytest.approx(SR, abs=40)  # half of 2 s


@pytest.mark.parametrize(
    ("samples", "rate", "words"),
    [
        (0, SR, "no audio samples"),
        (1, SR, "too short"),
        (RECEPTIVE_FIELD - 1, SR, "too short"),
        (199, 8_000, "too short"),  # 398 samples at 16 kHz
        (1, 192_000, "too short"),  # rounds to no sample at all at 16 kHz
    ],
)
def test_empty_and_shorter_than_one_frame(tmp_path: Path, voice: Path, samples: int, rate: int, words: str) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, tone(samples / rate, rate), rate, subtype="PCM_16")
    assert sf.info(path).frames == samples
    result = cli("convert", path, voice, "-o", tmp_path / "out.wav", *FAST)
    assert result.exit_code == AudioError.exit_code
    line = one_line(result)
    assert "short.wav" in line and words in line
    if words == "too short":
        assert "at least 25 ms" in line


def test_exactly_one_frame_converts(tmp_path: Path, voice: Path) -> None:
    path = tmp_path / "one_frame.wav"
    sf.write(path, tone(RECEPTIVE_FIELD / SR), SR, subtype="FLOAT")
    json_summary(cli("convert", path, voice, "-o", tmp_path / "out.wav", *FAST, "--json"))
    assert sf.info(tmp_path / "out.wav").frames == RECEPTIVE_FIELD


# -- silence, NaN/Inf, DC, clipping ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["digital_silence", "hiss"])
def test_reference_without_speech(tmp_path: Path, content: str) -> None:
    ref = tmp_path / f"{content}.wav"
    rng = np.random.default_rng(0)
    signal = np.zeros(3 * SR) if content == "digital_silence" else 0.003 * rng.standard_normal(3 * SR)
    sf.write(ref, signal.astype(np.float32), SR, subtype="PCM_16")
    source = write_audio(tmp_path / "source.wav", 0.5)
    result = cli("convert", source, ref, "-o", tmp_path / "out.wav", *FAST[:-1])  # trimming on
    assert result.exit_code == AudioError.exit_code
    line = one_line(result)
    assert ref.name in line and "no speech" in line and "--no-trim" in line
    assert not (tmp_path / "out.wav").exists()
    json_summary(cli("convert", source, ref, "-o", tmp_path / "out.wav", *FAST, "--json"))  # --no-trim: works
    assert sf.info(tmp_path / "out.wav").frames == SR // 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_in_sources_and_references(tmp_path: Path, voice: Path, bad: float) -> None:
    data = tone(1.0)
    data[SR // 2] = bad
    path = tmp_path / "broken.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    result = cli("convert", path, voice, "-o", tmp_path / "out.wav", *FAST)
    assert result.exit_code == AudioError.exit_code
    assert "broken.wav" in one_line(result) and "NaN or infinite" in one_line(result)
    result = cli("convert", write_audio(tmp_path / "ok.wav", 0.5), path, "-o", tmp_path / "out.wav", *FAST)
    assert result.exit_code == AudioError.exit_code and "broken.wav" in one_line(result)
    assert not (tmp_path / "out.wav").exists()


def test_dc_offset_and_clipping_convert(tmp_path: Path, voice: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    t = np.arange(SR) / SR
    sf.write(src / "dc.wav", (tone(1.0)[:, 0] + 0.45).astype(np.float32), SR, subtype="PCM_16")
    square = np.clip(5 * np.sin(2 * np.pi * 200 * t), -1, 1)
    sf.write(src / "clipped.wav", square.astype(np.float32), SR, subtype="PCM_16")
    sf.write(src / "over_full_scale.wav", (4 * tone(1.0)[:, 0]).astype(np.float32), SR, subtype="FLOAT")
    sf.write(src / "full_dc.wav", np.ones(SR, dtype=np.float32), SR, subtype="FLOAT")
    summary = json_summary(cli("convert", src, voice, "-o", tmp_path / "out", *FAST, "--json"))
    assert summary["converted"] == 4 and summary["failed"] == 0
    for path in (tmp_path / "out").glob("*.wav"):  # beside them: the batch's knnvc-manifest.json
        wav, rate = sf.read(path, dtype="float32")
        assert rate == SR and len(wav) == SR and np.isfinite(wav).all()
        assert np.abs(wav).max() <= loudness.PEAK_CEILING + 1e-3


# -- subtypes, rates, channels --------------------------------------------------------------------------------


def _variants(folder: Path) -> dict[str, int]:
    """Write every subtype, rate and channel count; returns file name -> expected samples at 16 kHz."""
    expected: dict[str, int] = {}
    for fmt, subtype in SUBTYPES:
        if subtype not in sf.available_subtypes(fmt):
            continue
        name = f"subtype_{subtype}.{fmt.lower()}"
        sf.write(folder / name, tone(0.5, 22_050), 22_050, format=fmt, subtype=subtype)
        expected[name] = round(0.5 * SR)
    for rate in RATES:
        sf.write(folder / f"rate_{rate}.wav", tone(0.5, rate, 2), rate, subtype="PCM_24")
        expected[f"rate_{rate}.wav"] = round(round(0.5 * rate) * SR / rate)
    for channels in range(1, 9):
        sf.write(folder / f"channels_{channels}.flac", tone(0.5, 48_000, channels), 48_000, subtype="PCM_16")
        expected[f"channels_{channels}.flac"] = round(0.5 * SR)
    return expected


def test_every_subtype_rate_and_channel_count(tmp_path: Path, voice: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    expected = _variants(src)
    reference = tone(0.5)[:, 0]
    for name, samples in expected.items():
        wav = decode.load(src / name)
        assert wav.dtype == np.float32 and wav.shape == (samples,), name
        assert _corr(wav, reference) > 0.9, name  # the tones come through, whatever the container
    summary = json_summary(cli("convert", src, voice, "-o", tmp_path / "out", *FAST, "--json"))
    assert (summary["converted"], summary["failed"]) == (len(expected), 0)
    for name, samples in expected.items():
        assert sf.info(tmp_path / "out" / Path(name).with_suffix(".wav")).frames == samples


@pytest.mark.parametrize("channels", range(1, 9))
def test_downmix_is_the_channel_mean(tmp_path: Path, channels: int) -> None:
    data = tone(0.2, SR, channels) * np.linspace(1, -1, channels)[None, :].astype(np.float32)
    sf.write(tmp_path / "c.wav", data, SR, subtype="FLOAT")
    np.testing.assert_allclose(decode.load(tmp_path / "c.wav"), data.mean(axis=1), atol=1e-7)


def test_sample_rate_outside_the_accepted_range(tmp_path: Path) -> None:
    path = tmp_path / "odd.wav"
    sf.write(path, tone(0.5, 500), 500)  # a header this low is taken as corruption
    with pytest.raises(AudioError, match="500 Hz.*re-export"):
        decode.load(path)


# -- a 1-hour file --------------------------------------------------------------------------------------------


@pytest.mark.slow  # writes and decodes 635 MB of PCM
def test_one_hour_file_loads_in_bounded_memory(tmp_path: Path) -> None:
    """1 h of 44.1 kHz stereo (635 MB of PCM) decodes in blocks: peak memory ~ the 16 kHz output itself."""
    path, rate = tmp_path / "hour.wav", 44_100
    block = (tone(10.0, rate, 2) * 32767).astype(np.int16)
    with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as fh:
        for _ in range(360):
            fh.write(block)
    tracemalloc.start()
    try:
        wav = decode.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert wav.shape == (3600 * SR,) and np.isfinite(wav[::SR]).all()
    assert peak < 1.25 * wav.nbytes, f"peak {peak / 2**20:.0f} MiB for a {wav.nbytes / 2**20:.0f} MiB result"
    path.unlink()
