"""Measuring helpers for the benchmarks: synthetic speech from the fixtures, and peak memory while a block runs."""

from __future__ import annotations

import resource
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SPEECH = FIXTURES / "speech"
SR = 16_000


def speech(seconds: float, shift: int) -> np.ndarray:
    """``seconds`` of the fixture speech, rotated by ``shift`` so files differ: (N,) float32 at 16 kHz."""
    pieces = [sf.read(p, dtype="float32")[0] for p in sorted(SPEECH.rglob("*.wav"))]
    wav = np.roll(np.concatenate(pieces), shift * 3217)
    return np.tile(wav, int(np.ceil(seconds * SR / len(wav))))[: int(seconds * SR)]


@dataclass(frozen=True)
class Corpus:
    """A benchmark corpus: ``root/src`` holds the source clips; ``references`` is the target's speech."""

    sources: list[Path]
    references: list[Path]


def make_corpus(root: Path, files: int, seconds: float, ref_seconds: float) -> Corpus:
    """``files`` source clips of ``seconds`` each in ``root/src`` and ``ref_seconds`` of reference speech in
    ``root/ref``, all cut from the fixture speech (16 kHz, 16-bit WAV), each file rotated so no two are alike."""
    sources = [write_clip(root / "src" / f"clip_{i:03d}.wav", seconds, i) for i in range(files)]
    return Corpus(sources, [write_clip(root / "ref" / "target.wav", ref_seconds, files + 1)])


def write_clip(path: Path, seconds: float, shift: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, speech(seconds, shift), SR, subtype="PCM_16")
    return path


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


class Peak:
    """Peak resident memory (sampled every 20 ms) and peak CUDA memory while the block runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss = 0
        self.gpu = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss = max(self.rss, _rss())

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, _rss())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.gpu = int(torch.cuda.max_memory_allocated(self.device))
