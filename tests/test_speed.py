"""The fast path keeps every result: cross-file batching, precision choices and islands, callers' modules, caches."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from knnvc.errors import UsageError, WeightsError
from knnvc.options import ConvertOptions, Models, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.runtime import devices, oom, windows
from knnvc.weights.formats import load_encoder, load_vocoder
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM
from vocoder import Generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RAW = ConvertOptions(loudness=None, trim=False)


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return load_encoder(TINY_WAVLM), load_vocoder(TINY_VOCODER)


def clips() -> list[np.ndarray]:
    """Seven sources: equal lengths, near-equal, far apart, and one longer than the 4 s test window."""
    wav, _ = sf.read(SOURCE_WAV, dtype="float32")
    long = np.tile(wav, 3)  # 11.7 s: three encoder windows and two vocoder windows at the test sizes
    return [wav, wav[::-1].copy(), wav[:40_000], wav[:39_680], wav[5_000:20_000], long, wav[:1_000]]


def test_cross_file_batching_equals_each_file_alone(tiny: tuple) -> None:
    encoder, vocoder = tiny
    vc = KnnVC(encoder, vocoder, PipelineSettings("cpu", "fp32", batch_size=4, window_seconds=4, context_seconds=1))
    vc.slack = 1.0  # pad anything with anything: the hardest case for the masks
    voice = vc.build_voice(REF_DIR, trim=False)
    sources = clips()
    together = vc.convert_batch(sources, voice, RAW)
    for wav, out in zip(sources, together, strict=True):
        alone = vc.convert_batch([wav], voice, RAW)[0]
        assert out.shape == alone.shape == (len(wav),)
        assert np.abs(out - alone).max() < 1e-5


def test_padded_vocoder_batch_equals_each_item_alone(tiny: tuple) -> None:
    _, vocoder = tiny
    torch.manual_seed(0)
    feats = [torch.randn(n, vocoder.config.input_dim) for n in (37, 12, 50, 3)]
    batch = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    with torch.inference_mode():
        out = vocoder(batch, torch.tensor([f.shape[0] for f in feats])).squeeze(1)
        for i, f in enumerate(feats):
            alone = vocoder(f[None]).reshape(-1)
            torch.testing.assert_close(out[i, : alone.numel()], alone, rtol=0, atol=1e-5)


def test_buckets_keep_lengths_close_and_batches_bounded() -> None:
    lengths = [100, 99, 50, 100, 98, 10, 51, 100]
    groups = windows.buckets(lengths, batch_size=3, slack=0.02)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) <= 3 and min(lengths[i] for i in g) >= 0.98 * max(lengths[i] for i in g)
    assert windows.buckets([5, 5, 5], batch_size=8, slack=0.0) == [[0, 1, 2]]


def _snapshot(module: torch.nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "dtypes": {k: v.dtype for k, v in module.state_dict().items()},
        "training": [m.training for m in module.modules()],
    }


def _same(module: torch.nn.Module, before: dict) -> bool:
    after = _snapshot(module)
    return (
        after["dtypes"] == before["dtypes"]
        and after["training"] == before["training"]
        and all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_callers_modules_are_never_changed(precision: str) -> None:
    if precision == "bf16" and not devices.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    encoder, vocoder = load_encoder(TINY_WAVLM), load_vocoder(TINY_VOCODER)
    vocoder.train()  # a caller's module in training mode must stay so
    before = _snapshot(encoder), _snapshot(vocoder)
    vc = KnnVC(encoder, vocoder, PipelineSettings("cpu", precision))
    out = vc.convert(SOURCE_WAV, REF_DIR, RAW)
    assert np.isfinite(out).all()
    assert _same(encoder, before[0]) and _same(vocoder, before[1])
    assert not vc.vocoder.training and vocoder.training  # the pipeline runs an eval-mode copy


def test_ready_modules_are_shared_not_copied(tiny: tuple) -> None:
    """A module that already runs as asked (eval mode, on the device, in the precision) is used as given: its
    owner's in-place edits show in the pipeline's output. One that must change is copied: the owner's stays as it
    was, and its later edits do not reach the pipeline."""
    encoder, vocoder = copy.deepcopy(tiny[0]).eval(), copy.deepcopy(tiny[1]).eval()
    fast = copy.deepcopy(vocoder).channels_last()
    vc = KnnVC(encoder, fast, PipelineSettings("cpu", "fp32"))
    # A 1-D vocoder on a CPU runs as channels-last 2-D convolutions: on a copy, the caller's stays as it was.
    plain = KnnVC(encoder, vocoder, PipelineSettings("cpu", "fp32"))
    assert plain.vocoder.layout_2d and not vocoder.layout_2d
    voice = vc.build_voice(REF_DIR, trim=False)
    shared, copied = vc.convert(SOURCE_WAV, voice, RAW), plain.convert(SOURCE_WAV, voice, RAW)
    features = vc.encode(SOURCE_WAV)
    with torch.no_grad():
        for module in (fast, vocoder):
            for parameter in module.parameters():
                parameter.mul_(1.25)
    assert not np.allclose(vc.convert(SOURCE_WAV, voice, RAW), shared, atol=1e-3)  # the caller's own module
    assert np.array_equal(plain.convert(SOURCE_WAV, voice, RAW), copied)  # a copy made when it was built
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.mul_(1.25)
    assert not torch.allclose(vc.encode(SOURCE_WAV), features, atol=1e-3)  # the encoder, ready: shared


def test_channels_last_vocoder_gives_the_same_audio(tiny: tuple) -> None:
    """``Generator.channels_last`` (the CPU layout) changes the speed, not the waveform: alone and in a padded batch."""
    _, vocoder = tiny
    fast = copy.deepcopy(vocoder).eval().channels_last()
    twice = copy.deepcopy(fast).channels_last()  # converting again changes nothing
    feats = torch.randn(2, 60, vocoder.config.input_dim, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([40, 60])
    with torch.inference_mode():
        torch.testing.assert_close(fast(feats), vocoder.eval()(feats), atol=1e-6, rtol=0)
        torch.testing.assert_close(fast(feats, lengths), vocoder(feats, lengths), atol=1e-6, rtol=0)
        torch.testing.assert_close(twice(feats, lengths), fast(feats, lengths), atol=0, rtol=0)
    with pytest.raises(ValueError, match="fold_weight_norm"):
        Generator(vocoder.config).channels_last()


@pytest.mark.skipif(not devices.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_keeps_fp32_islands_at_both_ends(tiny: tuple) -> None:
    vc = KnnVC(*tiny, PipelineSettings("cpu", "bf16"))
    first = vc.encoder.model.feature_extractor.conv_layers
    assert first[0].conv.weight.dtype == torch.float32 and first[1].conv.weight.dtype == torch.bfloat16
    assert vc.vocoder.conv_post.weight.dtype == torch.float32 and vc.vocoder.lin_pre.weight.dtype == torch.bfloat16
    feats = vc.encode(SOURCE_WAV)
    assert feats.dtype == torch.float32
    with torch.inference_mode():
        wav = vc.vocoder(feats[None])
    assert wav.dtype == torch.float32


def test_bf16_is_chosen_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for flags, native in ((set(), False), ({"avx2", "avx512f"}, False), ({"avx512_bf16"}, True), ({"amx_bf16"}, True)):
        monkeypatch.setattr(devices, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert devices.cpu_has_native_bf16() == native
        expected = torch.bfloat16 if native and devices.AUTO_PRECISION["cpu"] == "bf16" else torch.float32
        assert devices.resolve_precision("auto", cpu) == expected
        assert devices.resolve_precision("bf16", cpu) == torch.bfloat16  # asked for: given (emulated: a warning)
        with pytest.raises(UsageError, match="'fp16' needs a GPU"):
            devices.resolve_precision("fp16", cpu)


def test_cublas_alloc_failure_is_out_of_memory() -> None:
    assert oom.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"))
    assert not oom.is_out_of_memory(RuntimeError("CUBLAS_STATUS_INVALID_VALUE"))


def junk_in_place(path: Path) -> None:
    """Overwrite ``path`` with zeros of the same size, keeping its modification time: the file looks unchanged to a
    cache keyed by path, size and time, but anything that reads it now fails."""
    stat = path.stat()
    path.write_bytes(bytes(stat.st_size))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture()
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Copies of the tiny checkpoints (free to edit), with the converted copies kept in ``tmp_path/cache``."""
    monkeypatch.setenv("KNNVC_CACHE", str(tmp_path / "cache"))
    wavlm, vocoder = tmp_path / "WavLM-tiny.pt", tmp_path / "prematch_g_tiny.pt"
    shutil.copy(TINY_WAVLM, wavlm)
    shutil.copy(TINY_VOCODER, vocoder)
    shutil.copy(TINY_VOCODER.parent / "config.json", tmp_path / "config.json")
    return wavlm, vocoder


