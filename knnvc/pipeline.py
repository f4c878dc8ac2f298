"""The object users hold: encoder + matcher + vocoder on one device, built once, used for many conversions.

    >>> from knnvc import KnnVC
    >>> vc = KnnVC.from_pretrained(device="auto")
    >>> voice = vc.build_voice(["target/01.wav", "target/02.wav"])
    >>> wav = vc.convert("source.wav", voice)          # (N,) float32 at 16 kHz, -16 LUFS

The pipeline owns ordering, batching and devices; the stages (``audio``, ``encoder``, ``matcher``, ``vocoder``)
own the computation.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Sequence
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
)
from knnvc.devices import exact_fp32, resolve_device, resolve_precision
from knnvc.encoder import WavLMEncoder, num_frames
from knnvc.errors import AudioError, UsageError
from knnvc.matcher import knn_indices
from knnvc.models import cached_encoder, cached_vocoder, compiled, prepare_encoder, prepare_vocoder
from knnvc.options import ConvertOptions
from knnvc.voice import VOICE_SUFFIX, SourceFile, Voice
from vocoder import Generator

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = ConvertOptions()

AudioInput = Union[str, os.PathLike, np.ndarray, Tensor]  # noqa: UP007 (a runtime alias on 3.10)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class VoiceBuilder:
    """Encoder half of the pipeline: audio in, layer-6 features and voices out (no vocoder needed).

    Args:
        encoder: a ``WavLMEncoder`` (see ``knnvc.checkpoints.load_encoder``).
        device: auto, cpu, cuda, cuda:N or mps.
        precision: auto, fp32, bf16 or fp16 for the networks; matching is always fp32.
        batch_size: waveforms (or windows of long audio), from any number of files, computed together.
        window_seconds: audio longer than this (plus context) is encoded in windows this long.
        context_seconds: context on each side of a window, computed and dropped.
        compile: ``torch.compile`` the networks (``warm_up`` compiles them and reports the time).

    The modules passed in are never changed: when they are not already in eval mode on the device in the
    precision asked for, the pipeline works on a prepared copy (``knnvc.models``).
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
        compile: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if window_seconds < 1 or context_seconds < 0:
            raise UsageError("the encoder window must be at least 1 s and its context at least 0 s")
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.encoder = prepare_encoder(encoder, self.device, self.dtype)
        self.compile = compile
        self.compile_seconds = 0.0
        if compile:  # a shallow copy holds the compiled network: the prepared (maybe shared) encoder is untouched
            self.encoder = copy.copy(self.encoder)
            self.encoder._modules = dict(self.encoder._modules)
            self.encoder.model, self.compile_seconds = compiled(self.encoder.model)
        self.batch_size = batch_size
        self.slack = windows.BUCKET_SLACK.get(self.device.type, windows.BUCKET_SLACK["default"])
        self.window = round(window_seconds * FRAME_RATE)  # frames kept per encoder window
        self.context = round(context_seconds * FRAME_RATE)  # frames of context on each side

    @classmethod
    def from_pretrained(
        cls,
        wavlm: str | Path = DEFAULT_WAVLM,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        offline: bool | None = None,
        compile: bool = False,
    ) -> VoiceBuilder:
        """The encoder half only (no vocoder is loaded), from the model cache: enough to build voices."""
        dev = resolve_device(device)  # fail on a bad device or precision before any download
        dtype = resolve_precision(precision, dev)
        encoder = cached_encoder(wavlm, dev, dtype, offline)
        return cls(encoder, device=dev, precision=precision, batch_size=batch_size, compile=compile)

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
    def _encode_batch(self, wavs: list[Tensor]) -> list[Tensor]:
        with exact_fp32(self.device, self.dtype):
            return [f.float() for f in self.encoder.encode_batch(wavs)]

    @oom.retries_smaller("encoding")
    def encode_many(self, wavs: Sequence[np.ndarray], progress: windows.Progress | None = None) -> list[Tensor]:
        """Encode 16 kHz mono waveforms; results keep the input order, (T_i, D) fp32 at 50 Hz, on the device.

        Inputs longer than a window are cut into overlapping windows (``knnvc.windows``); the windows and whole
        inputs of all the files form the batches together, bucketed by length, so memory stays flat in any
        input's length and short files share batches.
        """
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
            feats = self._encode_batch([tensors[p.item][slice(*p.window.sample_span())] for p in chunk])
            for p, f in zip(chunk, feats, strict=True):
                w = p.window
                kept[p.item].append((w.keep_start, f[w.keep_start - w.start : w.keep_stop - w.start]))
            done += len(chunk)
            if progress is not None:
                progress("encode", done, len(parts))
        return [_stitch(found) for found in kept]

    # -- voices -----------------------------------------------------------------------------------------
    def build_voice(
        self,
        references: AudioInput | Sequence[AudioInput],
        *,
        trim: bool = True,
        sample_rate: int | None = None,
        name: str | None = None,
    ) -> Voice:
        """Matching set from reference speech: a file, a folder, or a list of paths/arrays/tensors.

        Each reference has its leading and trailing silence trimmed (unless ``trim=False``); their frames are
        concatenated in the given order (a folder: sorted by path).
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
            digest = file_sha256(Path(label)) if isinstance(item, (str, os.PathLike)) else ""
            sources.append(SourceFile(path=label, sha256=digest, seconds=round(len(wav) / SAMPLE_RATE, 3)))
        frames = torch.cat(self.encode_many(wavs)).cpu()  # host copy: a voice outlives any device
        default_name = Path(items[0][0]).stem if len(items) == 1 else Path(items[0][0]).parent.name
        return Voice(
            frames=frames,
            encoder=self.encoder.name,
            encoder_fingerprint=self.encoder.fingerprint,
            layer=self.encoder.layer,
            sources=tuple(sources),
            name=name or default_name or "voice",
        )

    def _reference_items(self, references: AudioInput | Sequence[AudioInput]) -> list[tuple[str, AudioInput]]:
        if isinstance(references, (str, os.PathLike, np.ndarray, Tensor)):
            references = [references]
        items: list[tuple[str, AudioInput]] = []
        for i, ref in enumerate(references):
            if isinstance(ref, (str, os.PathLike)) and Path(ref).is_dir():
                found = audio.audio_files(Path(ref))
                if not found:
                    raise AudioError(
                        f"{ref}: folder holds no audio files ({', '.join(sorted(audio.AUDIO_EXTENSIONS))})"
                    )
                items += [(str(p), p) for p in found]
            elif isinstance(ref, (str, os.PathLike)):
                items.append((str(ref), ref))
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
    ) -> Voice:
        """A ``Voice`` as is, a ``.voice`` file loaded, or references (with ``sample_rate`` for arrays) built."""
        if isinstance(target, Voice):
            return target
        if isinstance(target, (str, os.PathLike)) and str(target).endswith(VOICE_SUFFIX):
            return Voice.load(Path(target))
        return self.build_voice(target, trim=trim, sample_rate=sample_rate)


class KnnVC(VoiceBuilder):
    """kNN-VC: WavLM layer-6 encoder, cosine kNN regression and a HiFi-GAN vocoder on one device.

    Get one with ``KnnVC.from_pretrained(...)`` (models loaded once per process, from the model cache), or
    ``KnnVC(encoder, vocoder, ...)`` with modules you built yourself (they are never changed).

    Args:
        encoder: a ``WavLMEncoder`` (see ``knnvc.checkpoints.load_encoder``).
        vocoder: a HiFi-GAN ``Generator`` trained on (prematched) layer-6 features.
        device, precision, batch_size, window_seconds, context_seconds, compile: as for ``VoiceBuilder``.
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
        compile: bool = False,
    ) -> None:
        if vocoder.config.input_dim != encoder.dim:
            raise UsageError(f"vocoder expects {vocoder.config.input_dim}-d features, encoder gives {encoder.dim}")
        super().__init__(
            encoder,
            device=device,
            precision=precision,
            batch_size=batch_size,
            window_seconds=window_seconds,
            context_seconds=context_seconds,
            compile=compile,
        )
        self.vocoder = prepare_vocoder(vocoder, self.device, self.dtype)
        self._vocoder_run: torch.nn.Module = self.vocoder
        if compile:
            self._vocoder_run, seconds = compiled(self.vocoder)
            self.compile_seconds += seconds
        self._voice: tuple[Voice, Tensor, Tensor] | None = None  # the voice held on the device

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        wavlm: str | Path = DEFAULT_WAVLM,
        vocoder: str | Path = DEFAULT_VOCODER,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        offline: bool | None = None,
        compile: bool = False,
        window_seconds: float = windows.ENCODER_CORE / FRAME_RATE,
        context_seconds: float = windows.ENCODER_CONTEXT / FRAME_RATE,
    ) -> KnnVC:
        """The one way to get a pipeline: WavLM and a vocoder by registry name, hub id or local path.

        Models come from the process-wide cache (``knnvc.models``): loaded (or downloaded) on first use, then
        shared by every pipeline asking for the same weights, device and precision.
        """
        dev = resolve_device(device)  # fail on a bad device or precision before any download
        dtype = resolve_precision(precision, dev)
        return cls(
            cached_encoder(wavlm, dev, dtype, offline),
            cached_vocoder(vocoder, dev, dtype, offline),
            device=dev,
            precision=precision,
            batch_size=batch_size,
            window_seconds=window_seconds,
            context_seconds=context_seconds,
            compile=compile,
        )

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
    def _held(self, voice: Voice) -> tuple[Tensor, Tensor]:
        """The voice's frames and their unit-norm copy, on the device (fp32), moved and normalised once."""
        if self._voice is None or self._voice[0] is not voice:
            voice.check_compatible(self.encoder.fingerprint, self.encoder.layer, self.encoder.name)
            frames = voice.frames.to(self.device, torch.float32)
            self._voice = (voice, frames, torch.nn.functional.normalize(frames, dim=-1))
        return self._voice[1], self._voice[2]

    @oom.retries_smaller("matching")
    def match_many(self, features: Sequence[Tensor], voice: Voice, k: int = DEFAULT_K) -> list[Tensor]:
        """kNN regression of several (T_i, D) sources onto one voice at once -> (T_i, D) fp32 on the device."""
        if voice.num_frames < k:
            raise UsageError(f"voice {voice.name!r} has {voice.num_frames} frames, fewer than k={k}")
        frames, normed = self._held(voice)
        query = torch.cat([f.to(self.device, torch.float32) for f in features])
        matched = frames[knn_indices(query, normed, k, keys_normalised=True)].mean(dim=-2)
        return list(matched.split([f.shape[0] for f in features]))

    def match(self, features: Tensor, voice: Voice, k: int = DEFAULT_K) -> Tensor:
        """kNN regression of (T, D) source frames onto the voice's matching set -> (T, D) fp32."""
        return self.match_many([features], voice, k)[0]

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
    def vocode_many(self, features: Sequence[Tensor], progress: windows.Progress | None = None) -> list[np.ndarray]:
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
            if progress is not None:
                progress("vocode", done, len(parts))
        host = out.cpu().numpy()
        return [host[offsets[i] : offsets[i + 1]] for i in range(len(features))]

    def vocode(self, features: Tensor, progress: windows.Progress | None = None) -> np.ndarray:
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
        progress: windows.Progress | None = None,
    ) -> np.ndarray:
        """Say ``source``'s words in ``target``'s voice.

        Args:
            source: path, or array/tensor with ``sample_rate``.
            target: a ``Voice``, a ``.voice`` file, or reference audio (file, folder, list).
            options: k, loudness, trim (for a voice built from audio here), output rate.
            progress: called as ``progress(stage, done, total)`` over the windows of a long source.

        Returns:
            (N,) float32 at ``self.output_rate(options)``, as long as the source: the vocoder covers its whole
            20 ms frames and the remaining < 25 ms tail is silence.
        """
        voice = self.voice_from(target, trim=options.trim)
        wav = self.load_audio(source, sample_rate)
        return self.convert_batch([wav], voice, options, progress=progress)[0]

    def synthesise(
        self,
        wavs: Sequence[np.ndarray],
        voice: Voice,
        options: ConvertOptions = DEFAULT_OPTIONS,
        *,
        progress: windows.Progress | None = None,
    ) -> list[np.ndarray]:
        """The compute of ``convert_batch``: (N_i,) 16 kHz waveforms -> raw vocoder output at ``sample_rate``,
        as long as each source, before ``finish`` (loudness, output rate). All files are batched together."""
        features = self.encode_many(wavs, progress=progress)
        outs = self.vocode_many(self.match_many(features, voice, options.k), progress=progress)
        # Pad the < 25 ms tail that whole vocoder frames do not cover: the output is as long as the source.
        lengths = [round(len(wav) * self.sample_rate / SAMPLE_RATE) for wav in wavs]
        return [np.pad(out, (0, max(0, n - len(out)))) for out, n in zip(outs, lengths, strict=True)]

    def finish(self, wav: np.ndarray, options: ConvertOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """The host-side chores after ``synthesise``: loudness, then the output rate (safe in worker threads)."""
        if options.loudness is not None:
            wav = audio.normalise_loudness(wav, options.loudness, self.sample_rate)
        return audio.resample(wav, self.sample_rate, self.output_rate(options))

    def convert_batch(
        self,
        wavs: Sequence[np.ndarray],
        voice: Voice,
        options: ConvertOptions = DEFAULT_OPTIONS,
        *,
        progress: windows.Progress | None = None,
    ) -> list[np.ndarray]:
        """Convert several (N_i,) 16 kHz waveforms against one voice, their windows batched across files.

        Each result equals ``convert`` of that waveform alone: (N_i,) float32 at ``self.output_rate(options)``.
        """
        return [self.finish(out, options) for out in self.synthesise(wavs, voice, options, progress=progress)]

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


def _stitch(parts: list[tuple[int, Tensor]]) -> Tensor:
    """Kept window frames of one input, (first frame, (T_w, D)) in any order -> (T, D) in frame order."""
    parts.sort(key=lambda part: part[0])
    return parts[0][1] if len(parts) == 1 else torch.cat([t for _, t in parts])
