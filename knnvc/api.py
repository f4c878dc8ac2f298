"""One-off use: ``knnvc.convert(source, reference, k=..., loudness=...)``, and the model cache behind it and the CLI.

    >>> import knnvc
    >>> wav = knnvc.convert("source.wav", "target_speaker/")                  # (N,) float32 at 16 kHz
    >>> knnvc.convert(array, "alice.voice", sample_rate=44_100, output="out.flac")

Models come from the model cache behind ``KnnVC.from_pretrained`` (``knnvc.models``, keyed by weights, device and
precision), so repeated calls load each model once. For many conversions in a program, hold a pipeline yourself:
``vc = knnvc.KnnVC.from_pretrained(...)``. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from knnvc.constants import DEFAULT_K, DEFAULT_LOUDNESS, WAVLM_LAYER
from knnvc.errors import UsageError
from knnvc.options import DEFAULT_MODELS, Models

if TYPE_CHECKING:
    import numpy as np

    from knnvc.pipeline import AudioInput
    from knnvc.progress import OnProgress
    from knnvc.voice import Voice


def clear_cache() -> None:
    """Forget every cached model (``knnvc.models``): frees their memory once no pipeline holds them."""
    from knnvc.models import clear_cache as clear

    clear()


def convert(
    source: AudioInput,
    reference: Voice | AudioInput | Sequence[AudioInput],
    *,
    sample_rate: int | None = None,
    reference_sample_rate: int | None = None,
    output: str | os.PathLike[str] | None = None,
    output_sample_rate: int | None = None,
    k: int = DEFAULT_K,
    loudness: float | None = DEFAULT_LOUDNESS,
    trim: bool = True,
    strength: float = 1.0,
    match_layer: int = WAVLM_LAYER,
    knn_weighting: str = "uniform",
    morph: Voice | AudioInput | Sequence[AudioInput] | None = None,
    morph_weight: float = 0.5,
    morph_sample_rate: int | None = None,
    models: Models = DEFAULT_MODELS,
    device: str | None = None,
    progress: OnProgress | None = None,
) -> np.ndarray:
    """Say ``source``'s words in ``reference``'s voice: everything ``knnvc convert`` does for one input.

    Args:
        source: a path, or a numpy array / torch tensor ((N,), (C, N) or (N, C)) with ``sample_rate``.
        reference: a ``Voice``, a ``.voice`` file, reference audio (a file, a folder, arrays/tensors with
            ``reference_sample_rate``) or a list of those.
        output: also write the result here, atomically (format from the extension: .wav, .flac, .ogg).
        output_sample_rate: rate of the result (and of ``output``), resampled with soxr; default: the vocoder's
            (16 kHz for the published ones).
        k, loudness, trim: as for ``KnnVC.convert`` (``loudness=None`` keeps the vocoder's level).
        strength, match_layer, knn_weighting, morph_weight: the controls of ``knnvc.options.ConvertOptions``.
        morph: a second voice (a ``Voice``, a ``.voice`` file or reference audio, arrays with
            ``morph_sample_rate``): the result is ``(1 - morph_weight) * kNN(reference) + morph_weight *
            kNN(morph)`` before the strength blend.
        models: the weights and how they run (``knnvc.options.Models``: wavlm, vocoder, settings, offline).
        device: short for ``models.settings.device``.
        progress: gets ``knnvc.progress.Progress`` events over the windows of long audio.

    Returns:
        (N,) float32 at ``output_sample_rate``, as long as the source.
    """
    from dataclasses import replace

    from knnvc import audio
    from knnvc.options import ConvertOptions
    from knnvc.pipeline import KnnVC

    options = ConvertOptions(
        k=k,
        loudness=loudness,
        trim=trim,
        output_sample_rate=output_sample_rate,
        strength=strength,
        match_layer=match_layer,
        knn_weighting=knn_weighting,
        morph_weight=morph_weight,
    )
    if output is not None and Path(output).suffix.lower() not in audio.OUTPUT_FORMATS:
        raise UsageError(f"{output}: output files end in {', '.join(audio.OUTPUT_FORMATS)}")
    if sample_rate is None and not isinstance(source, (str, os.PathLike)):
        raise UsageError("an in-memory source (array or tensor) needs its sample_rate")
    vc = KnnVC.from_pretrained(models, device=device, match_layer=match_layer)
    voice = vc.voice_from(reference, trim=trim, sample_rate=reference_sample_rate, match_layer=match_layer)
    if morph is not None:
        second = vc.voice_from(morph, trim=trim, sample_rate=morph_sample_rate, match_layer=match_layer)
        options = replace(options, morph=second)
    wav = vc.convert(source, voice, options, sample_rate=sample_rate, progress=progress)
    if output is not None:
        rate = vc.output_rate(options)
        audio.save(Path(output), wav, sample_rate=rate, source_rate=rate)
    return wav
