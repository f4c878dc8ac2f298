"""Measuring helpers for the benchmark: corpus, peak memory, stage timers, agreement and window checks."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from knnvc import audio, windows
from knnvc.checkpoints import load_encoder, load_vocoder
from knnvc.devices import PRECISIONS
from knnvc.matcher import knn_indices
from knnvc.pipeline import KnnVC, VoiceBuilder
from knnvc.voice import Voice

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SPEECH = FIXTURES / "speech"
SR = audio.SAMPLE_RATE


@dataclass
class Corpus:
    root: Path
    sources: list[Path]
    references: list[Path]

    @property
    def source_seconds(self) -> float:
        return sum(sf.info(str(p)).frames for p in self.sources) / SR


def _speech(seconds: float, shift: int) -> np.ndarray:
    pieces = [sf.read(p, dtype="float32")[0] for p in sorted(SPEECH.rglob("*.wav"))]
    wav = np.concatenate(pieces)
    wav = np.roll(wav, shift * 3217)
    return np.tile(wav, int(np.ceil(seconds * SR / len(wav))))[: int(seconds * SR)]


def make_corpus(root: Path, files: int, seconds: float, ref_seconds: float) -> Corpus:
    """16 kHz wav sources (fixture speech, shifted per file) and references split into files of <= 30 s."""
    (root / "src").mkdir()
    (root / "ref").mkdir()
    sources = []
    for i in range(files):
        sources.append(root / "src" / f"utt_{i:04d}.wav")
        sf.write(sources[-1], _speech(seconds, i), SR, subtype="PCM_16")
    refs, left, i = [], ref_seconds, 0
    while left > 0:
        refs.append(root / "ref" / f"ref_{i:03d}.wav")
        sf.write(refs[-1], _speech(min(30.0, left), 100 + i), SR, subtype="PCM_16")
        left, i = left - 30.0, i + 1
    return Corpus(root, sources, refs)


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


@contextmanager
def stage(stages: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize()
    stages[name] = stages.get(name, 0.0) + time.perf_counter() - start


def report(audio_seconds: float, wall: float, stages: dict[str, float], peak: Peak) -> dict[str, Any]:
    return {
        "audio_seconds": round(audio_seconds, 2),
        "wall_seconds": round(wall, 3),
        "realtime": round(audio_seconds / wall, 2),
        "stages_seconds": {k: round(v, 3) for k, v in stages.items()},
        "stages_realtime": {k: round(audio_seconds / v, 1) for k, v in stages.items() if v > 0},
        "peak_rss_gib": round(peak.rss / 2**30, 3),
        "peak_gpu_gib": round(peak.gpu / 2**30, 3),
    }


def staged_fast(vc: KnnVC, voice: Voice, corpus: Corpus) -> dict[str, float]:
    """The fast path stage by stage over the corpus (load, encode, match, vocode, save), in seconds."""
    stages: dict[str, float] = {}
    with stage(stages, "load", vc.device):
        wavs = [audio.load(p) for p in corpus.sources]
    with stage(stages, "encode", vc.device):
        feats = vc.encode_many(wavs)
    with stage(stages, "match", vc.device):
        converted = [vc.match(f, voice) for f in feats]
    with stage(stages, "vocode", vc.device):
        outs = [vc.vocode(c) for c in converted]
    with stage(stages, "save", vc.device):
        for i, out in enumerate(outs):
            audio.save(corpus.root / "staged" / f"{i}.wav", audio.normalise_loudness(out))
    return stages


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.sort(-1).values == b.sort(-1).values).all(-1).float().mean())


def knn_agreement(wavlm: Path, vocoder: Path, corpus: Corpus, device: torch.device, voice: Voice) -> dict:
    """Share of frames whose 4 neighbours equal fp32's, per precision, on the fixtures and the corpus."""
    precisions = ["fp32"] + (["bf16", "fp16"] if device.type == "cuda" else [])
    tiny = load_encoder(FIXTURES / "wavlm_tiny" / "WavLM-tiny.pt")
    full = load_encoder(wavlm)
    result: dict[str, dict[str, float]] = {}
    base: dict[str, torch.Tensor] = {}
    for precision in precisions:
        scores = {}
        for name, enc, source, refs in (
            ("fixtures", tiny, SPEECH / "source.wav", sorted((SPEECH / "ref").glob("*.wav"))),
            ("corpus", full, corpus.sources[0], corpus.references),
        ):
            vc = KnnVC(enc, load_vocoder(vocoder) if enc is full else _tiny_vocoder(), device=device,
                       precision=precision)  # fmt: skip
            keys = torch.cat(vc.encode_many([audio.load(p) for p in refs]))
            idx = knn_indices(vc.encode(source), keys)
            base.setdefault(name, idx)
            scores[name] = round(_agreement(idx, base[name]), 4)
        result[precision] = scores
    return result


def _tiny_vocoder() -> Any:
    return load_vocoder(FIXTURES / "vocoder_tiny" / "prematch_g_tiny.pt")


def window_gap(vc: KnnVC, corpus: Corpus, seconds: float) -> dict[str, Any]:
    """Largest relative frame difference between windowed and whole-file features, near and away from seams."""
    wav = _speech(seconds, 7)
    windowed = vc.encode(wav, sample_rate=SR)
    precision = {dtype: name for name, dtype in PRECISIONS.items()}[vc.dtype]
    whole_file = VoiceBuilder(vc.encoder, device=vc.device, precision=precision, window_seconds=seconds + 60)
    whole = whole_file.encode(wav, sample_rate=SR)
    err = ((windowed - whole).norm(dim=-1) / whole.norm(dim=-1)).cpu()
    seams = windows.seams(windows.split(whole.shape[0], vc.window, vc.context))
    near = torch.zeros_like(err, dtype=torch.bool)
    for s in seams:
        near[max(0, s - 50) : s + 50] = True
    return {
        "seconds": seconds,
        "window_seconds": vc.window / 50,
        "context_seconds": vc.context / 50,
        "seams": len(seams),
        "max_rel_error_away_from_seams": round(float(err[~near].max()) if (~near).any() else 0.0, 6),
        "max_rel_error_near_seams": round(float(err[near].max()) if near.any() else 0.0, 6),
        "mean_rel_error": round(float(err.mean()), 6),
    }


def long_file(vc: KnnVC, voice: Voice, root: Path, seconds: float) -> dict[str, Any]:
    """Convert one long file end to end; wall time and peak memory."""
    path = root / "long.wav"
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as fh:
        for start in range(0, int(seconds), 60):
            fh.write(_speech(min(60.0, seconds - start), start))
    with Peak(vc.device) as peak:
        start_t = time.perf_counter()
        vc.convert_file(path, voice, root / "long_out.wav")
        wall = time.perf_counter() - start_t
    return report(seconds, wall, {}, peak)
