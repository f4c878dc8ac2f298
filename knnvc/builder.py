"""The encoder half of the pipeline: audio in, WavLM features and voices out, batched across files.

    >>> from knnvc.builder import VoiceBuilder
    >>> builder = VoiceBuilder.from_pretrained(device="cpu")
    >>> voice = builder.build_voice("target_speaker/")          # no vocoder is loaded

``knnvc.pipeline.KnnVC`` adds the matcher and the vocoder on top of it. The builder owns ordering, batching and
devices for encoding; the stages (``audio``, ``encoder``, ``windows``) own the computation.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from torch import Tensor

from knnvc import audio, oom, windows
from knnvc.constants import (
    FRAME_RATE,
    RECEPTIVE_FIELD,
    SAMPLE_RATE,
    WAVLM_LAYER,
)
from knnvc.devices import auto_batch_size, exact_fp32, resolve_device, resolve_precision
from knnvc.encoder import WavLMEncoder, num_frames, split_layers
from knnvc.errors import AudioError, UsageError
from knnvc.files import sha256
from knnvc.layers import rebuild_layer
from knnvc.models import cached_encoder, compiled, prepare_encoder
from knnvc.options import DEFAULT_MODELS, DEFAULT_SETTINGS, Models, PipelineSettings
from knnvc.progress import OnProgress, Progress, report
from knnvc.voice import VOICE_SUFFIX, SourceFile, Voice

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

AudioInput = Union[str, os.PathLike, np.ndarray, Tensor]  # noqa: UP007 (a runtime alias on 3.10)


def _first_time(path: Path, seen: set[Path]) -> bool:
    """True the first time a file is met (by its resolved path), and remembers it; a repeat is logged."""
    key = path.resolve()
    if key in seen:
        log.warning("reference %s is given more than once; counted once", path)
        return False
    seen.add(key)
    return True


class VoiceBuilder:
    """Encoder half of the pipeline: audio in, layer-6 features and voices out (no vocoder needed).

    Args:
        encoder: a ``WavLMEncoder`` (see ``knnvc.checkpoints.load_encoder``).
        settings: device, precision, batch size, windows and compile (``knnvc.options.PipelineSettings``).

    The modules passed in are never changed: when they are not already in eval mode on the device in the
    precision asked for, the pipeline works on a prepared copy (``knnvc.models``).
    """

    def __init__(self, encoder: WavLMEncoder, settings: PipelineSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_precision(settings.precision, self.device)
        self.encoder = prepare_encoder(encoder, self.device, self.dtype)
        self.compile = settings.compile
        self.compile_seconds = 0.0
        if self.compile:  # a shallow copy holds the compiled network: the prepared (maybe shared) encoder is untouched
            self.encoder = copy.copy(self.encoder)
            self.encoder._modules = dict(self.encoder._modules)
            self.encoder.model, self.compile_seconds = compiled(self.encoder.model)
        self.batch_size = settings.batch_size or auto_batch_size(self.device)
        self.slack = windows.BUCKET_SLACK.get(self.device.type, windows.BUCKET_SLACK["default"])
        self.window = round(settings.window_seconds * FRAME_RATE)  # frames kept per encoder window
        self.context = round(settings.context_seconds * FRAME_RATE)  # frames of context on each side

    @classmethod
    def from_pretrained(
        cls, models: Models = DEFAULT_MODELS, *, device: str | None = None, match_layer: int = WAVLM_LAYER
    ) -> Self:
        """The one way to get a pipeline: ``KnnVC.from_pretrained(...)``, or its encoder half with no vocoder
        loaded, ``VoiceBuilder.from_pretrained(...)``.

        Models come from the process-wide cache (``knnvc.models``): loaded (or downloaded) on first use, then
        shared by every pipeline asking for the same weights, device and precision.

        Args:
            models: the weights by registry name, hub id or local path, and how they run (``PipelineSettings``).
            device: short for ``models.settings.device``.
            match_layer: the deepest match layer it will be asked for (WavLM runs max(it, 6) layers).
        """
        settings = models.settings.on(device)
        dev = resolve_device(settings.device)  # a bad device or precision fails before any download
        dtype = resolve_precision(settings.precision, dev)
        encoder = cached_encoder(models.wavlm, dev, dtype, models.offline, max(match_layer, WAVLM_LAYER))
        return cls._assemble(encoder, models, settings, dev, dtype)

    @classmethod
    def _assemble(
        cls, encoder: WavLMEncoder, models: Models, settings: PipelineSettings, device: torch.device, dtype: torch.dtype
    ) -> Self:
        """The object ``from_pretrained`` returns, from the cached encoder (a ``KnnVC`` adds its vocoder)."""
        return cls(encoder, settings)

    # -- audio in ---------------------------------------------------------------------------------------
    def load_audio(self, source: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """A path, array or tensor -> (N,) float32 mono at 16 kHz. Arrays and tensors need ``sample_rate``."""
        if isinstance(source, (str, os.PathLike)):
            return audio.load(Path(source), min_samples=RECEPTIVE_FIELD)
        if sample_rate is None:
            raise UsageError("in-memory audio needs its sample_rate")
        return audio.to_mono_16k(source, sample_rate)

    # -- stages -----------------------------------------------------------------------------------------
    def encode(
        self, source: AudioInput, sample_rate: int | None = None, progress: OnProgress | None = None
    ) -> Tensor:
        """Layer-6 features of one input: (T, D) at 50 Hz, fp32, on the pipeline's device."""
        return self.encode_many([self.load_audio(source, sample_rate)], progress=progress)[0]

    @oom.splits_batches("encoding")  # out of memory: halve the batch, then (below) the window
    def _encode_batch(self, wavs: list[Tensor], layers: tuple[int, ...] | None = None) -> list[Tensor]:
        plain = layers is None or tuple(layers) == (self.encoder.layer,)  # the usual call: layer 6 alone
        with exact_fp32(self.device, self.dtype):
            feats = self.encoder.encode_batch(wavs) if plain else self.encoder.encode_batch(wavs, layers)
            return [f.float() for f in feats]

    @oom.retries_smaller("encoding")
    def encode_many(
        self,
        wavs: Sequence[np.ndarray],
        progress: OnProgress | None = None,
        layers: tuple[int, ...] | None = None,
    ) -> list[Tensor]:
        """Encode 16 kHz mono waveforms; results keep the input order, (T_i, D) fp32 at 50 Hz, on the device.

        Inputs longer than a window are cut into overlapping windows (``knnvc.windows``); the windows and whole
        inputs of all the files form the batches together, bucketed by length, so memory stays flat in any
        input's length and short files share batches. ``layers`` (default: layer 6 alone) come side by side,
        (T_i, len(layers) * D): see ``encoder.split_layers``.
        """
        self.check_depth(layers or ())
        for i, wav in enumerate(wavs):
            if len(wav) < RECEPTIVE_FIELD:
                raise AudioError(
                    f"input {i}: {len(wav)} samples is shorter than one WavLM frame ({RECEPTIVE_FIELD} samples, 25 ms)"
                )
        tensors = [torch.from_numpy(np.ascontiguousarray(w)) for w in wavs]
        parts = windows.pieces([num_frames(len(w)) for w in wavs], self.window, self.context)
        kept: list[list[tuple[int, Tensor]]] = [[] for _ in wavs]
        done = 0
        for group in windows.buckets([p.frames for p in parts], self.batch_size, self.slack):
            chunk = [parts[g] for g in group]
            feats = self._encode_batch([tensors[p.item][slice(*p.window.sample_span())] for p in chunk], layers)
            for p, f in zip(chunk, feats, strict=True):
                w = p.window
                kept[p.item].append((w.keep_start, f[w.keep_start - w.start : w.keep_stop - w.start]))
            done += len(chunk)
            report(progress, Progress("encode", done, len(parts)))
        return [_stitch(found) for found in kept]

    # -- voices -----------------------------------------------------------------------------------------
    def build_voice(
        self,
        references: AudioInput | Sequence[AudioInput],
        *,
        trim: bool = True,
        sample_rate: int | None = None,
        name: str | None = None,
        match_layer: int = WAVLM_LAYER,
    ) -> Voice:
        """Matching set from reference speech: a file, a folder, or a list of paths/arrays/tensors.

        Each reference has its leading and trailing silence trimmed (unless ``trim=False``); their frames are
        concatenated in the given order (a folder: sorted by path). The voice holds layer-6 frames, and
        ``match_layer``'s too when that is another layer (the encoder must run that deep).
        """
        items = self._reference_items(references)
        wavs, sources = [], []
        for label, item in items:
            wav = self.load_audio(item, sample_rate)
            if trim:
                wav = audio.trim_silence(wav)
                if len(wav) == 0:
                    raise AudioError(f"{label}: no speech found in this reference; check it, or pass trim=False")
            wavs.append(wav)
            digest = sha256(Path(label)) if isinstance(item, (str, os.PathLike)) else ""
            sources.append(SourceFile(path=label, sha256=digest, seconds=round(len(wav) / SAMPLE_RATE, 3)))
        layers = tuple(sorted({self.encoder.layer, match_layer}))
        by_layer = split_layers(torch.cat(self.encode_many(wavs, layers=layers)).cpu(), layers)
        default_name = Path(items[0][0]).stem if len(items) == 1 else Path(items[0][0]).parent.name
        return Voice(
            frames=by_layer.pop(self.encoder.layer).contiguous(),
            encoder=self.encoder.name,
            encoder_fingerprint=self.encoder.fingerprint,
            layer=self.encoder.layer,
            sources=tuple(sources),
            name=name or default_name or "voice",
            match_frames={n: f.contiguous() for n, f in by_layer.items()},
            trim=trim,
        )

    def check_depth(self, layers: Sequence[int]) -> None:
        """``UsageError`` unless the encoder has and runs every layer asked for (say how to load a deeper one)."""
        deepest = max(layers, default=self.encoder.layer)
        if deepest > self.encoder.num_layers:
            raise UsageError(f"match layer {deepest}: {self.encoder.name} has {self.encoder.num_layers} layers; "
                             f"choose a match layer of 1-{self.encoder.num_layers}")  # fmt: skip
        if deepest > self.encoder.depth:
            raise UsageError(
                f"match layer {deepest} needs WavLM run to layer {deepest}, this pipeline's encoder stops at "
                f"{self.encoder.depth}; load it with match_layer={deepest} (KnnVC.from_pretrained)"
            )

    def with_layer(self, voice: Voice, layer: int) -> Voice:
        """``voice`` holding ``layer``'s frames: as is, or rebuilt from its references (``knnvc.layers``)."""
        return voice if layer in voice.layers else rebuild_layer(self, voice, layer)

    def _reference_items(self, references: AudioInput | Sequence[AudioInput]) -> list[tuple[str, AudioInput]]:
        if isinstance(references, (str, os.PathLike, np.ndarray, Tensor)):
            references = [references]
        items: list[tuple[str, AudioInput]] = []
        seen: set[Path] = set()  # a file named twice, or also inside a folder given, is counted once
        for i, ref in enumerate(references):
            if isinstance(ref, (str, os.PathLike)) and Path(ref).is_dir():
                found = audio.audio_files(Path(ref))
                if not found:
                    raise AudioError(
                        f"{ref}: folder holds no audio files ({', '.join(sorted(audio.AUDIO_EXTENSIONS))})"
                    )
                items += [(str(p), p) for p in found if _first_time(p, seen)]
            elif isinstance(ref, (str, os.PathLike)):
                items += [(str(ref), ref)] if _first_time(Path(ref), seen) else []
            else:
                items.append((f"<array {i}>", ref))
        if not items:
            raise UsageError("no references given")
        return items

    def voice_from(
        self,
        target: Voice | AudioInput | Sequence[AudioInput],
        *,
        trim: bool = True,
        sample_rate: int | None = None,
        match_layer: int = WAVLM_LAYER,
    ) -> Voice:
        """A ``Voice`` as is, a ``.voice`` file loaded, or references (with ``sample_rate`` for arrays) built.

        A voice built here holds ``match_layer``'s frames too; see ``with_layer`` for one that lacks them.
        """
        if isinstance(target, Voice):
            return target
        if isinstance(target, (str, os.PathLike)) and str(target).endswith(VOICE_SUFFIX):
            return Voice.load(Path(target))
        return self.build_voice(target, trim=trim, sample_rate=sample_rate, match_layer=match_layer)


def _stitch(parts: list[tuple[int, Tensor]]) -> Tensor:
    """Kept window frames of one input, (first frame, (T_w, D)) in any order -> (T, D) in frame order."""
    parts.sort(key=lambda part: part[0])
    return parts[0][1] if len(parts) == 1 else torch.cat([t for _, t in parts])
