"""GPU paths (skipped without CUDA): fp32 exactness on the GPU, half precisions close to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knnvc.nn.matcher import knn_indices
from knnvc.options import ConvertOptions, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.runtime.devices import AUTO_PRECISION, PRECISIONS
from knnvc.weights.formats import load_encoder, load_vocoder
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

pytestmark = pytest.mark.cuda


def pipeline(precision: str) -> KnnVC:
    return KnnVC(load_encoder(TINY_WAVLM), load_vocoder(TINY_VOCODER), PipelineSettings("cuda", precision))


def test_auto_device_is_cuda_in_the_measured_precision() -> None:
    vc = KnnVC(load_encoder(TINY_WAVLM), load_vocoder(TINY_VOCODER))
    assert vc.device.type == "cuda" and vc.dtype == PRECISIONS[AUTO_PRECISION["cuda"]]


def test_fp32_on_cuda_disables_tf32_while_computing() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True  # what a caller (or another library) may have set
    torch.backends.cudnn.allow_tf32 = True
    vc = pipeline("fp32")
    seen: list[tuple[bool, bool]] = []

    def record(*args: object) -> None:
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    vc.encoder.register_forward_pre_hook(record)
    vc.vocoder.register_forward_pre_hook(record)
    vc.convert(SOURCE_WAV, REF_DIR, ConvertOptions(trim=False, loudness=None))
    assert len(seen) >= 2 and seen == [(False, False)] * len(seen)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored afterwards
    half = pipeline("bf16")
    half.encoder.register_forward_pre_hook(record)
    half.encode(SOURCE_WAV)
    assert seen[-1] == (True, True)  # other precisions leave the caller's settings alone


def test_islands_stay_fp32_on_cuda() -> None:
    vc = pipeline("bf16")
    assert vc.encoder.model.feature_extractor.conv_layers[0].conv.weight.dtype == torch.float32
    assert vc.vocoder.conv_post.weight.dtype == torch.float32
    assert vc.vocoder(vc.encode(SOURCE_WAV)[None]).dtype == torch.float32


def test_cross_file_batch_on_cuda_equals_each_file_alone() -> None:
    vc = pipeline("fp32")
    vc.slack = 1.0
    voice = vc.build_voice(REF_DIR, trim=False)
    wav = vc.load_audio(SOURCE_WAV)
    sources = [wav, wav[:30_000], wav[:29_000], np.tile(wav, 8)]
    options = ConvertOptions(loudness=None)
    together = vc.convert_batch(sources, voice, options)
    for source, out in zip(sources, together, strict=True):
        assert np.abs(out - vc.convert_batch([source], voice, options)[0]).max() < 1e-4


def test_fp32_on_gpu_reproduces_the_original(reference_outputs: dict) -> None:
    vc = pipeline("fp32")
    feats = vc.encode(SOURCE_WAV).cpu()
    ref = reference_outputs["source_layer6"]
    assert float((feats - ref).norm() / ref.norm()) < 1e-4
    out = vc.convert(SOURCE_WAV, REF_DIR, ConvertOptions(trim=False, loudness=None))
    expected = reference_outputs["converted_wav"].numpy()
    assert np.linalg.norm(out[: len(expected)] - expected) / np.linalg.norm(expected) < 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_agrees_with_fp32(precision: str) -> None:
    fp32, half = pipeline("fp32"), pipeline(precision)
    keys = fp32.build_voice(REF_DIR, trim=False).frames.cuda()
    a = knn_indices(fp32.encode(SOURCE_WAV), keys).sort(-1).values
    b = knn_indices(half.encode(SOURCE_WAV), keys).sort(-1).values
    assert float((a == b).all(-1).float().mean()) > 0.8
    out = half.convert(SOURCE_WAV, REF_DIR, ConvertOptions(trim=False))
    assert np.isfinite(out).all()


def test_padded_batch_on_gpu() -> None:
    vc = pipeline("fp32")
    wav = vc.load_audio(SOURCE_WAV)
    single = vc.encode_many([wav])[0]
    batched = vc.encode_many([wav, wav[:20_000], wav[:5_000]])[0]
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
