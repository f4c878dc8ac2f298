"""The object users hold: ``KnnVC``, an encoder, a matcher and a lazily loaded vocoder on one device.

    >>> from knnvc import KnnVC
    >>> vc = KnnVC.from_pretrained(device="auto")
    >>> voice = vc.build_voice(["target/01.wav", "target/02.wav"])   # no vocoder is loaded for this
    >>> wav = vc.convert("source.wav", voice)          # (N,) float32 at 16 kHz, -16 LUFS

``KnnVC`` is built by composition: it holds a ``WavLMEncoder`` (``knnvc.nn.encoder``), the matching functions
(``knnvc.nn.matcher``) and a HiFi-GAN ``Generator`` (``vocoder``), which it loads on first use, so building voices
never loads the vocoder. It owns ordering, batching and devices; the stages own the computation.
``convert`` is the one-call form for one-off use, over the same process-wide model cache (``knnvc.weights.loaded``).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from knnvc.audio import decode, vad, write
from knnvc.audio.loudness import normalise_loudness
from knnvc.errors import AudioError, UsageError, VoiceError
from knnvc.files import check_not_inputs, sha256
from knnvc.nn import linear
from knnvc.nn.encoder import WavLMEncoder, num_frames, split_layers
from knnvc.nn.linear import AffineMap
from knnvc.nn.matcher import blend, knn_regression, morph
from knnvc.nn.mkl import fit_mkl, mkl_transfer
from knnvc.options import (
    DEFAULT_K,
    DEFAULT_LOUDNESS,
    DEFAULT_MODELS,
    DEFAULT_OPTIONS,
    DEFAULT_SETTINGS,
    FRAME_RATE,
    LINEAR_ADVISED_SECONDS,
    LINEAR_LASSO,
    LINEAR_MAX_FRAMES,
    MKL_BLOCK,
    MKL_MIN_SECONDS,
    PAIR_SUFFIX,
    RECEPTIVE_FIELD,
    SAMPLE_RATE,
    VOICE_SUFFIX,
    WAVLM_LAYER,
    ConvertOptions,
    Models,
    PipelineSettings,
)
from knnvc.progress import OnProgress, Progress, report
from knnvc.runtime import oom, windows
from knnvc.runtime.devices import auto_batch_size, exact_fp32, resolve_device, resolve_precision
from knnvc.voice import Pair, SourceFile, Voice
from knnvc.weights.loaded import cached_encoder, cached_vocoder, compiled, prepare_encoder, prepare_vocoder

if TYPE_CHECKING:
    from vocoder import Generator

__all__ = ["AudioInput", "KnnVC", "Target", "convert"]

log = logging.getLogger(__name__)

AudioInput = Union[str, os.PathLike, np.ndarray, Tensor]  # noqa: UP007 (a runtime alias on 3.10)
Target = Union[Voice, Pair]  # noqa: UP007 (what a source converts onto: a voice, or a pair for LinearVC)
HELD_VOICES = 4  # voices (x match layers) kept on the device, normalised: the voice and a morph target


def _first_time(path: Path, seen: set[Path]) -> bool:
    """True the first time a file is met (by its resolved path), and remembers it; a repeat is logged."""
    key = path.resolve()
    if key in seen:
        log.warning("reference %s is given more than once; counted once", path)
        return False
    seen.add(key)
    return True


class KnnVC:
    """kNN-VC: a WavLM layer-6 encoder, cosine kNN regression and a HiFi-GAN vocoder on one device.

    Get one with ``KnnVC.from_pretrained(models, device=...)`` (models loaded once per process, from the model
    cache), or ``KnnVC(encoder, vocoder, settings)`` with modules you built yourself (they are never changed: a
    module not already in eval mode on the device, in the precision asked for, is copied first).

    Args:
        encoder: a ``WavLMEncoder`` (see ``knnvc.weights.formats.load_encoder``).
        vocoder: a HiFi-GAN ``Generator`` trained on (prematched) layer-6 features, or None to load
            ``models.vocoder`` from the model cache the first time audio is synthesised (building voices and
            encoding never load it).
        settings: device, precision, batch size, windows and compile (``knnvc.options.PipelineSettings``).
        models: where a vocoder left as None comes from (``models.vocoder``, ``models.offline``).

    Return types follow one rule: **features are torch tensors on the pipeline's device; audio is numpy on the
    host.** ``encode`` and ``match`` return a ``torch.Tensor`` (T, D) float32 on ``device`` (D = 1024 for
    WavLM-Large, 50 frames a second), ready for the next step there; ``load_audio``, ``vocode`` and ``convert``
    return an ``np.ndarray`` (N,) float32, because what follows audio (loudness, resampling, writing) runs on
    the CPU.

    Attributes:
        encoder: the prepared ``WavLMEncoder``; ``vocoder`` (a property) is the prepared ``Generator``.
        settings: device, precision, batch size, windows and compile, as given.
        device: the ``torch.device`` it runs on (``settings.device`` resolved).
        dtype: the compute precision (``settings.precision`` resolved).
        batch_size: waveforms, or windows of long audio, computed together.
    """

    def __init__(
        self,
        encoder: WavLMEncoder,
        vocoder: Generator | None = None,
        settings: PipelineSettings = DEFAULT_SETTINGS,
        *,
        models: Models = DEFAULT_MODELS,
    ) -> None:
        self.settings, self.models = settings, models
        self.device = resolve_device(settings.device)
        self.dtype = resolve_precision(settings.precision, self.device)
        self.encoder = prepare_encoder(encoder, self.device, self.dtype)
        self.compile_seconds = 0.0
        if settings.compile:  # a shallow copy holds the compiled network: the prepared (maybe shared) one is untouched
            self.encoder = copy.copy(self.encoder)
            self.encoder._modules = dict(self.encoder._modules)
            self.encoder.model, self.compile_seconds = compiled(self.encoder.model)
        self.batch_size = settings.batch_size or auto_batch_size(self.device)
        self.slack = windows.BUCKET_SLACK.get(self.device.type, windows.BUCKET_SLACK["default"])
        self.window = round(settings.window_seconds * FRAME_RATE)  # frames kept per encoder window
        self.context = round(settings.context_seconds * FRAME_RATE)  # frames of context on each side
        self._vocoder: Generator | None = None
        self._vocoder_run: torch.nn.Module | None = None
        if vocoder is not None:
            self._set_vocoder(prepare_vocoder(vocoder, self.device, self.dtype))
        self._held_voices: dict[tuple[int, int], tuple[Voice, Tensor, Tensor]] = {}  # (id, layer): on the device
        self._held_maps: dict[int, tuple[Pair, AffineMap]] = {}  # id(pair): its map on the device

    @classmethod
    def from_pretrained(
        cls, models: Models = DEFAULT_MODELS, *, device: str | None = None, match_layer: int = WAVLM_LAYER
    ) -> KnnVC:
        """The one way to get a pipeline from published or local weights.

        Models come from the process-wide cache (``knnvc.weights.loaded``): loaded (or downloaded) on first use,
        then shared by every pipeline asking for the same weights, device and precision. The encoder loads here;
        the vocoder when audio is first synthesised (``vocoder``), so building voices never loads it.

        Args:
            models: the weights by registry name, hub id or local path, and how they run (``PipelineSettings``).
            device: short for ``models.settings.device``.
            match_layer: the deepest match layer it will be asked for (WavLM runs max(it, 6) layers).
        """
        settings = models.settings.on(device)
        dev = resolve_device(settings.device)  # a bad device or precision fails before any download
        dtype = resolve_precision(settings.precision, dev)
        encoder = cached_encoder(models.wavlm, dev, dtype, models.offline, max(match_layer, WAVLM_LAYER))
        return cls(encoder, None, settings, models=models)

    @property
    def vocoder(self) -> Generator:
        """The prepared HiFi-GAN, loaded from ``models.vocoder`` (the model cache) the first time it is needed."""
        return self.load_vocoder()

    def load_vocoder(self) -> Generator:
        """Load the vocoder now, if it is not loaded yet, and return it.

        A front end that will synthesise calls this before any work, so that missing or bad vocoder weights fail
        at once (``WeightsError``) rather than after the first file has been encoded.
        """
        if self._vocoder is None:
            m = self.models
            self._set_vocoder(cached_vocoder(m.vocoder, self.device, self.dtype, m.offline))
        assert self._vocoder is not None
        return self._vocoder

    def _set_vocoder(self, vocoder: Generator) -> None:
        if vocoder.config.input_dim != self.encoder.dim:
            raise UsageError(f"vocoder expects {vocoder.config.input_dim}-d features, encoder gives {self.encoder.dim}")
        self._vocoder = self._vocoder_run = vocoder
        if self.settings.compile:
            self._vocoder_run, seconds = compiled(vocoder)
            self.compile_seconds += seconds

    # -- audio in ---------------------------------------------------------------------------------------
    def load_audio(self, source: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """A path, array or tensor -> an ``np.ndarray`` (N,) float32, mono at 16 kHz, on the host. Arrays and
        tensors need ``sample_rate``."""
        if isinstance(source, (str, os.PathLike)):
            return decode.load(Path(source), min_samples=RECEPTIVE_FIELD)
        if sample_rate is None:
            raise UsageError("in-memory audio needs its sample_rate")
        return decode.to_mono_16k(source, sample_rate)

    # -- stages -----------------------------------------------------------------------------------------
    def encode(
        self, source: AudioInput, sample_rate: int | None = None, progress: OnProgress | None = None
    ) -> Tensor:
        """Layer-6 features of one input: a ``torch.Tensor`` (T, D) float32 at 50 Hz, on the pipeline's device."""
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

        Inputs longer than a window are cut into overlapping windows (``knnvc.runtime.windows``); the windows and whole
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
        concatenated in the given order (a folder: sorted by path). Building a voice never loads the vocoder.

        Args:
            references: a path (file or folder), an array or tensor, or a list of those.
            trim: trim silence from both ends of each reference (silero-vad).
            sample_rate: the rate of arrays and tensors among the references.
            name: the voice's name (default: the reference file's stem, or the name of the references' folder).
            match_layer: also keep this layer's frames when it is not 6 (the encoder must run that deep).

        Returns:
            A ``Voice`` holding layer-6 frames (and ``match_layer``'s), on the CPU (a pipeline moves the frames it
            matches against to its device once, and keeps them there).
        """
        items = self._reference_items(references)
        wavs, sources = [], []
        for label, item in items:
            wav = self.load_audio(item, sample_rate)
            if trim:
                wav = vad.trim_silence(wav)
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

    def build_pair(
        self,
        source_speaker: AudioInput | Sequence[AudioInput],
        target: Voice | AudioInput | Sequence[AudioInput],
        *,
        method: str = "linear",
        parallel: bool = False,
        lasso: float | None = None,
        mkl_block: int = MKL_BLOCK,
        trim: bool = True,
        name: str | None = None,
    ) -> Pair:
        """Fit a map from one source speaker to one target: LinearVC's W, or an MKL-VC map on the speaker's
        recordings (what a stream uses). Building a pair never loads the vocoder.

        Args:
            source_speaker: the source speaker's recordings: a file, a folder (its audio files, sorted) or a list.
            target: the target's references (a file, a folder, a list) or a ``Voice`` / ``.voice`` file.
            method: ``linear`` (LinearVC) or ``mkl`` (MKL-VC, ``mkl_block`` dimensions at a time).
            parallel: LinearVC on parallel speech: source and target files with the same name say the same
                words; each pair is matched on its own and W is a lasso fit (needs reference files, not a voice).
            lasso: the lasso's alpha; None: least squares when not parallel, 0.3 when parallel; 0: least squares.
            trim: trim silence from both ends of each recording (silero-vad).
            name: the pair's name (default ``<source folder>2<target name>``).

        Returns:
            A ``Pair`` on the CPU.
        """
        if method not in ("linear", "mkl"):
            raise UsageError(f"a pair is fitted by method linear or mkl, got {method!r}")
        if isinstance(target, Pair) or (isinstance(target, (str, os.PathLike)) and str(target).endswith(PAIR_SUFFIX)):
            raise UsageError("a pair maps onto a voice or reference speech, not onto another pair")
        if method == "mkl" and (isinstance(mkl_block, bool) or not isinstance(mkl_block, int) or mkl_block < 1):
            raise UsageError(f"MKL block size must be a whole number, at least 1; got {mkl_block}")
        if method == "mkl" and parallel:
            raise UsageError("MKL-VC fits on the two speakers' statistics, not on parallel utterances: leave out "
                             "parallel")  # fmt: skip
        if lasso is not None and (lasso < 0 or method == "mkl"):
            raise UsageError(f"the lasso's alpha is LinearVC's, 0 or more (0: least squares); got {lasso}")
        sources: Sequence[SourceFile]
        targets: Sequence[SourceFile]
        fitted: tuple[Tensor, Tensor | None, tuple[int, int]]
        if parallel:
            sources, targets, fitted = self._parallel_fit(source_speaker, target, trim, lasso)
        else:
            source_voice = self.build_voice(source_speaker, trim=trim)
            target_voice = self.voice_from(target, trim=trim)
            assert isinstance(target_voice, Voice)
            target_voice.check_compatible(self.encoder.fingerprint, self.encoder.layer, self.encoder.name)
            sources, targets = source_voice.sources, target_voice.sources
            fitted = self._speaker_fit(source_voice.frames, target_voice, method, lasso, mkl_block)
        matrix, bias, used = fitted
        default = f"{_speaker_name(source_speaker)}2{_speaker_name(target)}"
        return Pair(
            matrix=matrix.cpu().contiguous(),
            bias=None if bias is None else bias.cpu().contiguous(),
            method=method,
            encoder=self.encoder.name,
            encoder_fingerprint=self.encoder.fingerprint,
            layer=self.encoder.layer,
            sources=tuple(sources),
            targets=tuple(targets),
            source_frames=used[0],
            target_frames=used[1],
            parallel=parallel,
            lasso=None if method == "mkl" else _alpha(lasso, parallel),
            mkl_block=mkl_block if method == "mkl" else None,
            target_voice=str(target) if isinstance(target, (str, os.PathLike)) and Path(target).is_file()
            and str(target).endswith(VOICE_SUFFIX) else "",
            trim=trim,
            name=name or default,
        )

    def _speaker_fit(
        self, source: Tensor, target: Voice, method: str, lasso: float | None, mkl_block: int
    ) -> tuple[Tensor, Tensor | None, tuple[int, int]]:
        """(matrix, bias, (source frames, target frames) used) of a non-parallel fit."""
        _check_source_speaker(source, method)
        if method == "mkl":
            _check_mkl_voice(target)
            fitted = fit_mkl(source.float(), target.frames.float(), mkl_block)
            return fitted.matrix, fitted.bias, (source.shape[0], target.num_frames)
        if target.counts is not None:
            raise UsageError(f"voice {target.label} is compact (cluster means): LinearVC matches real frames; use "
                             "the full voice or its references")  # fmt: skip
        weights = linear.fit_nonparallel(source.float(), target.frames.float(), _alpha(lasso, False))
        return weights, None, (min(source.shape[0], LINEAR_MAX_FRAMES), min(target.num_frames, LINEAR_MAX_FRAMES))

    def _parallel_fit(
        self, source_speaker: AudioInput | Sequence[AudioInput], target: object, trim: bool, lasso: float | None
    ) -> tuple[list[SourceFile], list[SourceFile], tuple[Tensor, Tensor | None, tuple[int, int]]]:
        """LinearVC on parallel files: the same file name on both sides is one utterance pair."""
        if isinstance(target, Voice) or (isinstance(target, (str, os.PathLike)) and str(target).endswith(VOICE_SUFFIX)):
            raise UsageError("a parallel pair pairs files by name: give the target's recordings, not a voice")
        left = {Path(label).name: item for label, item in self._reference_items(source_speaker)}
        right = {Path(label).name: item for label, item in self._reference_items(target)}  # type: ignore[arg-type]
        names = sorted(left.keys() & right.keys())
        if not names:
            raise UsageError("no file names in common between the source speaker's and the target's recordings: a "
                             "parallel pair needs the same name for the same words")  # fmt: skip
        for unpaired in sorted(left.keys() ^ right.keys()):
            log.warning("%s has no namesake on the other side: left out of the parallel fit", unpaired)
        pairs: list[tuple[Tensor, Tensor]] = []
        sources: list[SourceFile] = []
        targets: list[SourceFile] = []
        for key in names:
            one = self.build_voice([left[key]], trim=trim)
            two = self.build_voice([right[key]], trim=trim)
            pairs.append((one.frames.float(), two.frames.float()))
            sources += one.sources
            targets += two.sources
        _check_source_speaker(torch.cat([a for a, _ in pairs]), "linear")
        weights = linear.fit_parallel(pairs, _alpha(lasso, True))
        used = (sum(a.shape[0] for a, _ in pairs), sum(b.shape[0] for _, b in pairs))
        return sources, targets, (weights, None, used)

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
        """``voice`` holding ``layer``'s frames: as is, or re-encoded from its reference files.

        A voice saved before ``--match-layer L`` was asked for holds layer-6 frames only. When its references
        are still where they were and unchanged (sha256), they are re-encoded to layer L once, checked to give
        the same layer-6 frames, and the layer-L frames are added; otherwise ``Voice.keys`` raises the
        ``VoiceError`` that says how to rebuild the voice.
        """
        if layer in voice.layers:
            return voice
        paths = [Path(src.path) for src in voice.sources]
        unchanged = all(p.is_file() for p in paths) and all(
            src.sha256 and sha256(p) == src.sha256 for p, src in zip(paths, voice.sources, strict=True)
        )
        if voice.counts is not None or not paths or not unchanged:
            voice.keys(layer)  # raises the VoiceError that says how to rebuild
        for trim in [voice.trim] if voice.trim is not None else [True, False]:
            rebuilt = self.build_voice(paths, trim=trim, name=voice.name, match_layer=layer)
            if rebuilt.num_frames == voice.num_frames and _same_frames(rebuilt.frames, voice.frames):
                log.warning("voice %s holds no layer-%d frames: rebuilt them from its %d references; save a voice "
                            "with `knnvc voice build --match-layer %d` to skip this", voice.label, layer,
                            len(paths), layer)  # fmt: skip
                return voice.with_layers({layer: rebuilt.match_frames[layer]})
        raise VoiceError(f"voice {voice.label}: its references no longer give the frames it holds; "
                         f"rebuild it with `knnvc voice build REFERENCES --match-layer {layer}`")  # fmt: skip

    def _reference_items(self, references: AudioInput | Sequence[AudioInput]) -> list[tuple[str, AudioInput]]:
        if isinstance(references, (str, os.PathLike, np.ndarray, Tensor)):
            references = [references]
        items: list[tuple[str, AudioInput]] = []
        seen: set[Path] = set()  # a file named twice, or also inside a folder given, is counted once
        for i, ref in enumerate(references):
            if isinstance(ref, (str, os.PathLike)) and Path(ref).is_dir():
                found = decode.audio_files(Path(ref))
                if not found:
                    raise AudioError(
                        f"{ref}: folder holds no audio files ({', '.join(sorted(decode.AUDIO_EXTENSIONS))})"
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
        target: Target | AudioInput | Sequence[AudioInput],
        *,
        trim: bool = True,
        sample_rate: int | None = None,
        match_layer: int = WAVLM_LAYER,
    ) -> Target:
        """A ``Voice`` or ``Pair`` as is, a ``.voice`` or ``.pair`` file loaded, or references (with
        ``sample_rate`` for arrays) built into a voice.

        A voice built here holds ``match_layer``'s frames too; see ``with_layer`` for one that lacks them.
        """
        if isinstance(target, (Voice, Pair)):
            return target
        if isinstance(target, (str, os.PathLike)) and str(target).endswith(VOICE_SUFFIX):
            return Voice.load(Path(target))
        if isinstance(target, (str, os.PathLike)) and str(target).endswith(PAIR_SUFFIX):
            return Pair.load(Path(target))
        return self.build_voice(target, trim=trim, sample_rate=sample_rate, match_layer=match_layer)

    @property
    def sample_rate(self) -> int:
        """Output rate of ``convert`` and ``vocode``: the vocoder's (16 kHz for the published ones)."""
        return int(self.vocoder.config.sample_rate)

    def warm_up(self, seconds: float = 2.0) -> float:
        """Run every network once on ``seconds`` of silence (compiling them with ``compile``); returns the time."""
        self.load_vocoder()  # loading is not compiling: it stays out of the time
        start = time.perf_counter()
        feats = self.encode_many([np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)])
        self.vocode_many(feats)
        took = time.perf_counter() - start
        if self.settings.compile:
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

    def _held_map(self, pair: Pair) -> AffineMap:
        """``pair``'s map on the device (float32 on MPS, which has no float64), checked and moved once per pair
        (the last ``HELD_VOICES`` are kept): a stream applies it every step."""
        found = self._held_maps.get(id(pair))
        if found is None or found[0] is not pair:
            pair.check_compatible(self.encoder.fingerprint, self.encoder.layer, self.encoder.name)
            whole = pair.map
            dtype = torch.float32 if self.device.type == "mps" else whole.matrix.dtype
            if len(self._held_maps) >= HELD_VOICES:
                self._held_maps.clear()
            found = self._held_maps[id(pair)] = (
                pair, AffineMap(whole.matrix.to(self.device, dtype), whole.bias.to(self.device, dtype))
            )
        return found[1]

    def _match_voice(self, query: Tensor, voice: Voice, options: ConvertOptions) -> Tensor:
        """kNN regression of (T, D) match-layer frames onto one voice -> (T, D) mean of its layer-6 frames."""
        voice.check_neighbours(options.k)
        frames, keys = self._held(voice, options.match_layer)
        return knn_regression(
            query, keys, options.k, synth=frames, weighting=options.knn_weighting, keys_normalised=True  # type: ignore[arg-type]
        )

    def _mapped(self, source: Tensor, target: Target, options: ConvertOptions) -> Tensor:
        """(T, D) layer-6 frames of one source utterance mapped by MKL-VC (onto a voice) or by a pair's map."""
        if isinstance(target, Pair):
            return self._held_map(target)(source)
        _check_mkl_voice(target)
        if source.shape[0] < 2:
            raise AudioError(f"a source of {source.shape[0]} frame is too short for MKL-VC: its statistics need at "
                             "least 2 frames (45 ms)")  # fmt: skip
        where = torch.device("cpu") if self.device.type == "mps" else self.device  # MPS has no float64
        frames = target.frames.to(where, torch.float32)
        return mkl_transfer(source.to(where), frames, options.mkl_block).to(self.device, torch.float32)

    @oom.retries_smaller("matching")
    def match_many(
        self,
        features: Sequence[Tensor | Mapping[int, Tensor]],
        voice: Target,
        options: ConvertOptions | int = DEFAULT_K,
    ) -> list[Tensor]:
        """Several sources matched onto one voice (or mapped by a pair) at once -> (T_i, D) fp32 layer 6 on the
        device (see ``match``)."""
        opts = options if isinstance(options, ConvertOptions) else ConvertOptions(k=options)
        layered = [f if isinstance(f, Mapping) else {WAVLM_LAYER: f} for f in features]
        for by_layer in layered:
            if opts.match_layer not in by_layer:
                raise UsageError(
                    f"match layer {opts.match_layer}: the source was encoded to layers {sorted(by_layer)}"
                )
        if method_for(voice, opts) != "knn":  # MKL and LinearVC map each utterance on its own
            matched = torch.cat([self._mapped(f[WAVLM_LAYER].to(self.device, torch.float32), voice, opts)
                                 for f in layered])  # fmt: skip
        else:
            assert isinstance(voice, Voice)
            query = torch.cat([f[opts.match_layer].to(self.device, torch.float32) for f in layered])
            matched = self._match_voice(query, voice, opts)
            second = _morph_voice(opts)
            if second is not None:
                matched = morph(matched, self._match_voice(query, second, opts), opts.morph_weight)
        if opts.strength != 1.0:
            source = torch.cat([f[WAVLM_LAYER].to(self.device, torch.float32) for f in layered])
            matched = blend(matched, source, opts.strength)
        return list(matched.split([f[opts.match_layer].shape[0] for f in layered]))

    def match(
        self, features: Tensor | Mapping[int, Tensor], voice: Target, options: ConvertOptions | int = DEFAULT_K
    ) -> Tensor:
        """The source's frames matched onto the voice, with every control of ``options``.

        kNN (``options.method`` ``knn``): the search runs on the match layer; the result averages the chosen
        frames' layer-6 features and morphs towards ``options.morph`` by ``morph_weight``. MKL-VC (``mkl``): the
        source utterance's frames are mapped by the optimal-transport map between its statistics and the voice's.
        A pair: its map (LinearVC's W). Then every method blends with the source by ``strength``.

        Args:
            features: (T, D) layer-6 frames (what ``encode`` returns), or {layer: (T, D)} holding layer 6 and
                the match layer.
            voice: the voice to match onto, or a ``Pair``.
            options: a ``ConvertOptions`` (method, k, match layer, weighting, morph, strength), or just k.

        Returns:
            A ``torch.Tensor`` (T, D) float32 of layer-6 features, on the pipeline's device.
        """
        return self.match_many([features], voice, options)[0]

    def check_target(self, target: Target, options: ConvertOptions) -> None:
        """Refuse, before any work, a target ``options`` cannot convert onto: a method that does not fit it, too few
        frames for k (kNN) or for MKL-VC's statistics (1 s), an encoder it was not made with."""
        method = method_for(target, options)
        target.check_compatible(self.encoder.fingerprint, self.encoder.layer, self.encoder.name)
        if method == "knn":
            assert isinstance(target, Voice)
            target.check_neighbours(options.k)
        elif isinstance(target, Voice):
            _check_mkl_voice(target)

    def voices_for(self, voice: Target, options: ConvertOptions) -> tuple[Target, ConvertOptions]:
        """``voice`` and ``options.morph`` holding the match layer's frames (rebuilt where needed: ``with_layer``);
        a pair as it is, once ``options`` are checked to suit it."""
        if method_for(voice, options) != "knn":
            return voice, options
        assert isinstance(voice, Voice)
        self.check_depth(options.layers)
        voice = self.with_layer(voice, options.match_layer)
        second = _morph_voice(options)
        if second is not None and options.match_layer not in second.layers:
            options = replace(options, morph=self.with_layer(second, options.match_layer))
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
        self.load_vocoder()  # loaded before the first batch (``convert_batch``); a no-op here
        run = self._vocoder_run
        assert run is not None
        with exact_fp32(self.device, self.dtype):
            wavs = (run(batch) if lengths is None else run(batch, lengths)).reshape(
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
        """(T, D) frames at 50 Hz -> an ``np.ndarray`` (T * hop,) float32 waveform at ``sample_rate``, on the host,
        computed in windows of 10 s."""
        return self.vocode_many([features], progress=progress)[0]

    # -- conversion -------------------------------------------------------------------------------------
    def output_rate(self, options: ConvertOptions = DEFAULT_OPTIONS) -> int:
        """Rate of what ``convert`` returns under ``options``: theirs, else the vocoder's."""
        return options.output_sample_rate or self.sample_rate

    def convert(
        self,
        source: AudioInput,
        target: Target | AudioInput | Sequence[AudioInput],
        options: ConvertOptions = DEFAULT_OPTIONS,
        *,
        sample_rate: int | None = None,
        progress: OnProgress | None = None,
    ) -> np.ndarray:
        """Say ``source``'s words in ``target``'s voice.

        Args:
            source: path, or array/tensor with ``sample_rate``.
            target: a ``Voice``, a ``.voice`` file, or reference audio (file, folder, list); or a ``Pair`` or
                ``.pair`` file (LinearVC).
            options: the method, k, loudness, trim (for a voice built from audio here), output rate, and the
                controls (strength, match layer, neighbour weighting, morph: see docs/controls.md).
            progress: gets ``knnvc.progress.Progress`` events over the windows of a long source.

        Returns:
            An ``np.ndarray`` (N,) float32 at ``self.output_rate(options)``, on the host, as long as the source:
            the vocoder covers its whole 20 ms frames and the remaining < 25 ms tail is silence.
        """
        self.check_depth(options.layers)
        voice = self.voice_from(target, trim=options.trim, match_layer=options.match_layer)
        wav = self.load_audio(source, sample_rate)
        return self.convert_batch([wav], voice, options, progress=progress)[0]

    def finish(self, wav: np.ndarray, options: ConvertOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """The host-side chores after ``convert_batch(..., finish=False)``: loudness, then the output rate (safe in
        worker threads)."""
        if options.loudness is not None:
            wav = normalise_loudness(wav, options.loudness, self.sample_rate)
        return decode.resample(wav, self.sample_rate, self.output_rate(options))

    def convert_batch(
        self,
        wavs: Sequence[np.ndarray],
        voice: Target,
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
        self.load_vocoder()  # missing vocoder weights fail before any encoding, outside the out-of-memory retries
        raw = self._synthesise(wavs, *self.voices_for(voice, options), progress)
        return [self.finish(out, options) for out in raw] if finish else raw

    def _synthesise(
        self, wavs: Sequence[np.ndarray], voice: Target, options: ConvertOptions, progress: OnProgress | None
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
        target: Target | AudioInput | Sequence[AudioInput],
        output: str | os.PathLike[str],
        options: ConvertOptions = DEFAULT_OPTIONS,
    ) -> Path:
        """Convert ``source`` and write it atomically to ``output`` (format from the extension).

        ``output`` may not be one of the inputs (the source, a reference file, a voice file, by any name): that is
        a ``UsageError`` before anything is computed.
        """
        refuse_overwriting_inputs(output, source, target, options.morph)
        wav = self.convert(source, target, options)
        rate = self.output_rate(options)
        return write.save(Path(output), wav, sample_rate=rate, source_rate=rate)


def _stitch(parts: list[tuple[int, Tensor]]) -> Tensor:
    """Kept window frames of one input, (first frame, (T_w, D)) in any order -> (T, D) in frame order."""
    parts.sort(key=lambda part: part[0])
    return parts[0][1] if len(parts) == 1 else torch.cat([t for _, t in parts])


def _paths(given: object) -> list[Path]:
    """The files behind an input as a caller gave it: a path (a folder: its audio files), a list of them, or
    nothing for in-memory audio and ``Voice`` objects."""
    if isinstance(given, (str, os.PathLike)):
        path = Path(given)
        return decode.audio_files(path) if path.is_dir() else [path]
    if isinstance(given, Sequence) and not isinstance(given, (str, bytes)):
        return [p for item in given for p in _paths(item)]
    return []


def refuse_overwriting_inputs(output: str | os.PathLike[str], source: object, *targets: object) -> None:
    """``UsageError`` when ``output`` is the source or a file of any target (references, voices), by any name."""
    inputs = {"source": _paths(source), "reference": [p for t in targets for p in _paths(t)]}
    check_not_inputs([Path(output)], inputs)


def method_for(target: Target, options: ConvertOptions) -> str:
    """The matching step ``options`` ask for on ``target``: a pair always maps with its own map (``linear`` for
    LinearVC's, ``mkl`` for a speaker-level MKL map); a voice takes ``knn`` or ``mkl``. ``UsageError`` when they do
    not fit together."""
    if isinstance(target, Pair):
        if options.method not in ("knn", target.method):  # knn: the default, which a pair's map replaces
            held = {"linear": "LinearVC's map", "mkl": "a speaker-level MKL-VC map"}[target.method]
            per_utterance = " (method mkl onto a voice or references fits a map per utterance)" * (
                options.method == "mkl"
            )
            raise UsageError(f"pair {target.label} holds a fixed map, {held}, not method {options.method}'s: leave "
                             f"the method out{per_utterance}")  # fmt: skip
        for control in options.knn_controls():
            raise UsageError(f"{control} is a control of kNN matching; pair {target.label} converts with its fixed "
                             "map: leave it out")  # fmt: skip
        return target.method
    if options.method == "linear":
        raise UsageError("LinearVC converts with a pair, a map fitted from a source speaker's recordings: build "
                         "one (`knnvc pair build SOURCE_SPEAKER TARGET -o NAME.pair`) and give it as the target")
    return options.method


def _alpha(lasso: float | None, parallel: bool) -> float | None:
    """The lasso's alpha a LinearVC fit uses: as asked (0: None, least squares), else 0.3 when parallel."""
    if lasso is None:
        return LINEAR_LASSO if parallel else None
    return None if lasso == 0 else lasso


def _speaker_name(given: object) -> str:
    """A short name for a speaker's recordings: a folder's or file's stem, a voice's name."""
    if isinstance(given, Voice):
        return given.name
    if isinstance(given, (str, os.PathLike)):
        return Path(given).stem or Path(given).resolve().name
    if isinstance(given, Sequence) and not isinstance(given, (str, bytes)) and given:
        return _speaker_name(given[0])
    return "speaker"


def _check_source_speaker(frames: Tensor, method: str) -> None:
    """``UsageError`` unless a source speaker's (N, D) frames can fit a pair: MKL-VC needs ``MKL_MIN_SECONDS`` of
    speech; LinearVC at least D frames (else W is underdetermined); below its authors' 3 minutes it is logged (info)."""
    seconds, width = frames.shape[0] / FRAME_RATE, frames.shape[1]
    if method == "mkl" and frames.shape[0] < round(MKL_MIN_SECONDS * FRAME_RATE):
        raise UsageError(f"the source speaker has {seconds:.2f} s of speech; MKL-VC needs at least "
                         f"{MKL_MIN_SECONDS:g} s of it: give more of the source speaker's recordings")  # fmt: skip
    if method == "linear" and frames.shape[0] < width:
        raise UsageError(f"the source speaker has {seconds:.2f} s of speech ({frames.shape[0]} frames); LinearVC fits "
                         f"a {width}x{width} W and needs at least {width} frames ({width / FRAME_RATE:.1f} s): give "
                         "more of the source speaker's recordings")  # fmt: skip
    if method == "linear" and seconds < LINEAR_ADVISED_SECONDS:
        log.info("the source speaker has %.0f s of speech; LinearVC's authors advise about %d minutes per speaker",
                 seconds, LINEAR_ADVISED_SECONDS // 60)  # fmt: skip


def _check_mkl_voice(voice: Voice) -> None:
    """``UsageError`` unless ``voice`` can be MKL-VC's target: full frames, at least ``MKL_MIN_SECONDS`` of them."""
    if voice.counts is not None:
        raise UsageError(f"voice {voice.label} is compact (cluster means, not frames): MKL-VC needs the frames' "
                         "statistics; use the full voice or its references")  # fmt: skip
    if voice.num_frames < round(MKL_MIN_SECONDS * FRAME_RATE):
        raise UsageError(
            f"voice {voice.label} has {voice.seconds:.2f} s of speech{' after trimming silence' * bool(voice.trim)}; "
            f"MKL-VC needs at least {MKL_MIN_SECONDS:g} s of the target's speech (its authors report from 5 s): give "
            "more reference speech"
        )


def _morph_voice(options: ConvertOptions) -> Voice | None:
    """``options.morph`` as the ``Voice`` it must be (``UsageError`` for anything else), or None."""
    if options.morph is None or isinstance(options.morph, Voice):
        return options.morph
    raise UsageError(f"morph must be a Voice (a built or loaded voice), got {type(options.morph).__name__}")


def _same_frames(a: Tensor, b: Tensor) -> bool:
    """Whether two (M, D) frame sets are the same up to precision: every pair of rows at cosine 0.99 or more."""
    return bool((F.cosine_similarity(a.float(), b.float().to(a.device), dim=-1) >= 0.99).all())


def convert(
    source: AudioInput,
    reference: Target | AudioInput | Sequence[AudioInput],
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
    method: str = "knn",
    mkl_block: int = MKL_BLOCK,
    models: Models = DEFAULT_MODELS,
    device: str | None = None,
    progress: OnProgress | None = None,
) -> np.ndarray:
    """Say ``source``'s words in ``reference``'s voice: everything ``knnvc convert`` does for one input.

    Args:
        source: a path, or a numpy array / torch tensor ((N,), (C, N) or (N, C)) with ``sample_rate``.
        reference: a ``Voice``, a ``.voice`` file, reference audio (a file, a folder, arrays/tensors with
            ``reference_sample_rate``) or a list of those; or a ``Pair`` / ``.pair`` file (LinearVC).
        output: also write the result here, atomically (format from the extension: .wav, .flac, .ogg).
        output_sample_rate: rate of the result (and of ``output``), resampled with soxr; default: the vocoder's
            (16 kHz for the published ones).
        k: nearest neighbours averaged per frame (``knnvc.options.ConvertOptions.k``).
        loudness: output loudness in LUFS; None keeps the vocoder's level.
        trim: trim silence from both ends of each reference (silero-vad).
        strength: 0 keeps the source voice, 1 the target, above 1 exaggerates (a control of ``ConvertOptions``).
        match_layer: the WavLM layer searched for neighbours (a control of ``ConvertOptions``).
        knn_weighting: ``"uniform"`` or ``"inverse-distance"`` (a control of ``ConvertOptions``).
        morph_weight: the share of ``morph`` (a control of ``ConvertOptions``).
        morph: a second voice (a ``Voice``, a ``.voice`` file or reference audio, arrays with
            ``morph_sample_rate``): the result is ``(1 - morph_weight) * kNN(reference) + morph_weight *
            kNN(morph)`` before the strength blend.
        method: the matching step: ``knn`` (kNN-VC), ``mkl`` (MKL-VC, for short references) or ``linear``
            (LinearVC: ``reference`` is a pair); see ``knnvc.options.ConvertOptions.method``.
        mkl_block: K, the dimensions MKL-VC maps jointly (the authors' 2).
        models: the weights and how they run (``knnvc.options.Models``: wavlm, vocoder, settings, offline).
        device: short for ``models.settings.device``.
        progress: gets ``knnvc.progress.Progress`` events over the windows of long audio.

    Returns:
        (N,) float32 at ``output_sample_rate``, as long as the source.
    """
    options = ConvertOptions(
        k=k,
        loudness=loudness,
        trim=trim,
        output_sample_rate=output_sample_rate,
        strength=strength,
        match_layer=match_layer,
        knn_weighting=knn_weighting,
        morph_weight=morph_weight,
        method=method,
        mkl_block=mkl_block,
    )
    if output is not None and Path(output).suffix.lower() not in write.OUTPUT_FORMATS:
        raise UsageError(f"{output}: output files end in {', '.join(write.OUTPUT_FORMATS)}")
    if sample_rate is None and not isinstance(source, (str, os.PathLike)):
        raise UsageError("an in-memory source (array or tensor) needs its sample_rate")
    if output is not None:
        refuse_overwriting_inputs(output, source, reference, morph)
    vc = KnnVC.from_pretrained(models, device=device, match_layer=match_layer)
    voice = vc.voice_from(reference, trim=trim, sample_rate=reference_sample_rate, match_layer=match_layer)
    if morph is not None:
        second = vc.voice_from(morph, trim=trim, sample_rate=morph_sample_rate, match_layer=match_layer)
        options = replace(options, morph=second)
    wav = vc.convert(source, voice, options, sample_rate=sample_rate, progress=progress)
    if output is not None:
        rate = vc.output_rate(options)
        write.save(Path(output), wav, sample_rate=rate, source_rate=rate)
    return wav
