"""The object users hold: encoder + matcher + vocoder on one device, built once, used for many conversions.

    >>> from knnvc import KnnVC
    >>> vc = KnnVC.from_pretrained(device="auto")
    >>> voice = vc.build_voice(["target/01.wav", "target/02.wav"])
    >>> wav = vc.convert("source.wav", voice)          # (N,) float32 at 16 kHz, -16 LUFS

The pipeline owns ordering, batching and devices; the stages (``audio``, ``encoder``, ``matcher``, ``vocoder``)
own the computation. The encoder half, ``VoiceBuilder``, lives in ``knnvc.builder``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from knnvc import audio, oom, windows
from knnvc.builder import AudioInput, VoiceBuilder
from knnvc.constants import DEFAULT_K, SAMPLE_RATE, WAVLM_LAYER
from knnvc.devices import exact_fp32
from knnvc.encoder import WavLMEncoder, split_layers
from knnvc.errors import UsageError
from knnvc.matcher import blend, knn_regression, morph
from knnvc.models import cached_vocoder, compiled, prepare_vocoder
from knnvc.options import DEFAULT_OPTIONS, DEFAULT_SETTINGS, ConvertOptions, Models, PipelineSettings
from knnvc.progress import OnProgress, Progress, report
from knnvc.voice import Voice
from vocoder import Generator

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_OPTIONS", "AudioInput", "KnnVC", "VoiceBuilder"]

log = logging.getLogger(__name__)

HELD_VOICES = 4  # voices (x match layers) kept on the device, normalised: the voice and a morph target


class KnnVC(VoiceBuilder):
    """kNN-VC: WavLM layer-6 encoder, cosine kNN regression and a HiFi-GAN vocoder on one device.

    Get one with ``KnnVC.from_pretrained(models, device=...)`` (``VoiceBuilder.from_pretrained``: models loaded
    once per process, from the model cache), or ``KnnVC(encoder, vocoder, settings)`` with modules you built
    yourself (they are never changed).

    Args:
        encoder: a ``WavLMEncoder`` (see ``knnvc.checkpoints.load_encoder``).
        vocoder: a HiFi-GAN ``Generator`` trained on (prematched) layer-6 features.
        settings: device, precision, batch size, windows and compile (``knnvc.options.PipelineSettings``).
    """

    def __init__(
        self, encoder: WavLMEncoder, vocoder: Generator, settings: PipelineSettings = DEFAULT_SETTINGS
    ) -> None:
        if vocoder.config.input_dim != encoder.dim:
            raise UsageError(f"vocoder expects {vocoder.config.input_dim}-d features, encoder gives {encoder.dim}")
        super().__init__(encoder, settings)
        self.vocoder = prepare_vocoder(vocoder, self.device, self.dtype)
        self._vocoder_run: torch.nn.Module = self.vocoder
        if self.compile:
            self._vocoder_run, seconds = compiled(self.vocoder)
            self.compile_seconds += seconds
        self._held_voices: dict[tuple[int, int], tuple[Voice, Tensor, Tensor]] = {}  # (id, layer): on the device

    @classmethod
    def _assemble(
        cls, encoder: WavLMEncoder, models: Models, settings: PipelineSettings, device: torch.device, dtype: torch.dtype
    ) -> Self:
        return cls(encoder, cached_vocoder(models.vocoder, device, dtype, models.offline), settings)

    @property
    def sample_rate(self) -> int:
        """Output rate of ``convert`` and ``vocode``: the vocoder's (16 kHz for the published ones)."""
        return int(self.vocoder.config.sample_rate)

    def warm_up(self, seconds: float = 2.0) -> float:
        """Run every network once on ``seconds`` of silence (compiling them with ``compile``); returns the time."""
        start = time.perf_counter()
        feats = self.encode_many([np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)])
        self.vocode_many(feats)
        took = time.perf_counter() - start
        if self.compile:
            self.compile_seconds += took
            log.info("torch.compile: %.1f s", self.compile_seconds)
        return took

    # -- matching ---------------------------------------------------------------------------------------
    def _held(self, voice: Voice, layer: int) -> tuple[Tensor, Tensor]:
        """The voice's layer-6 frames and its ``layer`` frames with unit norm, on the device (fp32), moved and
        normalised once per voice and layer (the last ``HELD_VOICES`` are kept)."""
        key = (id(voice), layer)
        found = self._held_voices.get(key)
        if found is None or found[0] is not voice:
            voice.check_compatible(self.encoder.fingerprint, self.encoder.layer, self.encoder.name)
            frames = voice.frames.to(self.device, torch.float32)
            keys = frames if layer == voice.layer else voice.keys(layer).to(self.device, torch.float32)
            if len(self._held_voices) >= HELD_VOICES:
                self._held_voices.clear()
            found = self._held_voices[key] = (voice, frames, torch.nn.functional.normalize(keys, dim=-1))
        return found[1], found[2]

    def _match_voice(self, query: Tensor, voice: Voice, options: ConvertOptions) -> Tensor:
        """kNN regression of (T, D) match-layer frames onto one voice -> (T, D) mean of its layer-6 frames."""
        voice.check_neighbours(options.k)
        frames, keys = self._held(voice, options.match_layer)
        return knn_regression(
            query, keys, options.k, synth=frames, weighting=options.knn_weighting, keys_normalised=True  # type: ignore[arg-type]
        )

    @oom.retries_smaller("matching")
    def match_many(
        self,
        features: Sequence[Tensor | Mapping[int, Tensor]],
        voice: Voice,
        options: ConvertOptions | int = DEFAULT_K,
    ) -> list[Tensor]:
        """Several sources matched onto one voice at once -> (T_i, D) fp32 layer 6 on the device (see ``match``)."""
        opts = options if isinstance(options, ConvertOptions) else ConvertOptions(k=options)
        layered = [f if isinstance(f, Mapping) else {WAVLM_LAYER: f} for f in features]
        for by_layer in layered:
            if opts.match_layer not in by_layer:
                raise UsageError(
                    f"match layer {opts.match_layer}: the source was encoded to layers {sorted(by_layer)}"
                )
        query = torch.cat([f[opts.match_layer].to(self.device, torch.float32) for f in layered])
        matched = self._match_voice(query, voice, opts)
        if opts.morph is not None:
            matched = morph(matched, self._match_voice(query, opts.morph, opts), opts.morph_weight)
        if opts.strength != 1.0:
            source = torch.cat([f[WAVLM_LAYER].to(self.device, torch.float32) for f in layered])
            matched = blend(matched, source, opts.strength)
        return list(matched.split([f[opts.match_layer].shape[0] for f in layered]))

    def match(
        self, features: Tensor | Mapping[int, Tensor], voice: Voice, options: ConvertOptions | int = DEFAULT_K
    ) -> Tensor:
        """The source's frames matched onto the voice, with every control of ``options`` -> (T, D) fp32 layer 6.

        ``features``: (T, D) layer-6 frames, or {layer: (T, D)} holding layer 6 and the match layer.
        ``options``: a ``ConvertOptions`` (k, match layer, weighting, morph, strength), or just k.
        The search runs on the match layer; the result averages the chosen frames' layer-6 features, morphs
        towards ``options.morph`` by ``morph_weight``, then blends with the source by ``strength``.
        """
        return self.match_many([features], voice, options)[0]

    def voices_for(self, voice: Voice, options: ConvertOptions) -> tuple[Voice, ConvertOptions]:
        """``voice`` and ``options.morph`` holding the match layer's frames (rebuilt where needed: ``with_layer``)."""
        self.check_depth(options.layers)
        voice = self.with_layer(voice, options.match_layer)
        if options.morph is not None and options.match_layer not in options.morph.layers:
            options = replace(options, morph=self.with_layer(options.morph, options.match_layer))
        return voice, options

    # -- vocoding ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    @oom.splits_batches("vocoding")
    def _vocode_batch(self, features: list[Tensor]) -> list[Tensor]:
        """Windows of (T_i, D) frames -> (T_i * hop,) waveforms, as one right-padded batch."""
        sizes = [f.shape[0] for f in features]
        batch = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
        lengths = None
        if min(sizes) < max(sizes):
            lengths = torch.tensor(sizes, pin_memory=self.device.type == "cuda").to(self.device, non_blocking=True)
        with exact_fp32(self.device, self.dtype):
            wavs = (self._vocoder_run(batch) if lengths is None else self._vocoder_run(batch, lengths)).reshape(
                len(features), -1
            )
        hop = self.vocoder.config.hop
        return [wav[: n * hop] for wav, n in zip(wavs, sizes, strict=True)]

    @oom.retries_smaller("vocoding")
    def vocode_many(self, features: Sequence[Tensor], progress: OnProgress | None = None) -> list[np.ndarray]:
        """(T_i, D) frames at 50 Hz -> (T_i * hop,) float32 waveforms at ``sample_rate``.

        The 10 s windows of all inputs form the batches together, bucketed by length; the waveforms come back
        to the host in one transfer at the end.
        """
        hop = self.vocoder.config.hop
        sizes = [f.shape[0] * hop for f in features]
        out = torch.empty(sum(sizes), dtype=torch.float32, device=self.device)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        parts = windows.pieces([f.shape[0] for f in features], oom.vocoder_core(self), windows.VOCODER_CONTEXT)
        done = 0
        for group in windows.buckets([p.frames for p in parts], self.batch_size, self.slack):
            chunk = [parts[g] for g in group]
            wavs = self._vocode_batch([features[p.item][p.window.start : p.window.stop] for p in chunk])
            for p, y in zip(chunk, wavs, strict=True):
                w, base = p.window, offsets[p.item]
                lo, hi = (w.keep_start - w.start) * hop, (w.keep_stop - w.start) * hop
                out[base + w.keep_start * hop : base + w.keep_stop * hop] = y[lo:hi]
            done += len(chunk)
            report(progress, Progress("vocode", done, len(parts)))
        host = out.cpu().numpy()
        return [host[offsets[i] : offsets[i + 1]] for i in range(len(features))]

    def vocode(self, features: Tensor, progress: OnProgress | None = None) -> np.ndarray:
        """(T, D) frames at 50 Hz -> (T * hop,) float32 waveform at ``sample_rate``, in windows of 10 s."""
        return self.vocode_many([features], progress=progress)[0]

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
        progress: OnProgress | None = None,
    ) -> np.ndarray:
        """Say ``source``'s words in ``target``'s voice.

        Args:
            source: path, or array/tensor with ``sample_rate``.
            target: a ``Voice``, a ``.voice`` file, or reference audio (file, folder, list).
            options: k, loudness, trim (for a voice built from audio here), output rate, and the controls
                (strength, match layer, neighbour weighting, morph: see docs/controls.md).
            progress: gets ``knnvc.progress.Progress`` events over the windows of a long source.

        Returns:
            (N,) float32 at ``self.output_rate(options)``, as long as the source: the vocoder covers its whole
            20 ms frames and the remaining < 25 ms tail is silence.
        """
        self.check_depth(options.layers)
        voice = self.voice_from(target, trim=options.trim, match_layer=options.match_layer)
        wav = self.load_audio(source, sample_rate)
        return self.convert_batch([wav], voice, options, progress=progress)[0]

    def finish(self, wav: np.ndarray, options: ConvertOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """The host-side chores after ``convert_batch(..., finish=False)``: loudness, then the output rate (safe in
        worker threads)."""
        if options.loudness is not None:
            wav = audio.normalise_loudness(wav, options.loudness, self.sample_rate)
        return audio.resample(wav, self.sample_rate, self.output_rate(options))

    def convert_batch(
        self,
        wavs: Sequence[np.ndarray],
        voice: Voice,
        options: ConvertOptions = DEFAULT_OPTIONS,
        *,
        progress: OnProgress | None = None,
        finish: bool = True,
    ) -> list[np.ndarray]:
        """Convert several (N_i,) 16 kHz waveforms against one voice, their windows batched across files.

        Each result equals ``convert`` of that waveform alone: (N_i,) float32 at ``self.output_rate(options)``.
        ``finish=False`` returns the raw vocoder output at ``sample_rate`` instead, for ``finish`` to complete
        elsewhere (a batch does it in worker threads). ``progress`` gets a ``convert`` event at the start, then
        ``encode``/``vocode`` events over the windows of all the inputs.
        """
        raw = self._synthesise(wavs, *self.voices_for(voice, options), progress)
        return [self.finish(out, options) for out in raw] if finish else raw

    def _synthesise(
        self, wavs: Sequence[np.ndarray], voice: Voice, options: ConvertOptions, progress: OnProgress | None
    ) -> list[np.ndarray]:
        """(N_i,) 16 kHz waveforms -> raw vocoder output at ``sample_rate``, each as long as its source (the
        intermediate frames and waveforms are freed on return, before any finishing)."""
        layers = options.layers
        report(progress, Progress("convert", 0, len(wavs)))
        encoded = self.encode_many(wavs, progress=progress, layers=layers)
        features = [split_layers(f, layers) for f in encoded]
        outs = self.vocode_many(self.match_many(features, voice, options), progress=progress)
        # Pad the < 25 ms tail that whole vocoder frames do not cover: the output is as long as the source.
        lengths = [round(len(wav) * self.sample_rate / SAMPLE_RATE) for wav in wavs]
        return [np.pad(out, (0, max(0, n - len(out)))) for out, n in zip(outs, lengths, strict=True)]

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
