"""Reference mode: the original kNN-VC algorithm as its code runs it, for comparison with the fast path.

fp32, batch 1, all 24 WavLM layers computed (layer 6 read from ``hidden_states``), whole files with no
windows, and the references re-encoded for every source file. Same weights as the fast path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import WavLMModel

from knnvc import audio
from knnvc.checkpoints import read_original, wavlm_model
from knnvc.constants import WAVLM_LAYER
from knnvc.matcher import knn_regression
from vocoder import Generator


def full_wavlm(path: Path, device: torch.device) -> WavLMModel:
    """All layers of an original-format WavLM checkpoint, fp32, eval mode, transformers' own attention."""
    config, state = read_original(path)
    return wavlm_model(config, state, config.num_hidden_layers).to(device).eval()


class ReferenceMode:
    """The original's per-file loop, timed by stage (seconds, summed over files)."""

    def __init__(self, wavlm: WavLMModel, vocoder: Generator, device: torch.device) -> None:
        self.wavlm, self.vocoder, self.device = wavlm, vocoder.to(device).eval(), device
        self.stages = {"load": 0.0, "encode_refs": 0.0, "encode_source": 0.0, "match": 0.0, "vocode": 0.0, "save": 0.0}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def _layer6(self, wav: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(wav)[None].to(self.device)
        out = self.wavlm(x, output_hidden_states=True)  # all layers run, as in the original
        return out.hidden_states[WAVLM_LAYER][0]

    def _timed(self, stage: str, start: float) -> float:
        self._sync()
        now = time.perf_counter()
        self.stages[stage] += now - start
        return now

    @torch.inference_mode()
    def convert_file(self, source: Path, references: Sequence[Path], output: Path) -> float:
        """Convert one file the original way; returns its audio seconds."""
        t = time.perf_counter()
        wav = audio.load(source)
        refs = [audio.trim_silence(audio.load(r)) for r in references]
        t = self._timed("load", t)
        matching = torch.cat([self._layer6(r) for r in refs])
        t = self._timed("encode_refs", t)
        query = self._layer6(wav)
        t = self._timed("encode_source", t)
        converted = knn_regression(query, matching, 4)
        t = self._timed("match", t)
        out = self.vocoder(converted[None]).reshape(-1).cpu().numpy()
        t = self._timed("vocode", t)
        audio.save(output, audio.normalise_loudness(out, -16.0))
        self._timed("save", t)
        return len(wav) / audio.SAMPLE_RATE
