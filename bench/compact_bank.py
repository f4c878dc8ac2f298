"""The hour-scale reference bank for ``python -m bench.compact``: perturbed fixture speech through full-size WavLM.

The fixture's target speech is 10.5 s. Tiled as is, an hour of it would hold ~525 distinct frames repeated
340 times, which says nothing about clustering. So each copy of the three references is perturbed first (a
random speed factor 0.85-1.15 by soxr resampling, which changes length and pitch together, a random gain of
+-6 dB and white noise 45 dB below the speech): every copy gives WavLM different frames. ``encode_minutes`` of
that is encoded with the full-size random-weight WavLM-Large (``bench/layouts.py``); the features are cached on
disk so reruns skip the encoding. ``tile`` repeats them (exact copies) up to the bank's length.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from bench.layouts import write_wavlm_large
from knnvc.options import FRAME_RATE, SAMPLE_RATE, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.weights.formats import load_encoder

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech"


def perturbed_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """``seconds`` of the fixture references, each copy speed-, gain- and noise-perturbed: (N,) float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    refs = [sf.read(p, dtype="float32")[0] for p in sorted((SPEECH / "ref").glob("*.wav"))]
    pieces, total = [], 0
    while total < seconds * SAMPLE_RATE:
        for ref in refs:
            speed = rng.uniform(0.85, 1.15)
            wav = soxr.resample(ref, SAMPLE_RATE * speed, SAMPLE_RATE).astype(np.float32)
            wav = wav * 10 ** (rng.uniform(-6, 6) / 20)
            rms = float(np.sqrt(np.mean(wav**2))) + 1e-9
            wav = wav + rng.standard_normal(len(wav)).astype(np.float32) * rms * 10 ** (-45 / 20)
            pieces.append(np.clip(wav, -1, 1).astype(np.float32))
            total += len(wav)
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


def source_speech(seconds: float) -> np.ndarray:
    """The fixture source (another speaker) tiled to ``seconds``: (N,) float32 at 16 kHz."""
    wav = sf.read(SPEECH / "source.wav", dtype="float32")[0]
    return np.tile(wav, int(np.ceil(seconds * SAMPLE_RATE / len(wav))))[: int(seconds * SAMPLE_RATE)]


def builder(work: Path) -> KnnVC:
    """A CPU fp32 ``KnnVC`` over a random WavLM-Large written (once) into ``work``."""
    path = work / "WavLM-Large.pt"
    if not path.exists():
        write_wavlm_large(path)
    return KnnVC(load_encoder(path), None, PipelineSettings("cpu", "fp32"))


def encoded_bank(work: Path, minutes: float) -> tuple[torch.Tensor, float]:
    """Layer-6 features (T, 1024) at 50 Hz of ``minutes`` of perturbed speech, and the seconds encoding took
    (cached in ``work`` with the time it took)."""
    cache = work / f"bank-{minutes:g}min.pt"
    timing = cache.with_suffix(".json")
    if cache.exists():
        took = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
        return torch.load(cache, weights_only=True), float(took)
    vb = builder(work)
    wav = perturbed_speech(minutes * 60)
    start = time.perf_counter()
    feats = vb.encode_many([wav])[0].cpu()
    seconds = time.perf_counter() - start
    torch.save(feats, cache)
    timing.write_text(json.dumps({"seconds": round(seconds, 1)}))
    return feats, seconds


def tile(frames: torch.Tensor, hours: float) -> torch.Tensor:
    """``frames`` repeated (exact copies) to ``hours`` of 50 Hz frames: (hours * 180000, D)."""
    total = int(hours * 3600 * FRAME_RATE)
    reps = -(-total // frames.shape[0])
    return frames.repeat(reps, 1)[:total].contiguous()


if __name__ == "__main__":
    import sys

    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    feats, took = encoded_bank(work, float(sys.argv[2]))
    print(f"{tuple(feats.shape)} in {took:.1f} s")  # noqa: T201
