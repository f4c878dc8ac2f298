"""``knnvc.convert`` for one-off use (paths, arrays, tensors, saved voices), its model cache, and the Python
route to every CLI command (voices, batches, info, download)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import knnvc
from knnvc import progress
from knnvc.batch import plan, runner
from knnvc.errors import DeviceError, UsageError, WeightsError
from knnvc.options import ConvertOptions, Models, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.voice import Voice
from knnvc.weights import loaded
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

TINY: dict[str, Any] = {"models": Models(str(TINY_WAVLM), str(TINY_VOCODER)), "device": "cpu"}
REFS = sorted(REF_DIR.glob("*.wav"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def vc() -> KnnVC:
    return KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")


@pytest.fixture(scope="module")
def expected(vc: KnnVC) -> np.ndarray:
    """The pipeline object used directly: references untrimmed, default k and loudness."""
    return vc.convert(SOURCE_WAV, vc.build_voice(REF_DIR, trim=False))


def test_import_is_light_and_names_load_on_first_use() -> None:
    """``import knnvc`` imports no torch; ``knnvc.convert``, ``knnvc.KnnVC`` and ``knnvc.Voice`` load on first use
    (``test_paths``: ``knnvc.convert`` converts as the pipeline does); any other name is an AttributeError."""
    probe = """
import inspect, json, sys
import knnvc
light = 'torch' not in sys.modules and 'knnvc.pipeline' not in sys.modules
names = {
    'convert': list(inspect.signature(knnvc.convert).parameters)[:2],
    'KnnVC': callable(knnvc.KnnVC.from_pretrained),
    'Voice': callable(knnvc.Voice.load),
}
try:
    knnvc.nonsense
except AttributeError as exc:
    names['nonsense'] = str(exc)
print(json.dumps({'light': light, 'loaded': 'knnvc.pipeline' in sys.modules, **names}))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "light": True, "loaded": True, "convert": ["source", "reference"], "KnnVC": True, "Voice": True,
        "nonsense": "module 'knnvc' has no attribute 'nonsense'",
    }  # fmt: skip


def test_paths(expected: np.ndarray) -> None:
    assert np.array_equal(knnvc.convert(SOURCE_WAV, REF_DIR, trim=False, **TINY), expected)
    refs = [str(p) for p in REFS]
    assert np.array_equal(knnvc.convert(str(SOURCE_WAV), refs, trim=False, **TINY), expected)


def test_same_as_a_fresh_pipeline(expected: np.ndarray) -> None:
    fresh = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")
    # Not bit-exact: CPU kernels chosen under another thread count can differ in the last bit.
    assert np.allclose(fresh.convert(SOURCE_WAV, fresh.build_voice(REF_DIR, trim=False)), expected, rtol=0, atol=1e-5)


def test_documented_return_types(vc: KnnVC, expected: np.ndarray) -> None:
    """The rule in ``KnnVC``'s docstring and the Python API guide: features are torch tensors on the pipeline's
    device (``encode``, ``match``), audio is numpy on the host (``load_audio``, ``vocode``, ``convert``)."""
    voice = vc.build_voice(REF_DIR, trim=False)
    width = voice.frames.shape[1]  # 1024 for WavLM-Large; the tiny test model is narrower
    features = vc.encode(SOURCE_WAV)
    assert isinstance(features, torch.Tensor) and features.dtype == torch.float32 and features.device == vc.device
    assert features.ndim == 2 and features.shape[1] == width
    matched = vc.match(features, voice, ConvertOptions(k=4))
    assert isinstance(matched, torch.Tensor) and matched.dtype == torch.float32 and matched.device == vc.device
    assert matched.shape == features.shape
    audio = vc.vocode(matched)
    hop = vc.sample_rate // 50
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.shape == (len(features) * hop,)
    source = vc.load_audio(SOURCE_WAV)
    assert isinstance(source, np.ndarray) and source.dtype == np.float32 and source.ndim == 1
    wav = vc.convert(SOURCE_WAV, voice)
    assert isinstance(wav, np.ndarray) and wav.dtype == np.float32 and wav.shape == source.shape
    assert np.array_equal(wav, expected)
    one_call = knnvc.convert(SOURCE_WAV, REF_DIR, trim=False, **TINY)
    assert isinstance(one_call, np.ndarray) and one_call.dtype == np.float32 and one_call.ndim == 1


