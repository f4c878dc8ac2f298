"""The audio front end: decoding, conversion, trimming, loudness, atomic saving, folder listing."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyloudnorm as pyln
import pytest
import soundfile as sf
import soxr
import torch

from knnvc.audio import decode, loudness, vad, write
from knnvc.errors import AudioError, OutputError
from knnvc.options import SAMPLE_RATE
from tests.conftest import REF_DIR, SOURCE_WAV

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    wav, rate = sf.read(SOURCE_WAV, dtype="float32")
    assert rate == SR
    return wav


@pytest.fixture(scope="module")
def refs() -> list[np.ndarray]:
    return [sf.read(p, dtype="float32")[0] for p in sorted(REF_DIR.glob("*.wav"))]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def _round_trip(wav: np.ndarray, rate: int) -> np.ndarray:
    """What the fixture speech should look like after a trip through ``rate`` and back to 16 kHz."""
    if rate == SR:
        return wav
    return soxr.resample(soxr.resample(wav, SR, rate, quality="HQ"), rate, SR, quality="HQ")


# ---------------------------------------------------------------- load


def test_fixture_loads_bit_identical(speech: np.ndarray) -> None:
    out = decode.load(SOURCE_WAV)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, speech)
    for ref in sorted(REF_DIR.glob("*.wav")):
        np.testing.assert_array_equal(decode.load(ref), sf.read(ref, dtype="float32")[0])


@pytest.mark.parametrize(
    ("name", "rate", "channels", "fmt", "subtype"),
    [
        ("stereo.flac", 44_100, 2, "FLAC", "PCM_16"),
        ("pcm24.wav", 48_000, 1, "WAV", "PCM_24"),
        ("u8.wav", 16_000, 1, "WAV", "PCM_U8"),
        ("float.wav", 22_050, 1, "WAV", "FLOAT"),
        ("six.wav", 8_000, 6, "WAV", "PCM_16"),
        ("speech.ogg", 16_000, 1, "OGG", "VORBIS"),
        ("speech.mp3", 22_050, 1, "MP3", "MPEG_LAYER_III"),
        ("speech.aiff", 32_000, 2, "AIFF", "PCM_16"),
    ],
)
def test_formats_load_to_mono_16k(
    tmp_path: Path, speech: np.ndarray, name: str, rate: int, channels: int, fmt: str, subtype: str
) -> None:
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    resampled = soxr.resample(speech, SR, rate, quality="HQ")
    gains = np.linspace(1.0, 0.5, channels, dtype=np.float32)
    sf.write(tmp_path / name, resampled[:, None] * gains, rate, format=fmt, subtype=subtype)

    out = decode.load(tmp_path / name)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    assert abs(len(out) - len(speech)) <= 1
    assert _corr(out, _round_trip(speech, rate)) > 0.99
    # the downmix is the channel mean, so the level is the mean gain
    assert np.std(out) / np.std(speech) == pytest.approx(float(gains.mean()), rel=0.05)


def test_downmix_is_channel_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((1000, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, SR, subtype="FLOAT")
    np.testing.assert_allclose(decode.load(tmp_path / "s.wav"), stereo.mean(axis=1), atol=1e-7)


def test_load_to_another_rate(speech: np.ndarray) -> None:
    out = decode.load(SOURCE_WAV, sample_rate=24_000)
    assert len(out) == round(len(speech) * 1.5)


def test_truncated_wav_loads_what_is_there(tmp_path: Path) -> None:
    data = SOURCE_WAV.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    out = decode.load(tmp_path / "cut.wav")
    assert 0 < len(out) < sf.info(SOURCE_WAV).frames


def _write_case(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.wav"
    if case == "missing":
        return path
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not audio\n" * 20)
    elif case == "garbage_header":
        path.write_bytes(b"\x13" * 44 + SOURCE_WAV.read_bytes()[44:])
    elif case == "no_samples":
        sf.write(path, np.zeros(0, dtype=np.float32), SR)
    elif case in ("nan", "inf"):
        wav = np.zeros(1000, dtype=np.float32)
        wav[500] = np.nan if case == "nan" else np.inf
        sf.write(path, wav, SR, subtype="FLOAT")
    return path


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "no such file"),
        ("folder", "is a folder"),
        ("empty", "cannot decode"),
        ("text", "cannot decode"),
        ("garbage_header", "cannot decode"),
        ("no_samples", "no audio samples"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
    ],
)
def test_load_errors_name_the_file(tmp_path: Path, case: str, words: str) -> None:
    path = _write_case(tmp_path, case)
    with pytest.raises(AudioError) as info:
        decode.load(path)
    message = str(info.value)
    assert path.name in message and words in message and "\n" not in message
    assert ";" in message  # every message says what to do after the semicolon


def test_duration_seconds(speech: np.ndarray, tmp_path: Path) -> None:
    assert decode.duration_seconds(SOURCE_WAV) == pytest.approx(len(speech) / SR)
    with pytest.raises(AudioError):
        decode.duration_seconds(tmp_path / "missing.wav")


def test_extensions() -> None:
    assert {".wav", ".flac", ".ogg", ".oga"} <= decode.AUDIO_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in decode.AUDIO_EXTENSIONS)
    if "MP3" in sf.available_formats():
        assert ".mp3" in decode.AUDIO_EXTENSIONS


# ---------------------------------------------------------------- to_mono_16k


def test_to_mono_16k_identity(speech: np.ndarray) -> None:
    out = decode.to_mono_16k(speech, SR)
    np.testing.assert_array_equal(out, speech)
    np.testing.assert_array_equal(decode.to_mono_16k(torch.from_numpy(speech), SR), speech)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_to_mono_16k_layouts(speech: np.ndarray, layout: str, kind: str) -> None:
    stereo = np.stack([speech, 0.5 * speech])  # (2, N)
    if layout == "channels_last":
        stereo = stereo.T
    data = torch.from_numpy(np.ascontiguousarray(stereo)) if kind == "torch" else stereo
    out = decode.to_mono_16k(data, SR)
    np.testing.assert_allclose(out, 0.75 * speech, atol=1e-7)


def test_to_mono_16k_resamples_and_converts(speech: np.ndarray) -> None:
    at_48k = soxr.resample(speech, SR, 48_000)
    out = decode.to_mono_16k(at_48k.astype(np.float64), 48_000)
    assert out.dtype == np.float32 and abs(len(out) - len(speech)) <= 1
    assert _corr(out, speech) > 0.999
    pcm = np.round(speech * 32767).astype(np.int16)
    np.testing.assert_allclose(decode.to_mono_16k(pcm, SR), speech, atol=1 / 16384)
    half = decode.to_mono_16k(torch.from_numpy(speech).to(torch.bfloat16)[None, None], SR)
    assert _corr(half, speech) > 0.999


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (np.zeros(0, dtype=np.float32), "no samples"),
        (np.zeros((2, 0), dtype=np.float32), "no samples"),
        (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
        (np.zeros((10, 20), dtype=np.float32), "cannot tell channels"),
        (np.zeros((2, 3, 4), dtype=np.float32), "shape"),
        (np.zeros(10, dtype=bool), "float or integer"),
    ],
)
def test_to_mono_16k_errors(data: np.ndarray, words: str) -> None:
    with pytest.raises(AudioError, match=words):
        decode.to_mono_16k(data, SR)


def test_to_mono_16k_needs_a_rate() -> None:
    with pytest.raises(AudioError, match="sample rate"):
        decode.to_mono_16k(np.zeros(100, dtype=np.float32), 0)


# ---------------------------------------------------------------- trim_silence


def _pad(wav: np.ndarray, seconds: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    lead, tail = (rng.standard_normal((2, n)) * noise).astype(np.float32)
    return np.concatenate([lead, wav, tail])


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_trim_keeps_the_speech(refs: list[np.ndarray], noise: float) -> None:
    for wav in refs:
        padded = _pad(wav, 1.0, noise)
        trimmed = vad.trim_silence(padded)
        assert trimmed.dtype == np.float32 and trimmed.ndim == 1
        assert len(trimmed) < len(padded) - 1.5 * SR
        assert abs(len(trimmed) - len(wav)) <= 0.15 * SR
        assert np.sum(trimmed.astype(np.float64) ** 2) >= 0.999 * np.sum(wav.astype(np.float64) ** 2)


def test_trim_keeps_middle_silence(refs: list[np.ndarray]) -> None:
    gap = np.zeros(SR, dtype=np.float32)
    joined = np.concatenate([refs[0], gap, refs[1]])
    trimmed = vad.trim_silence(_pad(joined, 1.0))
    assert len(trimmed) >= len(joined) - 0.3 * SR
    zero = np.concatenate([[0], (trimmed == 0).astype(np.int8), [0]])
    runs = np.diff(np.flatnonzero(np.diff(zero)))[::2]  # lengths of the runs of exact zeros
    assert runs.max() >= SR


@pytest.mark.parametrize("noise", [0.0, 0.001, 0.01, 0.1])
def test_no_speech_trims_to_empty(noise: float) -> None:
    rng = np.random.default_rng(1)
    wav = (rng.standard_normal(2 * SR) * noise).astype(np.float32)
    out = vad.trim_silence(wav)
    assert out.shape == (0,) and out.dtype == np.float32
    assert vad.trim_silence(np.zeros(0, dtype=np.float32)).shape == (0,)


def test_trim_at_another_rate(refs: list[np.ndarray]) -> None:
    padded = _pad(refs[0], 1.0)
    at_16k = vad.trim_silence(padded)
    at_48k = vad.trim_silence(soxr.resample(padded, SR, 48_000), 48_000)
    assert abs(len(at_48k) / 3 - len(at_16k)) <= 0.05 * SR


def test_trim_is_deterministic_and_thread_safe(refs: list[np.ndarray]) -> None:
    inputs = [_pad(w, 0.5 + 0.25 * i, 0.003, seed=i) for i, w in enumerate(refs)] * 2
    serial = [vad.trim_silence(w) for w in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(vad.trim_silence, inputs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_silero_import_keeps_torch_thread_count() -> None:
    code = (
        "import numpy as np, torch; torch.set_num_threads(3);"
        "from knnvc.audio.vad import trim_silence; trim_silence(np.zeros(16000, dtype=np.float32));"
        "print(torch.get_num_threads())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "3"


# ---------------------------------------------------------------- loudness


def _lufs(wav: np.ndarray) -> float:
    return float(pyln.Meter(SR).integrated_loudness(wav.astype(np.float64)))


def test_loudness_reaches_target() -> None:
    rng = np.random.default_rng(2)
    noise = (rng.standard_normal(3 * SR) * 0.01).astype(np.float32)
    out = loudness.normalise_loudness(noise, -16.0)
    assert out.dtype == np.float32
    assert _lufs(out) == pytest.approx(-16.0, abs=0.5)


def test_loudness_on_speech(speech: np.ndarray) -> None:
    out = loudness.normalise_loudness(speech, -23.0)
    assert _lufs(out) == pytest.approx(-23.0, abs=0.5)
    # espeak's crest factor is high: at -16 LUFS its peaks would pass the ceiling; the true-peak limiter holds
    # them under it and the loudness still reaches the target (a plain peak guard left it about 2 LU short).
    limited = loudness.normalise_loudness(speech, -16.0)
    assert _lufs(limited) == pytest.approx(-16.0, abs=0.5)
    assert np.max(np.abs(limited)) <= loudness.PEAK_CEILING + 1e-6
    assert loudness.true_peak_envelope(limited).max() <= loudness.PEAK_CEILING * 1.001  # 4x oversampled peak


def test_limiter_leaves_quiet_passages_alone(speech: np.ndarray) -> None:
    gains = loudness.limit_true_peak(speech * 2.0)  # peaks at about +4.7 dBTP
    assert gains.max() <= 1.0 and gains.min() < 0.7
    assert np.mean(gains == 1.0) > 0.5  # only around the peaks: most of the signal keeps its gain
    assert np.all(np.abs(np.diff(gains)) < 0.05)  # smooth: no sample-to-sample gain steps (no clicks)


def test_dc_offset_does_not_stop_the_target() -> None:
    """A signal riding on DC (as the tiny test vocoder's output) reaches the target: DC is removed first."""
    rng = np.random.default_rng(3)
    wav = (0.15 + 0.01 * rng.standard_normal(3 * SR)).astype(np.float32)
    out = loudness.normalise_loudness(wav, -16.0)
    assert _lufs(out) == pytest.approx(-16.0, abs=0.5) and abs(float(out.mean())) < 1e-3


def test_unreachable_target_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    t = np.arange(2 * SR) / SR
    square = np.clip(4 * np.sin(2 * np.pi * 220 * t), -1, 1).astype(np.float32)  # all peak: limiting cannot help
    with caplog.at_level("WARNING", logger="knnvc"):
        out = loudness.normalise_loudness(square, 0.0)
    assert _lufs(out) < -1.0 and "not the 0.0 LUFS asked" in caplog.text and "peak limiting" in caplog.text


def test_loud_clipped_signal_respects_the_ceiling() -> None:
    t = np.arange(2 * SR) / SR
    square = np.clip(4 * np.sin(2 * np.pi * 220 * t), -1, 1).astype(np.float32)
    out = loudness.normalise_loudness(square, 0.0)
    assert np.max(np.abs(out)) <= loudness.PEAK_CEILING + 1e-6
    assert np.all(np.isfinite(out))


def test_silence_and_none_are_unchanged() -> None:
    silence = np.zeros(SR, dtype=np.float32)
    assert np.array_equal(loudness.normalise_loudness(silence), silence)
    wav = np.full(SR, 0.1, dtype=np.float32)  # all DC: any processing would remove it
    kept = loudness.normalise_loudness(wav, None)
    assert kept.dtype == np.float32 and np.array_equal(kept, wav) and np.array_equal(wav, np.full(SR, 0.1, np.float32))
    empty = np.zeros(0, dtype=np.float32)
    assert loudness.normalise_loudness(empty).shape == (0,)


@pytest.mark.parametrize("n", [1, 100, 3000, 6400])
def test_short_audio_does_not_crash(n: int) -> None:
    t = np.arange(n) / SR
    wav = (0.05 * np.sin(2 * np.pi * 440 * t) + 0.01).astype(np.float32)
    out = loudness.normalise_loudness(wav)
    assert out.shape == (n,) and np.all(np.isfinite(out))
    assert np.max(np.abs(out)) <= loudness.PEAK_CEILING + 1e-6


def test_loudness_rejects_nan() -> None:
    with pytest.raises(AudioError):
        loudness.normalise_loudness(np.array([0.1, np.nan] * 5000, dtype=np.float32))


# ---------------------------------------------------------------- save


@pytest.mark.parametrize(
    ("name", "subtype", "tolerance"),
    [("out.wav", "PCM_16", 1 / 32768), ("out.flac", "PCM_24", 1 / 2**23), ("out.ogg", "VORBIS", None)],
)
def test_save_round_trip(
    tmp_path: Path, speech: np.ndarray, name: str, subtype: str, tolerance: float | None
) -> None:
    path = write.save(tmp_path / "new" / "folder" / name, speech)
    assert path == tmp_path / "new" / "folder" / name
    assert sf.info(path).subtype == subtype and sf.info(path).samplerate == SR
    back = decode.load(path)
    assert abs(len(back) - len(speech)) <= 1
    if tolerance is None:
        assert _corr(back, speech) > 0.99
    else:
        np.testing.assert_allclose(back, speech, atol=tolerance)
    assert [p.name for p in path.parent.iterdir()] == [name]


def test_save_resamples(tmp_path: Path, speech: np.ndarray) -> None:
    path = write.save(tmp_path / "out.wav", speech, sample_rate=24_000)
    data, rate = sf.read(path, dtype="float32")
    assert rate == 24_000 and len(data) == round(len(speech) * 1.5)
    assert _corr(soxr.resample(data, 24_000, SR), speech) > 0.999
    path = write.save(tmp_path / "back.wav", data, source_rate=24_000)
    assert abs(sf.info(path).frames - len(speech)) <= 1


def test_save_clips(tmp_path: Path) -> None:
    wav = np.array([0.0, 1.5, -2.0, 0.5], dtype=np.float32)
    back, _ = sf.read(write.save(tmp_path / "c.wav", wav), dtype="float32")
    np.testing.assert_allclose(back, [0.0, 1.0, -1.0, 0.5], atol=1 / 32768)


def test_save_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "o.wav"
    write.save(path, np.zeros(100, dtype=np.float32))
    write.save(path, np.full(200, 0.25, dtype=np.float32))
    assert sf.info(path).frames == 200


@pytest.mark.parametrize("where", ["encode", "fsync"])
def test_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    path = tmp_path / "out.wav"
    old = np.full(50, 0.5, dtype=np.float32)
    write.save(path, old)

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sf if where == "encode" else os, "write" if where == "encode" else "fsync", no_space)
    with pytest.raises(OutputError, match="disk is full") as info:
        write.save(path, np.zeros(1000, dtype=np.float32))
    monkeypatch.undo()
    assert str(path) in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temporary file left
    np.testing.assert_allclose(sf.read(path, dtype="float32")[0], old, atol=1e-4)  # old file intact


