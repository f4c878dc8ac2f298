"""The object users hold: encoder + matcher + vocoder on one device, built once, used for many conversions.

    >>> from knnvc import KnnVC
    >>> vc = KnnVC.from_pretrained(device="auto")
    >>> voice = vc.build_voice(["target/01.wav", "target/02.wav"])
    >>> wav = vc.convert("source.wav", voice)          # (N,) float32 at 16 kHz, -16 LUFS

The pipeline owns ordering, batching and devices; the stages (``audio``, ``encoder``, ``matcher``, ``vocoder``)
own the computation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

from knnvc import audio, oom, windows
from knnvc.constants import (
    DEFAULT_K,
    DEFAULT_VOCODER,
    DEFAULT_WAVLM,
    FRAME_RATE,
    RECEPTIVE_FIELD,
    SAMPLE_RATE,
    WAVLM_LAYER,
)
from knnvc.devices import resolve_device, resolve_precision
from knnvc.encoder import WavLMEncoder, num_frames, split_layers
from knnvc.errors import AudioError, UsageError
from knnvc.files import sha256
from knnvc.layers import rebuild_layer
from knnvc.matcher import blend, knn_regression, morph
from knnvc.options import ConvertOptions
from knnvc.voice import VOICE_SUFFIX, SourceFile, Voice
from vocoder import Generator

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = ConvertOptions()

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
        device: auto, cpu, cuda, cuda:N or mps.
        precision: auto, fp32, bf16 or fp16 for the networks; matching is always fp32.
        batch_size: waveforms (or windows of long audio) encoded together.
        window_seconds: audio longer than this (plus context) is encoded in windows this long.
        context_seconds: context on each side of a window, computed and dropped.
    """

    def __init__(
        self,
        encoder: WavLMEncoder,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        window_seconds: float = windows.ENCODER_CORE / FRAME_RATE,
        context_seconds: float = windows.ENCODER_CONTEXT / FRAME_RATE,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if window_seconds < 1 or context_seconds < 0:
            raise UsageError("the encoder window must be at least 1 s and its context at least 0 s")
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.encoder = encoder.to(self.device, self.dtype).eval()
        self.batch_size = batch_size
        self.window = round(window_seconds * FRAME_RATE)  # frames kept per encoder window
        self.context = round(context_seconds * FRAME_RATE)  # frames of context on each side

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
        self, source: AudioInput, sample_rate: int | None = None, progress: windows.Progress | None = None
    ) -> Tensor:
        """Layer-6 features of one input: (T, D) at 50 Hz, fp32, on the pipeline's device."""
        return self.encode_many([self.load_audio(source, sample_rate)], progress=progress)[0]

    @oom.splits_batches("encoding")  # out of memory: halve the batch, then (below) the window
    def _encode_batch(self, wavs: list[Tensor], layers: tuple[int, ...] | None = None) -> list[Tensor]:
        plain = layers is None or tuple(layers) == (self.encoder.layer,)  # the usual call: layer 6 alone
        feats = self.encoder.encode_batch(wavs) if plain else self.encoder.encode_batch(wavs, layers)
        return [f.float() for f in feats]

    @oom.retries_smaller("encoding")
    def encode_many(
        self,
        wavs: Sequence[np.ndarray],
        progress: windows.Progress | None = None,
        layers: tuple[int, ...] | None = None,
    ) -> list[Tensor]:
        """Encode 16 kHz mono waveforms; results keep the input order, (T_i, D) fp32 at 50 Hz.

        Inputs that fit in one window are batched by length; longer ones are encoded in overlapping windows
        (``knnvc.windows``), their windows batched, so memory stays flat in the input's length. ``layers``
        (default: layer 6 alone) come side by side, (T_i, len(layers) * D): see ``encoder.split_layers``.
        """
        self.check_depth(layers or ())
        for i, wav in enumerate(wavs):
            if len(wav) < RECEPTIVE_FIELD:
                raise AudioError(
                    f"input {i}: {len(wav)} samples is shorter than one WavLM frame ({RECEPTIVE_FIELD} samples, 25 ms)"
                )
        out: list[Tensor | None] = [None] * len(wavs)
        short = [i for i, w in enumerate(wavs) if num_frames(len(w)) <= self.window + 2 * self.context]
        for i in set(range(len(wavs))) - set(short):
            out[i] = windows.encode_windowed(
                lambda batch: self._encode_batch(batch, layers),
                torch.from_numpy(np.ascontiguousarray(wavs[i])),
                batch_size=self.batch_size,
                core=self.window,
                context=self.context,
                progress=progress,
            )
        short.sort(key=lambda i: len(wavs[i]))
        for start in range(0, len(short), self.batch_size):
            chunk = short[start : start + self.batch_size]
            feats = self._encode_batch([torch.from_numpy(np.ascontiguousarray(wavs[i])) for i in chunk], layers)
            for i, f in zip(chunk, feats, strict=True):
                out[i] = f
        return [f for f in out if f is not None]

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
                    raise AudioError(f"{label}: no speech found in this reference; check it, or pass --no-trim")
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
                f"{self.encoder.depth}; load it with match_layer={deepest} (KnnVC.from_pretrained or load_pipeline)"
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