def test_arrays_and_tensors(tmp_path: Path, expected: np.ndarray) -> None:
    pcm, rate = sf.read(SOURCE_WAV, dtype="int16")
    assert np.array_equal(knnvc.convert(pcm, REF_DIR, sample_rate=rate, trim=False, **TINY), expected)
    mono = soxr.resample(pcm.astype(np.float32) / 32768, rate, 44_100).astype(np.float32)
    stereo = np.stack([mono, 0.25 * mono], axis=1)  # (N, 2) at 44.1 kHz
    sf.write(tmp_path / "stereo.wav", stereo, 44_100, subtype="FLOAT")
    from_file = knnvc.convert(tmp_path / "stereo.wav", REF_DIR, trim=False, **TINY)
    from_array = knnvc.convert(stereo, REF_DIR, sample_rate=44_100, trim=False, **TINY)
    from_tensor = knnvc.convert(torch.from_numpy(stereo.T.copy()), REF_DIR, sample_rate=44_100, trim=False, **TINY)
    assert np.array_equal(from_array, from_file) and np.array_equal(from_tensor, from_file)
    refs = [sf.read(p, dtype="float32")[0] for p in REFS]
    for reference in (refs, [torch.from_numpy(r) for r in refs]):
        wav = knnvc.convert(SOURCE_WAV, reference, reference_sample_rate=16_000, trim=False, **TINY)
        assert np.array_equal(wav, expected)


def test_in_memory_audio_needs_its_rate() -> None:
    with pytest.raises(UsageError, match="sample_rate"):
        knnvc.convert(np.zeros(16_000, np.float32), REF_DIR, **TINY)
    with pytest.raises(UsageError, match="sample_rate"):
        knnvc.convert(SOURCE_WAV, [np.zeros(16_000, np.float32)], trim=False, **TINY)


def test_output_file_and_rate(tmp_path: Path, expected: np.ndarray) -> None:
    out = tmp_path / "deep" / "out.flac"
    wav = knnvc.convert(SOURCE_WAV, REF_DIR, output=out, output_sample_rate=24_000, trim=False, **TINY)
    assert len(wav) == round(len(expected) * 1.5)
    written, rate = sf.read(out, dtype="float32")
    assert rate == 24_000 and len(written) == len(wav)
    assert np.abs(written - np.clip(wav, -1, 1)).max() < 1e-6  # 24-bit FLAC
    with pytest.raises(UsageError, match="output files end in"):
        knnvc.convert(SOURCE_WAV, REF_DIR, output=tmp_path / "out.mp3", **TINY)


def test_saved_voice(tmp_path: Path, expected: np.ndarray) -> None:
    builder = KnnVC.from_pretrained(Models(TINY_WAVLM), device="cpu")
    voice = builder.build_voice(REF_DIR, trim=False, name="alice")
    path = voice.save(tmp_path / "alice.voice")
    assert np.array_equal(knnvc.convert(SOURCE_WAV, path, **TINY), expected)
    assert np.array_equal(knnvc.convert(SOURCE_WAV, Voice.load(path), **TINY), expected)
    assert Voice.load(path).metadata()["name"] == "alice"