def test_rename_failure_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(OutputError, match="permission denied"):
        write.save(tmp_path / "out.wav", np.zeros(10, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user (root) whom chmod does not stop from writing")
        with pytest.raises(OutputError, match="permission denied") as info:
            write.save(folder / "out.wav", np.zeros(10, dtype=np.float32))
        assert "out.wav" in str(info.value)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize(
    ("name", "words"), [("out.mp3", ".wav, .flac, .ogg"), ("out", "unsupported"), ("dir.wav", "folder")]
)
def test_save_errors(tmp_path: Path, name: str, words: str) -> None:
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(OutputError, match=words):
        write.save(tmp_path / name, np.zeros(10, dtype=np.float32))
    with pytest.raises(OutputError, match="finite"):
        write.save(tmp_path / "nan.wav", np.array([np.nan], dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["dir.wav"]


# ---------------------------------------------------------------- audio_files


def test_audio_files(tmp_path: Path) -> None:
    wav = np.zeros(160, dtype=np.float32)
    for rel in [
        "b.wav",
        "a/z.FLAC",
        "a/deep/er/y.ogg",
        "c.Wav",
        ".hidden.wav",
        ".cache/x.wav",
        "a/.out.wav.1234.tmp",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / rel, wav, SR, format="WAV")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "folder.wav").mkdir()
    found = decode.audio_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/deep/er/y.ogg",
        "a/z.FLAC",
        "b.wav",
        "c.Wav",
    ]
    assert decode.audio_files(tmp_path / "a" / "deep") == [tmp_path / "a/deep/er/y.ogg"]
    with pytest.raises(AudioError):
        decode.audio_files(tmp_path / "missing")


# ---------------------------------------------------------------- formats FFmpeg decodes (PyAV)

AV_FORMATS = {  # extension: (PyAV container format, codec)
    ".m4a": ("ipod", "aac"),
    ".aac": ("adts", "aac"),
    ".mp4": ("mp4", "aac"),
    ".webm": ("webm", "libopus"),
    ".opus": ("ogg", "libopus"),
}


def _encode_with_pyav(path: Path, seconds: float = 1.0, rate: int = 48_000) -> np.ndarray:
    """A 440 Hz stereo tone encoded by PyAV's own FFmpeg into ``path``; returns the mono tone at 16 kHz."""
    import av

    fmt, codec = AV_FORMATS[path.suffix]
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        for start in range(0, len(tone), 960):
            frame = av.AudioFrame.from_ndarray(np.tile(tone[start : start + 960], (2, 1)), format="fltp",
                                               layout="stereo")
            frame.rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return soxr.resample(tone, rate, SR)


@pytest.mark.parametrize("ext", sorted(AV_FORMATS))
def test_formats_people_have_are_decoded(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"tone{ext}"
    expected = _encode_with_pyav(path)
    wav = decode.load(path)
    assert wav.dtype == np.float32 and abs(len(wav) - len(expected)) < 0.05 * SR  # codec delay/padding only
    spectrum = np.abs(np.fft.rfft(wav[SR // 10 : SR // 10 + 8000]))
    assert np.argmax(spectrum) * SR / 8000 == pytest.approx(440, abs=4)  # the tone, not noise
    assert 0.4 < float(np.abs(wav).max()) < 0.6
    assert decode.duration_seconds(path) == pytest.approx(1.0, abs=0.05) and decode.native_rate(path) == 48_000
    assert path in decode.audio_files(tmp_path)  # a folder does not skip it


def test_undecodable_format_is_unsupported_not_damaged(tmp_path: Path) -> None:
    fake = tmp_path / "voice.m4a"
    fake.write_bytes(b"\x00\x01 not an mp4 container " * 50)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    for path in (fake, text):
        with pytest.raises(AudioError, match="unsupported format") as info:
            decode.load(path)
        assert "damaged" not in str(info.value) and str(path) in str(info.value)
    assert fake in decode.audio_files(tmp_path)  # listed, so a batch reports it instead of skipping it