class KnnVC(VoiceBuilder):
    """kNN-VC: WavLM layer-6 encoder, cosine kNN regression and a HiFi-GAN vocoder on one device.

    Args:
        encoder: a ``WavLMEncoder`` (see ``knnvc.checkpoints.load_encoder``).
        vocoder: a HiFi-GAN ``Generator`` trained on (prematched) layer-6 features.
        device, precision, batch_size, window_seconds, context_seconds: as for ``VoiceBuilder``.
    """

    def __init__(
        self,
        encoder: WavLMEncoder,
        vocoder: Generator,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        window_seconds: float = windows.ENCODER_CORE / FRAME_RATE,
        context_seconds: float = windows.ENCODER_CONTEXT / FRAME_RATE,
    ) -> None:
        super().__init__(
            encoder,
            device=device,
            precision=precision,
            batch_size=batch_size,
            window_seconds=window_seconds,
            context_seconds=context_seconds,
        )
        if vocoder.config.input_dim != encoder.dim:
            raise UsageError(f"vocoder expects {vocoder.config.input_dim}-d features, encoder gives {encoder.dim}")
        self.vocoder = vocoder.to(self.device, self.dtype).eval()

    @classmethod
    def from_pretrained(
        cls,
        wavlm: str | Path = DEFAULT_WAVLM,
        vocoder: str | Path = DEFAULT_VOCODER,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        offline: bool | None = None,
        match_layer: int = WAVLM_LAYER,
        **window: float,
    ) -> KnnVC:
        """Load WavLM and a vocoder by registry name, hub id or local path (downloading lazily).

        ``match_layer``: the deepest match layer this pipeline will be asked for (WavLM runs max(it, 6) layers).
        ``window`` takes ``window_seconds`` and ``context_seconds`` (see ``VoiceBuilder``).
        """
        from knnvc.checkpoints import load_encoder, load_vocoder

        dev = resolve_device(device)  # fail on a bad device before any download
        resolve_precision(precision, dev)
        return cls(
            load_encoder(wavlm, offline=offline, depth=max(match_layer, WAVLM_LAYER)),
            load_vocoder(vocoder, offline=offline),
            device=dev,
            precision=precision,
            batch_size=batch_size,
            **window,
        )

    @property
    def sample_rate(self) -> int:
        """Output rate of ``convert`` and ``vocode``: the vocoder's (16 kHz for the published ones)."""
        return int(self.vocoder.config.sample_rate)

    @oom.retries_smaller("matching")
    def match(
        self, features: Tensor | Mapping[int, Tensor], voice: Voice, options: ConvertOptions | int = DEFAULT_K
    ) -> Tensor:
        """The source's frames matched onto the voice, with every control of ``options`` -> (T, D) fp32 layer 6.

        ``features``: (T, D) layer-6 frames, or {layer: (T, D)} holding layer 6 and the match layer.
        ``options``: a ``ConvertOptions`` (k, match layer, weighting, morph, strength), or just k.
        The search runs on the match layer; the result averages the chosen frames' layer-6 features, morphs
        towards ``options.morph`` by ``morph_weight``, then blends with the source by ``strength``.
        """
        opts = options if isinstance(options, ConvertOptions) else ConvertOptions(k=options)
        by_layer = features if isinstance(features, Mapping) else {WAVLM_LAYER: features}
        if opts.match_layer not in by_layer:
            raise UsageError(f"match layer {opts.match_layer}: the source was encoded to layers {sorted(by_layer)}")
        query = by_layer[opts.match_layer].to(self.device, torch.float32)
        matched = self._match_voice(query, voice, opts)
        if opts.morph is not None:
            matched = morph(matched, self._match_voice(query, opts.morph, opts), opts.morph_weight)
        return blend(matched, by_layer[WAVLM_LAYER].to(self.device, torch.float32), opts.strength)

    def _match_voice(self, query: Tensor, voice: Voice, options: ConvertOptions) -> Tensor:
        """kNN regression of (T, D) match-layer frames onto one voice -> (T, D) mean of its layer-6 frames."""
        voice.check_compatible(self.encoder.fingerprint, self.encoder.layer, self.encoder.name)
        if voice.num_frames < options.k:
            raise UsageError(f"voice {voice.name!r} has {voice.num_frames} frames, fewer than k={options.k}")
        keys = voice.keys(options.match_layer).to(self.device, torch.float32)
        synth = None if options.match_layer == voice.layer else voice.frames.to(self.device, torch.float32)
        return knn_regression(query, keys, options.k, synth=synth, weighting=options.knn_weighting)  # type: ignore[arg-type]

    def voices_for(self, voice: Voice, options: ConvertOptions) -> tuple[Voice, ConvertOptions]:
        """``voice`` and ``options.morph`` holding the match layer's frames (rebuilt where needed: ``with_layer``)."""
        self.check_depth(options.layers)
        voice = self.with_layer(voice, options.match_layer)
        if options.morph is not None:
            options = replace(options, morph=self.with_layer(options.morph, options.match_layer))
        return voice, options

    @torch.inference_mode()
    @oom.splits_batches("vocoding")
    def _vocode_batch(self, features: Tensor) -> Tensor:
        return self.vocoder(features.to(self.dtype)).reshape(features.shape[0], -1)

    @oom.retries_smaller("vocoding")
    def vocode(self, features: Tensor, progress: windows.Progress | None = None) -> np.ndarray:
        """(T, D) frames at 50 Hz -> (T * hop,) float32 waveform at ``sample_rate``, in windows of 10 s."""
        wav = windows.vocode_windowed(
            self._vocode_batch,
            features.to(self.device),
            hop=self.vocoder.config.hop,
            batch_size=self.batch_size,
            core=oom.vocoder_core(self),
            progress=progress,
        )
        return wav.cpu().numpy()

    # -- conversion -------------------------------------------------------------------------------------
    def output_rate(self, options: ConvertOptions = DEFAULT_OPTIONS) -> int:
        """Rate of what ``convert`` returns under ``options``: theirs, else the vocoder's."""
        return options.output_sample_rate or self.sample_rate

    def convert(
        self,
        source: AudioInput,
        target: Voice | AudioInput | Sequence[AudioInput],
        options: ConvertOptions = DEFAULT_OPTIONS,
        *,
        sample_rate: int | None = None,
        progress: windows.Progress | None = None,
    ) -> np.ndarray:
        """Say ``source``'s words in ``target``'s voice.

        Args:
            source: path, or array/tensor with ``sample_rate``.
            target: a ``Voice``, a ``.voice`` file, or reference audio (file, folder, list).
            options: k, loudness, trim (for a voice built from audio here), output rate, and the controls
                (strength, match layer, neighbour weighting, morph: see docs/controls.md).
            progress: called as ``progress(stage, done, total)`` over the windows of a long source.

        Returns:
            (N,) float32 at ``self.output_rate(options)``, as long as the source: the vocoder covers its whole
            20 ms frames and the remaining < 25 ms tail is silence.
        """
        self.check_depth(options.layers)
        voice = self.voice_from(target, trim=options.trim, match_layer=options.match_layer)
        wav = self.load_audio(source, sample_rate)
        return self.convert_batch([wav], voice, options, progress=progress)[0]

    def convert_batch(
        self,
        wavs: Sequence[np.ndarray],
        voice: Voice,
        options: ConvertOptions = DEFAULT_OPTIONS,
        *,
        progress: windows.Progress | None = None,
    ) -> list[np.ndarray]:
        """Convert several (N_i,) 16 kHz waveforms against one voice, encoding them in length-sorted batches.

        Each result equals ``convert`` of that waveform alone: (N_i,) float32 at ``self.output_rate(options)``.
        """
        outputs = []
        rate = self.output_rate(options)
        voice, options = self.voices_for(voice, options)
        layers = options.layers
        for wav, features in zip(wavs, self.encode_many(wavs, progress=progress, layers=layers), strict=True):
            out = self.vocode(self.match(split_layers(features, layers), voice, options), progress=progress)
            # Pad the < 25 ms tail that whole vocoder frames do not cover: the output is as long as the source.
            out = np.pad(out, (0, max(0, round(len(wav) * self.sample_rate / SAMPLE_RATE) - len(out))))
            if options.loudness is not None:
                out = audio.normalise_loudness(out, options.loudness, self.sample_rate)
            outputs.append(audio.resample(out, self.sample_rate, rate))
        return outputs

    def convert_file(
        self,
        source: str | os.PathLike[str],
        target: Voice | AudioInput | Sequence[AudioInput],
        output: str | os.PathLike[str],
        options: ConvertOptions = DEFAULT_OPTIONS,
    ) -> Path:
        """Convert ``source`` and write it atomically to ``output`` (format from the extension)."""
        wav = self.convert(source, target, options)
        rate = self.output_rate(options)
        return audio.save(Path(output), wav, sample_rate=rate, source_rate=rate)
