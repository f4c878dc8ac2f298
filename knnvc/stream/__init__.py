"""Streaming conversion: audio in chunks of any size, converted audio out as it goes, with a stated delay.

    >>> from knnvc.stream.streamer import Streamer
    >>> s = Streamer(vc, voice)                        # vc: a KnnVC; voice: a Voice, or a Pair (a fixed map)
    >>> for chunk in microphone():                     # (n,) float32 at 16 kHz, any n
    ...     play(s.push(chunk))                        # converted samples ready so far (maybe none)
    >>> play(s.flush())                                # the tail: output length == input length

Output sample n is the conversion of input sample n; the delay is in time, never inserted as silence. The stream
is a state machine over the pipeline's own stages (``vc.encoder``, ``vc.match``, ``vc.vocoder``), run on frames of
20 ms:

- **Encoder.** Each step encodes one window: ``context`` frames already final on the left (bounded left context),
  the ``chunk`` new frames, and ``lookahead`` frames on the right. The new frames are kept (final); the lookahead
  frames are provisional and are encoded again, with more right context, next step. WavLM's conv stack is
  frame-local, so its output is cached per frame and only the transformer re-runs over the window. The lookahead
  defaults to the reach of WavLM's positional convolution (``encoder_reach``): a frame then sees all the future
  it sees offline.
- **Matcher.** kNN regression of each final frame onto the voice, exactly as offline (frame by frame); or, for
  a ``Pair`` (LinearVC's W, or MKL-VC's map fitted on the source speaker's recordings: a stream has no whole
  utterance to fit it on), the pair's map applied to each frame, with no search. Then the strength blend.
- **Vocoder.** HiFi-GAN runs over its whole receptive field (``vocoder_reach``, 12 frames) of final matched frames
  on the left, so the left seam is exact, then the frames to emit, ``vocoder_lookahead`` further final frames, and
  provisional lookahead frames up to its reach on the right; the emitted frames are cropped out, and faded over
  20 ms from the previous window's provisional continuation, so a late change of a lookahead frame cannot click.
- **Loudness.** One fixed gain, measured once from the voice itself (its frames vocoded, then BS.1770 loudness
  to the target under a -1 dBTP true-peak guard; a pair: its target's speech): a stream has no whole file to
  normalise.

The delay is ``chunk + lookahead + vocoder_lookahead`` (plus 5 ms: WavLM's first frame needs 25 ms of audio)
plus the compute time of one step. ``bench/stream.py`` measures it, and the agreement with offline conversion
(of the kNN choices; of a pair's mapped frames), per setting.
"""
