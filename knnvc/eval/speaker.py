"""Speaker embeddings for similarity and verification: resemblyzer (in its wheel), or a stronger local model.

Every embedding is a unit vector, so the cosine of two is their dot product. ``load_verifier("auto")`` takes
WavLM-Base-Plus-SV (transformers' ``WavLMForXVector``, an x-vector head on WavLM trained on VoxCeleb) when it is
in the local Hugging Face cache, else resemblyzer's GE2E d-vector encoder, whose weights ship in its wheel.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np

from knnvc.errors import AudioError, UsageError
from knnvc.eval.models import LocalModel, need, pick
from knnvc.options import SAMPLE_RATE

WAVLM_SV = "microsoft/wavlm-base-plus-sv"  # the stronger verifier taken when it is cached locally


class Verifier(Protocol):
    """A speaker encoder: ``embed`` maps (N,) float32 16 kHz audio to a (D,) unit vector."""

    name: str

    def embed(self, wav: np.ndarray) -> np.ndarray: ...


class Resemblyzer:
    """resemblyzer's GE2E speaker encoder (256-d d-vectors from 40-band log-mels; weights in its wheel)."""

    name = "resemblyzer GE2E d-vector (256-d)"

    def __init__(self, device: str = "cpu") -> None:
        with warnings.catch_warnings():  # webrtcvad imports pkg_resources, which warns that it is deprecated
            warnings.simplefilter("ignore")
            need("resemblyzer", "speaker similarity")
            from resemblyzer import VoiceEncoder, preprocess_wav
        self._encoder = VoiceEncoder(device, verbose=False)
        self._preprocess = preprocess_wav

    def embed(self, wav: np.ndarray) -> np.ndarray:
        """(N,) 16 kHz float32 -> (256,) unit vector; long pauses removed by resemblyzer's webrtcvad step first."""
        speech = self._preprocess(np.asarray(wav, np.float32), source_sr=SAMPLE_RATE)
        if speech.size < SAMPLE_RATE // 10:  # the VAD found (almost) no speech: embed the audio as it is
            speech = np.asarray(wav, np.float32)
        return _unit(np.asarray(self._encoder.embed_utterance(speech), np.float64))


class XVector(LocalModel):
    """transformers' ``WavLMForXVector`` from a local folder or the local HF cache (512-d x-vectors)."""

    preprocessor, model = "AutoFeatureExtractor", "WavLMForXVector"
    metric, what, label = "speaker similarity", "the speaker verifier", "WavLMForXVector x-vector ({path})"

    def embed(self, wav: np.ndarray) -> np.ndarray:
        """(N,) 16 kHz float32 -> (D,) unit vector."""
        inputs = self._prepare(np.asarray(wav, np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with self._torch.inference_mode():
            out = self._model(**{k: v.to(self._device) for k, v in inputs.items()})
        return _unit(out.embeddings[0].float().cpu().numpy().astype(np.float64))


def load_verifier(name: str = "auto", device: str = "cpu") -> Verifier:
    """``auto`` (WavLM-SV when cached, else resemblyzer), ``resemblyzer``, or a local/cached WavLMForXVector.

    Raises:
        WeightsError: the model asked for is not installed or not in the local cache.
    """
    xvector: Callable[[str], Verifier] = functools.partial(XVector, device=device)
    return pick(name, option="verifier", fallback="resemblyzer", make_fallback=functools.partial(Resemblyzer, device),
                always="its weights ship in its wheel", repo=WAVLM_SV, make=xvector, what="speaker verifier")


def speaker_embedding(embeddings: np.ndarray) -> np.ndarray:
    """(R, D) unit utterance embeddings of one speaker -> (D,) unit speaker embedding (their normalised mean)."""
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise UsageError("a speaker embedding needs at least one utterance embedding")
    return _unit(embeddings.mean(axis=0))


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise AudioError("the speaker encoder returned a zero or non-finite embedding (silent audio?)")
    return v / norm
