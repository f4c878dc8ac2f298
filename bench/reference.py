"""Reference mode: the original kNN-VC code's algorithm, run as that code runs it, for honest comparisons.

What the original (bshall/knn-vc, ``matcher.py`` and ``hubconf.py``) does, step by step, with the same models:

- load the whole ``WavLM-Large.pt`` (all 24 layers built and loaded) and the vocoder (weight norm removed);
- build the matching set ONCE per voice: each reference loaded, silence trimmed from both ends, encoded to
  layer 6 (``extract_features(output_layer=6)``: the transformer stops after block 6), concatenated on the CPU;
- for each source, whole file, batch 1, fp32: layer-6 features; cosine distances by its ``fast_cosine_dist``
  (``torch.cdist``: ``1 - (|q|^2 + |m|^2 - |q - m|^2) / (2 |q| |m|)``); top-4 smallest; their mean; the vocoder on
  the whole sequence; loudness normalised to -16 LUFS (BS.1770, no limiter); written.

Stand-ins for what cannot run here (no torchaudio): transformers' ``WavLMModel`` with its own attention for the
original WavLM class (the same maths, 2e-7 on the fixtures), knnvc's silero-vad trim for torchaudio's sox VAD,
knnvc's BS.1770 meter for torchaudio's, soundfile for torchaudio's I/O.

    python -m bench.reference --wavlm WavLM-Large.pt --vocoder prematch_g.pt --refs REF.wav... -o OUT SRC...
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import WavLMModel

from knnvc import options
from knnvc.audio import decode, loudness, vad, write
from knnvc.nn.encoder import truncate_wavlm
from knnvc.options import WAVLM_LAYER
from knnvc.weights.formats import read_original, wavlm_model
from vocoder import Generator
from vocoder.checkpoint import load_generator

TOPK = 4
LOUDNESS = -16.0  # LUFS


def fast_cosine_dist(source: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """(Q, M) cosine distances computed as the original does, through ``torch.cdist``."""
    source_norms = source.norm(p=2, dim=-1)
    pool_norms = pool.norm(p=2, dim=-1)
    dot = -(torch.cdist(source[None], pool[None], p=2)[0] ** 2) + source_norms[:, None] ** 2 + pool_norms[None] ** 2
    dot /= 2
    return 1 - dot / (source_norms[:, None] * pool_norms[None])


class Original:
    """The original's models and per-voice / per-file steps, fp32, batch 1, whole files."""

    def __init__(self, wavlm: Path, vocoder: Path, device: torch.device) -> None:
        config, state = read_original(wavlm)  # the whole 1.2 GB checkpoint, every layer built and loaded
        full = wavlm_model(config, state, config.num_hidden_layers)
        nn.Module.to(full, device).eval()
        # extract_features(output_layer=6): the transformer stops after block 6 (no final layer norm)
        self.wavlm: WavLMModel = truncate_wavlm(full, WAVLM_LAYER)
        self.vocoder: Generator = load_generator(vocoder).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def features(self, wav: np.ndarray) -> torch.Tensor:
        """Layer-6 features (T, 1024): the first 6 transformer blocks run, as ``output_layer=6``."""
        x = torch.from_numpy(wav)[None].to(self.device)
        return self.wavlm(x).last_hidden_state[0]

    def matching_set(self, references: Sequence[Path]) -> torch.Tensor:
        """The voice, built once: trimmed references, encoded one by one, concatenated on the CPU."""
        return torch.cat([self.features(vad.trim_silence(decode.load(r))) for r in references]).cpu()

    @torch.inference_mode()
    def convert(self, source: Path, matching: torch.Tensor, output: Path) -> float:
        """Convert one file (whole, batch 1) and write it; returns its audio seconds."""
        wav = decode.load(source)
        query = self.features(wav)
        pool = matching.to(self.device)
        best = fast_cosine_dist(query, pool).topk(k=TOPK, largest=False, dim=-1)
        converted = pool[best.indices].mean(dim=1)
        out = self.vocoder(converted[None]).squeeze().cpu().numpy()
        write.save(output, loudness.normalise_loudness(out, LOUDNESS))
        return len(wav) / options.SAMPLE_RATE


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--wavlm", type=Path, required=True)
    parser.add_argument("--vocoder", type=Path, required=True)
    parser.add_argument("--refs", nargs="+", type=Path, required=True)
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    original = Original(args.wavlm, args.vocoder, torch.device(args.device))
    matching = original.matching_set(args.refs)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = sum(original.convert(src, matching, args.out / src.name) for src in args.sources)
    took = time.perf_counter() - start
    print(f"converted {seconds:.1f} s of audio in {took:.1f} s after start-up")  # noqa: T201 (a script's report)


if __name__ == "__main__":
    main()