def test_converted_copies_load_without_the_original(weights: tuple[Path, Path], tmp_path: Path) -> None:
    """The first load keeps converted copies in the cache; later loads map them and never read the originals:
    with those turned to junk (same size and time) the same models load. Without the copies the junk fails."""
    wavlm, vocoder_path = weights
    first_encoder, first_vocoder = load_encoder(wavlm), load_vocoder(vocoder_path)
    assert len(list((tmp_path / "cache" / "converted").glob("*.safetensors"))) == 2
    junk_in_place(wavlm)
    junk_in_place(vocoder_path)
    encoder, vocoder = load_encoder(wavlm), load_vocoder(vocoder_path)
    assert encoder.fingerprint == first_encoder.fingerprint
    wav = torch.from_numpy(sf.read(SOURCE_WAV, dtype="float32")[0])
    torch.testing.assert_close(encoder.encode(wav), first_encoder.encode(wav), rtol=0, atol=0)
    for (name, a), b in zip(first_vocoder.state_dict().items(), vocoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    shutil.rmtree(tmp_path / "cache")
    for load, path in ((load_encoder, wavlm), (load_vocoder, vocoder_path)):
        with pytest.raises(WeightsError):
            load(path)


def test_converted_copy_of_an_edited_checkpoint_is_not_used(weights: tuple[Path, Path]) -> None:
    """A checkpoint with a new modification time is read again, whatever its size: junk now fails to load (the
    old copy is not used), and edited weights give other features."""
    wavlm, _ = weights
    wav = torch.from_numpy(sf.read(SOURCE_WAV, dtype="float32")[0])
    before = load_encoder(wavlm).encode(wav)
    junk_in_place(wavlm)
    os.utime(wavlm, ns=(0, 1))
    with pytest.raises(WeightsError):
        load_encoder(wavlm)
    checkpoint = torch.load(TINY_WAVLM, map_location="cpu", weights_only=True)
    checkpoint["model"]["encoder.layers.0.fc2.weight"] *= 1.5
    torch.save(checkpoint, wavlm)
    edited = load_encoder(wavlm).encode(wav)
    assert edited.shape == before.shape and not torch.allclose(edited, before, atol=1e-3)


def test_batch_size_defaults_to_one_on_a_cpu() -> None:
    """Batching costs on a CPU (devices.AUTO_BATCH_SIZE, measured): one waveform at a time unless asked."""
    from knnvc.runtime.devices import auto_batch_size

    a = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER, PipelineSettings("cpu")))
    b = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER, PipelineSettings("cpu", batch_size=4)))
    assert (a.batch_size, b.batch_size) == (1, 4)
    assert auto_batch_size(torch.device("cuda")) == 8 and auto_batch_size(torch.device("cpu")) == 1
