"""GPU paths (skipped without CUDA): fp32 exactness on the GPU, half precisions close to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knnvc.checkpoints import load_encoder, load_vocoder
from knnvc.matcher import knn_indices
from knnvc.options import ConvertOptions
from knnvc.pipeline import KnnVC
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

pytestmark = pytest.mark.cuda


def pipeline(precision: str) -> KnnVC:
    return KnnVC(load_encoder(TINY_WAVLM), load_vocoder(TINY_VOCODER), device="cuda", precision=precision)


def test_auto_device_is_cuda_and_bf16() -> None:
    vc = KnnVC(load_encoder(TINY_WAVLM), load_vocoder(TINY_VOCODER))
    assert vc.device.type == "cuda" and vc.dtype == torch.bfloat16


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
