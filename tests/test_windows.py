"""Long audio: windowed encoding and vocoding agree with whole-file results, and memory stays flat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from knnvc.nn.matcher import knn_indices
from knnvc.options import ConvertOptions, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.runtime import windows
from knnvc.weights.formats import load_encoder, load_vocoder
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

SCRIPT = Path(__file__).parent / "scripts" / "long_convert.py"


@pytest.fixture(scope="module")
def models() -> tuple:
    return load_encoder(TINY_WAVLM), load_vocoder(TINY_VOCODER)


@pytest.mark.parametrize("total", [1, 50, 699, 700, 701, 3116, 10_000])
def test_split_covers_every_frame_once(total: int) -> None:
    cut = windows.split(total, core=500, context=100)
    kept = [f for w in cut for f in range(w.keep_start, w.keep_stop)]
    assert kept == list(range(total))
    for w in cut:
        assert 0 <= w.start <= w.keep_start < w.keep_stop <= w.stop <= total
        assert w.keep_start - w.start == min(100, w.keep_start)  # full context unless at the start
        assert w.stop - w.keep_stop == min(100, total - w.keep_stop)
    assert (len(cut) == 1) == (total <= 700)


def test_window_sample_span_gives_exactly_its_frames() -> None:
    from knnvc.nn.encoder import num_frames

    for w in windows.split(5000, core=1000, context=150):
        lo, hi = w.sample_span()
        assert num_frames(hi - lo) == w.stop - w.start


def long_source(repeats: int) -> np.ndarray:
    wav, _ = sf.read(SOURCE_WAV, dtype="float32")
    return np.tile(wav, repeats)


def test_windowed_vocoder_equals_whole(models: tuple) -> None:
    encoder, vocoder = models
    vc = KnnVC(encoder, vocoder, PipelineSettings("cpu", "fp32", batch_size=3))
    feats = vc.encode(long_source(8), sample_rate=16_000)  # 31 s: 3 windows of 10 s + context
    assert len(windows.split(feats.shape[0], windows.VOCODER_CORE, windows.VOCODER_CONTEXT)) == 4
    windowed = vc.vocode(feats)
    with torch.inference_mode():
        whole = vocoder(feats[None]).reshape(-1).numpy()
    assert windowed.shape == whole.shape
    assert np.abs(windowed - whole).max() < 1e-5


@pytest.mark.slow  # 62 s converted twice: 6-11 s on 2 cores
def test_windowed_conversion_agrees_with_whole_file(models: tuple) -> None:
    """62 s of speech in 10 s windows with 2 s context against one 62 s window."""
    encoder, vocoder = models
    whole = KnnVC(encoder, vocoder, PipelineSettings("cpu", "fp32", window_seconds=120))
    windowed = KnnVC(encoder, vocoder, PipelineSettings(
        "cpu", "fp32", window_seconds=10, context_seconds=2, batch_size=4)
    )
    source = long_source(16)
    f_whole = whole.encode(source, sample_rate=16_000)
    f_win = windowed.encode(source, sample_rate=16_000)
    assert f_win.shape == f_whole.shape == (3116, encoder.dim)
    frame_err = (f_whole - f_win).norm(dim=-1) / f_whole.norm(dim=-1)
    assert float(frame_err.max()) < 1e-2
    assert float(frame_err.mean()) < 3e-3
    voice = whole.build_voice(REF_DIR, trim=False)
    same = knn_indices(f_whole, voice.frames).sort(-1).values == knn_indices(f_win, voice.frames).sort(-1).values
    assert float(same.all(-1).float().mean()) > 0.95
    a = whole.convert(source, voice, ConvertOptions(loudness=None), sample_rate=16_000)
    b = windowed.convert(source, voice, ConvertOptions(loudness=None), sample_rate=16_000)
    assert a.shape == b.shape == source.shape
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2


def test_progress_reports_every_window(models: tuple) -> None:
    encoder, vocoder = models
    vc = KnnVC(encoder, vocoder, PipelineSettings("cpu", "fp32", window_seconds=5, context_seconds=1, batch_size=2))
    events: list[tuple[str, int, int | None]] = []
    options = ConvertOptions(trim=False)
    vc.convert(long_source(4), REF_DIR, options, sample_rate=16_000,
               progress=lambda e: events.append((e.stage, e.index, e.total)))  # fmt: skip
    assert events[0] == ("convert", 0, 1)
    encode = [e for e in events if e[0] == "encode"]
    vocode = [e for e in events if e[0] == "vocode"]
    assert encode[-1][1] == encode[-1][2] == 4  # 15.6 s in 5 s windows
    assert vocode[-1][1] == vocode[-1][2] == 2  # 779 frames: 10 s windows (500 frames) + 0.5 s context
    assert [e[1] for e in encode] == sorted(e[1] for e in encode)


def write_tone(path: Path, minutes: int) -> None:
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", 16_000, 1, "PCM_16") as fh:
        for m in range(minutes):
            t = np.arange(m * 960_000, (m + 1) * 960_000) / 16_000
            fh.write((0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32))


def peak_growth(tmp_path: Path, minutes: int) -> int:
    source, out = tmp_path / f"src{minutes}.wav", tmp_path / f"out{minutes}.wav"
    write_tone(source, minutes)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(source), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sf.info(str(out)).frames == minutes * 960_000  # converted in full, as long as the source
    return int(info["rss_peak"] - info["rss_before"])


@pytest.mark.slow
def test_one_hour_converts_on_cpu_in_flat_memory(tmp_path: Path) -> None:
    """Memory during a 1-hour conversion is the audio buffers themselves plus a constant working set.

    The models run in windows, so their working memory does not grow with the input; what grows is only the
    waveform held in memory (source and output, float32: 230 MB per copy for an hour) and the frames.
    """
    audio_bytes = 3600 * 16_000 * 4
    short, long = peak_growth(tmp_path, 6), peak_growth(tmp_path, 60)
    per_extra_copy = (long - short) / (audio_bytes * 0.9)
    assert per_extra_copy < 4.0, f"memory grew by {per_extra_copy:.1f} float32 copies of the extra audio"
    assert long < 4.0 * audio_bytes + 200 * 2**20
