"""``Streamer``: the state machine that converts a live stream chunk by chunk (see ``knnvc.stream``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
import soxr
import torch
from torch import Tensor

from knnvc.errors import AudioError, UsageError
from knnvc.nn.encoder import num_frames, split_layers
from knnvc.options import DEFAULT_OPTIONS, HOP, SAMPLE_RATE, ConvertOptions
from knnvc.pipeline import KnnVC, Target, method_for
from knnvc.runtime.windows import Window
from knnvc.stream.settings import DEFAULT_STREAM, StreamSettings, encoder_reach, target_gain, vocoder_reach
from knnvc.voice import Pair

log = logging.getLogger(__name__)


def future_fill(hidden: Tensor, frames: int) -> Tensor:
    """(T, D) frontend frames followed by ``frames`` copies of their mean: a stand-in for audio not heard yet.

    On the tiny test model at 120 ms lookahead this lifts the share of frames with offline's 4 neighbours from
    5 % (zeros) to 29 % (repeating the last frame: 21 %, reflecting: 19 %); see docs/streaming.md.
    """
    if frames <= 0:
        return hidden
    return torch.cat([hidden, hidden.mean(0, keepdim=True).expand(frames, -1)])


def stream_method(target: Target, options: ConvertOptions) -> str:
    """The matching step a stream runs onto ``target``: ``knn`` onto a voice, or a pair's fixed map (``linear``
    for LinearVC's W, ``mkl`` for a speaker-level MKL-VC map), which needs no search.

    ``UsageError`` for what cannot stream: MKL-VC onto a voice (its map is fitted on a whole source utterance,
    which a stream never has: fit one on the source speaker's recordings instead), LinearVC without a pair, kNN's
    controls (k, match layer, weighting, morph) with a pair, a method other than the pair's own.
    """
    if isinstance(target, Pair):
        return method_for(target, options)  # the pair's own method, as an offline conversion takes it
    if options.method == "mkl":
        raise UsageError("MKL-VC fits its map on a whole source utterance, which a stream never has: fit it on the "
                         "source speaker's recordings, KnnVC.build_pair(DIR, target, method='mkl') "
                         "(`knnvc stream --method mkl --source-speaker DIR`), and stream with that pair")  # fmt: skip
    return method_for(target, options)  # LinearVC onto a voice: the error that says to build a pair


class Streamer:
    """Converts a live stream chunk by chunk, keeping the encoder's left context and the vocoder's context.

    Args:
        vc: the pipeline (its encoder, matcher and vocoder are used as they are).
        target: a ``Voice`` (kNN matching, as offline) or a ``Pair`` (its fixed per-frame map: LinearVC's W, or an
            MKL-VC map fitted on the source speaker's recordings; no search), checked against the encoder.
        options: every control (k, match layer, weighting, morph, strength) as offline; loudness as a fixed gain
            from the target's speech (``target_gain``); the output rate. ``stream_method`` says what streams.
        settings: chunk, lookahead and context; see ``StreamSettings``.
        gain: a linear output gain instead of the one measured from the target.
        record: keep every final encoder frame in ``features`` (for measuring agreement with offline), and what
            each was matched or mapped to (after the strength blend, what the vocoder gets) in ``matched``.
        cache_frontend: compute WavLM's per-frame conv stack once per frame and re-run only its transformer over
            the context (default: whenever the conv stack is frame-local, as in WavLM-Large); False re-encodes
            the whole window each step. Both give the same frames; ``bench/stream.py`` measures the speed.

    ``push(chunk)`` takes (n,) float32 audio at ``input_rate`` and returns the converted samples ready so far at
    ``output_rate``; ``flush()`` returns the rest. Together they are as long as the input (in time).
    """

    def __init__(
        self,
        vc: KnnVC,
        target: Target,
        options: ConvertOptions = DEFAULT_OPTIONS,
        settings: StreamSettings = DEFAULT_STREAM,
        *,
        gain: float | None = None,
        record: bool = False,
        cache_frontend: bool | None = None,
    ) -> None:
        self.method = stream_method(target, options)
        target.check_compatible(vc.encoder.fingerprint, vc.encoder.layer, vc.encoder.name)
        if not isinstance(target, Pair) and target.num_frames < options.k:
            raise UsageError(f"voice {target.name!r} has {target.num_frames} frames, fewer than k={options.k}")
        self.vc, self.target, self.options = vc, target, options
        self.reach = encoder_reach(vc)
        self.settings = settings.resolved(self.reach)
        self.input_rate = input_rate = settings.input_rate
        self.output_rate = vc.output_rate(options)
        self.hop_out = int(vc.vocoder.config.hop)
        self.vocoder_reach = vocoder_reach(vc.vocoder.config)
        self.gain = target_gain(vc, target, options.loudness) if gain is None else gain
        self.features: list[Tensor] | None = [] if record else None
        self.matched: list[Tensor] | None = [] if record else None
        self.layers = tuple(sorted({vc.encoder.layer, options.match_layer}))  # layer 6, and the one searched
        vc.check_depth(self.layers)
        self._resample_in = soxr.ResampleStream(input_rate, SAMPLE_RATE, 1) if input_rate != SAMPLE_RATE else None
        self._resample_out = (
            soxr.ResampleStream(vc.sample_rate, self.output_rate, 1) if self.output_rate != vc.sample_rate else None
        )
        self._audio = np.zeros(0, np.float32)  # input at 16 kHz from sample ``_audio_start`` on
        self._audio_start = 0
        self._received = 0  # samples pushed, at ``input_rate``
        self._emitted = 0  # samples returned, at ``output_rate``
        self._matched = torch.zeros(0, vc.encoder.dim)  # final matched frames from frame ``_matched_start``
        self._matched_start = 0
        self._final = 0  # frames final (encoded with their lookahead) and matched
        self._done = 0  # frames vocoded and returned
        self._closed = False
        self._tail = np.zeros(0, np.float32)  # the last vocoder window's output just past its seam
        local = vc.encoder.frame_local_frontend
        if cache_frontend and not local:
            raise UsageError("this encoder's conv stack normalises over time: its frames cannot be cached")
        self.cache_frontend = local if cache_frontend is None else cache_frontend
        self._hidden = torch.zeros(0, vc.encoder.dim, device=vc.device, dtype=vc.encoder.dtype)  # frontend frames
        self._hidden_start = 0

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay of the stream before compute (see ``StreamSettings.delay_ms``)."""
        return self.settings.delay_ms

    # -- input -----------------------------------------------------------------------------------------
    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add (n,) audio at ``input_rate``; return the converted samples now ready, (m,) float32, m >= 0."""
        if self._closed:
            raise UsageError("this stream was flushed; start a new Streamer")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if not np.isfinite(chunk).all():
            raise AudioError("the stream got NaN or infinite samples")
        self._received += len(chunk)
        if self._resample_in is not None:
            chunk = self._resample_in.resample_chunk(chunk).astype(np.float32, copy=False)
        self._audio = np.concatenate([self._audio, chunk])
        s = self.settings
        pieces = []
        # A step needs its chunk's frames plus both lookaheads in full frames.
        # Windows depend on frame counts only, never on how the input was cut into pushes.
        while self._available() >= (end := self._done + s.chunk + s.vocoder_lookahead + s.lookahead):
            pieces.append(self._step(self._done + s.chunk, end=end))
        return self._output(pieces, last=False)

    def run(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Convert an iterable of (n,) float32 chunks at ``input_rate``: the converted (m,) chunks as they are
        ready, then the tail; together exactly as long as the input, at ``output_rate``."""
        for chunk in chunks:
            out = self.push(chunk)
            if len(out):
                yield out
        yield self.flush()

    def flush(self) -> np.ndarray:
        """End of input: convert what is left and pad the < 25 ms remainder, so output length == input length."""
        if self._closed:
            raise UsageError("this stream was flushed already")
        if self._resample_in is not None:
            tail = self._resample_in.resample_chunk(np.zeros(0, np.float32), last=True)
            self._audio = np.concatenate([self._audio, tail.astype(np.float32, copy=False)])
        self._closed = True
        pieces = []
        total = self._available()
        if total > self._done:
            pieces.append(self._step(total, end=total))
        return self._output(pieces, last=True)

    def _available(self) -> int:
        """Frames whose samples have all arrived."""
        return num_frames(self._audio_start + len(self._audio))

    # -- one step --------------------------------------------------------------------------------------
    def _step(self, emit_stop: int, end: int) -> np.ndarray:
        """Finalise frames up to ``emit_stop + vocoder_lookahead``, encode to ``end``, vocode ``[done, emit_stop)``.

        Returns the vocoder's (samples,) float32 for frames ``[done, emit_stop)`` at the vocoder's rate, gained.
        """
        s = self.settings
        final_stop = min(end, emit_stop + s.vocoder_lookahead)
        window = Window(max(0, self._final - s.context), end, self._final, final_stop)
        feats = self._encode(window)
        keep = feats[window.keep_start - window.start : window.keep_stop - window.start]
        if self.features is not None:  # the frames the search runs on
            self.features.append(split_layers(keep, self.layers)[self.options.match_layer].cpu())
        query = split_layers(feats[window.keep_start - window.start :], self.layers)
        matched = self._match(query).cpu()
        final, provisional = matched[: len(keep)], matched[len(keep) :]
        if self.matched is not None:
            self.matched.append(final)
        self._matched = torch.cat([self._matched, final])
        self._final = final_stop
        left = max(0, self._done - self.vocoder_reach)
        right = self.vocoder_reach - (final_stop - emit_stop)
        frames = torch.cat([self._matched[left - self._matched_start :], provisional[: max(0, right)]])
        wav = self._vocode(frames)
        lo = (self._done - left) * self.hop_out
        hi = lo + (emit_stop - self._done) * self.hop_out
        out = self._crossfade(wav[lo:hi].copy())
        self._tail = wav[hi : hi + self.hop_out]  # how this window continued past the seam (provisional frames)
        self._done = emit_stop
        self._forget()
        return out * np.float32(self.gain)

    def _match(self, query: dict[int, Tensor]) -> Tensor:
        """{layer: (T, D)} final and provisional frames -> (T, D) fp32 layer-6 frames for the vocoder (``vc.match``):
        kNN onto the voice with every control, or a pair's fixed map applied to each frame (no matching set, no
        search); then the strength blend."""
        return self.vc.match(query, self.target, self.options)

    def _crossfade(self, out: np.ndarray) -> np.ndarray:
        """Fade over one frame (20 ms) from the last step's provisional continuation into ``out``.

        The last step vocoded the frames past its seam from provisional (lookahead) features; this step has their
        final ones. Where they differ the two waveforms differ at the seam, and a cut would click: the fade removes
        the jump at no cost in delay. Where they agree (most frames) it changes nothing.
        """
        n = min(len(self._tail), len(out))
        if n:
            ramp = (np.arange(1, n + 1, dtype=np.float32) / (n + 1)).astype(np.float32)
            out[:n] = self._tail[:n] * (1 - ramp) + out[:n] * ramp
        return out

    def _encode(self, window: Window) -> Tensor:
        """(T, D) fp32 features of ``window``'s frames, from its samples (on the pipeline's device).

        When the lookahead is shorter than the encoder's reach and more input is still to come, the frames the
        window cannot see yet are stood in for by the window's mean frontend frame (``future_fill``): WavLM's
        positional convolution then sees typical speech there instead of zeros. Offline the end of the input is
        zeros, and so it is at ``flush``.
        """
        encoder = self.vc.encoder
        if self.cache_frontend:
            have = self._hidden_start + len(self._hidden)
            if window.stop > have:  # the conv stack runs once per frame: only on frames not seen yet
                fresh = encoder.frontend(self._samples(Window(have, window.stop, have, window.stop)))
                self._hidden = torch.cat([self._hidden, fresh])
            first = window.start - self._hidden_start
            hidden = self._hidden[first : first + window.stop - window.start]
        else:
            hidden = encoder.frontend(self._samples(window))
        unseen = 0 if self._closed else self.reach - (window.stop - window.keep_stop)
        return encoder.contextualise(future_fill(hidden, unseen), self.layers)[: len(hidden)].float()

    def _samples(self, window: Window) -> Tensor:
        """The (N,) samples whose WavLM frames are exactly ``window``'s, on the pipeline's device."""
        lo, hi = window.sample_span()
        wav = np.ascontiguousarray(self._audio[lo - self._audio_start : hi - self._audio_start])
        return torch.from_numpy(wav).to(self.vc.device)

    @torch.inference_mode()
    def _vocode(self, frames: Tensor) -> np.ndarray:
        """(T, D) matched frames -> (T * hop,) float32 at the vocoder's rate."""
        wav = self.vc.vocoder(frames[None].to(self.vc.device, self.vc.dtype))
        return wav.reshape(-1).float().cpu().numpy()

    def _forget(self) -> None:
        """Drop audio and frames no later step needs: memory stays flat however long the stream runs."""
        first_frame = max(0, self._final - self.settings.context)
        drop = first_frame * HOP - self._audio_start
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_start += drop
        if first_frame > self._hidden_start:
            self._hidden = self._hidden[first_frame - self._hidden_start :]
            self._hidden_start = first_frame
        keep_from = max(0, self._done - self.vocoder_reach)
        if keep_from > self._matched_start:
            self._matched = self._matched[keep_from - self._matched_start :]
            self._matched_start = keep_from

    # -- output ----------------------------------------------------------------------------------------
    def _output(self, pieces: list[np.ndarray], *, last: bool) -> np.ndarray:
        """Join the steps' audio, pad the tail at the end, resample to ``output_rate``; exact total length."""
        wav = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        if last:  # the < 25 ms tail whole frames do not cover is silence, as offline
            covered = self._done * self.hop_out
            want = round((self._audio_start + len(self._audio)) * self.vc.sample_rate / SAMPLE_RATE)
            wav = np.concatenate([wav, np.zeros(max(0, want - covered), np.float32)])
        if self._resample_out is not None:
            wav = self._resample_out.resample_chunk(wav, last=last).astype(np.float32, copy=False)
        if last:  # the input's length in time, at the output rate
            expected = round(self._received * self.output_rate / self.input_rate)
            wav = np.pad(wav, (0, max(0, expected - self._emitted - len(wav))))[: max(0, expected - self._emitted)]
        self._emitted += len(wav)
        return wav