def test_options_and_progress(vc: KnnVC, expected: np.ndarray) -> None:
    events: list[tuple[str, int, int | None]] = []
    wav = knnvc.convert(SOURCE_WAV, REF_DIR, trim=False, progress=lambda e: events.append((e.stage, e.index, e.total)),
                        **TINY)  # fmt: skip
    assert np.array_equal(wav, expected) and ("vocode", 1, 1) in events
    raw = knnvc.convert(SOURCE_WAV, REF_DIR, trim=False, loudness=None, k=2, **TINY)
    voice = vc.build_voice(REF_DIR, trim=False)
    assert np.array_equal(raw, vc.convert(SOURCE_WAV, voice, ConvertOptions(loudness=None, k=2)))
    with pytest.raises(UsageError, match="k must be at least 1"):
        knnvc.convert(SOURCE_WAV, REF_DIR, k=0, **TINY)
    with pytest.raises(UsageError, match="sample rate"):
        knnvc.convert(SOURCE_WAV, REF_DIR, output_sample_rate=100, **TINY)
    fp16 = Models(str(TINY_WAVLM), str(TINY_VOCODER), PipelineSettings("cpu", "fp16"))
    with pytest.raises(UsageError, match="needs a GPU"):
        knnvc.convert(SOURCE_WAV, REF_DIR, models=fp16)
    with pytest.raises(UsageError, match="batch size"):
        PipelineSettings(batch_size=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_absent_device() -> None:
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        knnvc.convert(SOURCE_WAV, REF_DIR, models=TINY["models"], device="cuda")


def junk_in_place(path: Path) -> None:
    """Overwrite ``path`` with zeros of the same size, keeping its modification time: the file looks unchanged
    (to a cache keyed by path, size and time), but anything that reads it now fails."""
    stat = path.stat()
    path.write_bytes(bytes(stat.st_size))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines asking for the same weights (a local file by path and modification time), device and precision
    share the models loaded once: later ones convert the same without reading the files again. An edited
    checkpoint is loaded again, and ``clear_cache`` forgets every model."""
    monkeypatch.setenv("KNNVC_CACHE", str(tmp_path / "cache"))  # the converted copies on disk, removed below
    wavlm, vocoder = tmp_path / "WavLM-tiny.pt", tmp_path / "vocoder.pt"
    shutil.copy(TINY_WAVLM, wavlm)
    shutil.copy(TINY_VOCODER, vocoder)
    shutil.copy(TINY_VOCODER.parent / "config.json", tmp_path / "config.json")
    first = KnnVC.from_pretrained(Models(wavlm, vocoder), device="cpu")
    voice = first.build_voice(REF_DIR, trim=False)
    expected, features = first.convert(SOURCE_WAV, voice), first.encode(SOURCE_WAV)
    junk_in_place(wavlm)
    junk_in_place(vocoder)
    shutil.rmtree(tmp_path / "cache")
    again = KnnVC.from_pretrained(Models(wavlm, vocoder, PipelineSettings("cpu", batch_size=2)))
    assert again.batch_size == 2 and np.array_equal(again.convert(SOURCE_WAV, voice), expected)  # its own settings
    encoder_only = KnnVC.from_pretrained(Models(wavlm), device="cpu")  # another vocoder named: the same encoder
    assert torch.equal(encoder_only.encode(SOURCE_WAV), features)
    assert not list(tmp_path.glob("cache/**/*.safetensors"))  # nothing was read, so nothing was converted again

    os.utime(vocoder, ns=(0, 1))  # edited: read again (the junk fails to load)...
    with pytest.raises(WeightsError):
        KnnVC.from_pretrained(Models(wavlm, vocoder), device="cpu").convert(SOURCE_WAV, voice)
    checkpoint = torch.load(TINY_VOCODER, map_location="cpu", weights_only=True)
    checkpoint["generator"]["conv_pre.bias"] += 0.5
    torch.save(checkpoint, vocoder)  # ...and other weights give other audio
    edited = KnnVC.from_pretrained(Models(wavlm, vocoder), device="cpu").convert(SOURCE_WAV, voice)
    assert edited.shape == expected.shape and not np.allclose(edited, expected, atol=1e-3)

    loaded.clear_cache()  # forgotten: the (junk) WavLM file is read again
    with pytest.raises(WeightsError):
        KnnVC.from_pretrained(Models(wavlm, vocoder), device="cpu")


def test_folder_batch_from_python(tmp_path: Path, vc: KnnVC) -> None:
    """What `knnvc convert FOLDER REF -o OUT` does, step by step."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(SOURCE_WAV, src / "one.wav")
    shutil.copy(REFS[0], src / "sub" / "two.wav")
    voice = vc.build_voice(REF_DIR, trim=False)
    jobs = plan.plan(src, tmp_path / "out", voice.name, extension="flac")
    assert [j.output.relative_to(tmp_path / "out").as_posix() for j in jobs] == ["one.flac", "sub/two.flac"]
    events: list[progress.Progress] = []
    report = runner.run(vc, jobs, voice, ConvertOptions(k=4), progress=events.append)
    assert report.ok and len(report.converted) == 2 and report.audio_seconds > 6
    # Files are converted in groups (batched encoding): each file starts before it is done.
    files = [e for e in events if e.stage in ("start", "done", "skip", "fail")]
    for index in (0, 1):
        assert [e.stage for e in files if e.index == index] == ["start", "done"]
    windows = [(e.stage, e.index, e.total, e.job) for e in events if e.stage in ("encode", "vocode")]
    assert ("vocode", 2, 2, None) in windows  # the windows of both files, batched together
    assert report.summary()["realtime_factor"] == pytest.approx(report.wall_seconds / report.audio_seconds, rel=1e-2)
    assert plan.pending(jobs) == [] and len(plan.pending(jobs, overwrite=True)) == 2
    assert runner.run(vc, jobs, voice).summary()["skipped"] == 2


def test_info_and_download_from_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from knnvc.cli.sysinfo import system_info
    from knnvc.weights import hub

    monkeypatch.setenv("KNNVC_CACHE", str(tmp_path))
    data = system_info("cpu")
    assert data["device"] == "cpu" and data["knnvc_cache"] == str(tmp_path) and data["weights"]
    assert callable(hub.download_all)


def test_python_never_writes_over_an_input(tmp_path: Path, vc: KnnVC) -> None:
    """``knnvc.convert(output=)`` and ``KnnVC.convert_file`` refuse an output that is the source or a reference
    (by path, symlink or hard link) before computing anything; the input keeps its bytes."""
    refs = tmp_path / "bob"
    shutil.copytree(REF_DIR, refs)
    source = tmp_path / "source.wav"
    shutil.copy(SOURCE_WAV, source)
    (tmp_path / "link.wav").symlink_to(refs / "ref_01.wav")
    os.link(source, tmp_path / "hard.wav")
    before = {p: p.read_bytes() for p in [source, *refs.iterdir()]}
    with pytest.raises(UsageError, match="would replace the reference"):
        knnvc.convert(source, refs, output=refs / "ref_01.wav", **TINY)
    with pytest.raises(UsageError, match="would replace the reference"):
        knnvc.convert(source, [refs / "ref_01.wav"], output=tmp_path / "link.wav", **TINY)
    with pytest.raises(UsageError, match="would replace the source"):
        vc.convert_file(source, refs, tmp_path / "hard.wav")
    assert {p: p.read_bytes() for p in before} == before
    vc.convert_file(source, refs, tmp_path / "out.wav")  # any other output is written
    assert sf.info(str(tmp_path / "out.wav")).frames > 0
