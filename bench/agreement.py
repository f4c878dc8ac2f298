"""Does a lower precision keep kNN-VC's choices? kNN agreement with fp32 and the output's SNR against fp32.

For each precision the device offers, a pipeline in that precision builds the voice and encodes the source
itself (as a user's would), and we compare with fp32: the share of source frames whose k nearest matching-set
frames are the same set, and the SNR (dB) of the converted waveform (no loudness step) against fp32's.
``knnvc.runtime.devices.AUTO_PRECISION`` may pick a precision only where both model sizes agree on >= 95 % of frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from knnvc.audio import decode
from knnvc.nn.matcher import knn_indices
from knnvc.options import ConvertOptions, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.runtime.devices import cpu_has_native_bf16
from knnvc.weights.formats import load_encoder, load_vocoder

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SPEECH = FIXTURES / "speech"
THRESHOLD = 0.95


def lower_precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["bf16", "fp16"]
    return ["bf16"] if device.type == "cpu" and cpu_has_native_bf16() else []


def _choices(vc: KnnVC, source: np.ndarray, refs: list[np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
    voice_frames = torch.cat(vc.encode_many(refs))
    idx = knn_indices(vc.encode_many([source])[0], voice_frames).sort(-1).values.cpu()
    matched = voice_frames[idx.to(voice_frames.device)].mean(dim=-2)
    return idx, vc.vocode(matched)


def _snr(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference - other) ** 2))
    return round(10 * np.log10(float(np.sum(reference**2)) / max(noise, 1e-20)), 2)


def measure(models: dict[str, Path], source: Path, references: list[Path], device: torch.device) -> dict[str, Any]:
    """{precision: {fixtures|full_size: {knn_agreement, snr_db}}, "auto_allowed": {precision: bool}}."""
    cases = {
        "fixtures": (FIXTURES / "wavlm_tiny" / "WavLM-tiny.pt", FIXTURES / "vocoder_tiny" / "prematch_g_tiny.pt",
                     SPEECH / "source.wav", sorted((SPEECH / "ref").glob("*.wav"))),
        "full_size": (models["wavlm"], models["vocoder"], source, references),
    }  # fmt: skip
    result: dict[str, Any] = {}
    for case, (wavlm, vocoder, src, refs) in cases.items():
        encoder, generator = load_encoder(wavlm), load_vocoder(vocoder)
        wav, ref_wavs = decode.load(src), [decode.load(r) for r in refs]
        base_idx, base_wav = _choices(KnnVC(encoder, generator, PipelineSettings(device, "fp32")), wav, ref_wavs)
        for precision in lower_precisions(device):
            vc = KnnVC(encoder, generator, PipelineSettings(device, precision))
            idx, out = _choices(vc, wav, ref_wavs)
            agreement = float((idx == base_idx).all(-1).float().mean())
            result.setdefault(precision, {})[case] = {"knn_agreement": round(agreement, 4),
                                                      "snr_db": _snr(base_wav, out)}  # fmt: skip
    result["auto_allowed"] = {
        p: all(result[p][case]["knn_agreement"] >= THRESHOLD for case in cases) for p in lower_precisions(device)
    }
    result["threshold"] = THRESHOLD
    result["options"] = str(ConvertOptions(loudness=None))
    return result
