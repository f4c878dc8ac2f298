"""Full-size random checkpoints with the published layouts load strictly and convert a 10 s file on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bench.layouts import load_layouts, write_prematch_vocoder, write_wavlm_large
from knnvc.options import FEATURE_DIM, ConvertOptions, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.weights.formats import load_encoder, load_vocoder, original_to_hf
from tests.conftest import REF_DIR, SOURCE_WAV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fullsize(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fullsize")
    wavlm = write_wavlm_large(root / "WavLM-Large.pt")
    vocoder = write_prematch_vocoder(root / "prematch_g_02500000.pt")
    hf = original_to_hf(wavlm, root / "wavlm-large-hf")
    return {"wavlm": wavlm, "vocoder": vocoder, "hf": hf}


def test_layouts_describe_wavlm_large() -> None:
    layouts = load_layouts()
    assert len(layouts["WavLM-Large.pt"]["model"]) == 495
    assert layouts["WavLM-Large.pt"]["cfg"]["encoder_layers"] == 24


def test_fullsize_checkpoints_load_strictly_and_convert(fullsize: dict[str, Path]) -> None:
    original = load_encoder(fullsize["wavlm"])
    hf = load_encoder(fullsize["hf"])
    assert original.dim == FEATURE_DIM and len(original.model.encoder.layers) == 6
    assert original.fingerprint == hf.fingerprint  # the same weights through both loaders
    vocoder = load_vocoder(fullsize["vocoder"])
    assert vocoder.config.input_dim == FEATURE_DIM

    vc = KnnVC(original, vocoder, PipelineSettings("cpu", "fp32"))
    source, _ = sf.read(SOURCE_WAV, dtype="float32")
    ten_seconds = np.tile(source, 3)[:160_000]
    voice = vc.build_voice(REF_DIR, trim=False)
    assert voice.frames.shape[1] == FEATURE_DIM
    out = vc.convert(ten_seconds, voice, ConvertOptions(loudness=None), sample_rate=16_000)
    assert out.shape == (160_000,)
    assert np.isfinite(out).all() and np.abs(out).max() > 0

    hf_vc = KnnVC(hf, vocoder, PipelineSettings("cpu", "fp32"))
    feats = hf_vc.encode(ten_seconds[:32_000], sample_rate=16_000)
    torch.testing.assert_close(feats, vc.encode(ten_seconds[:32_000], sample_rate=16_000), rtol=1e-4, atol=1e-4)
