"""Every number the method fixes, with its unit, in one place."""

from __future__ import annotations

SAMPLE_RATE = 16_000  # Hz: WavLM's input rate and the published vocoder's output rate
HOP = 320  # samples per feature frame: 20 ms at 16 kHz
FRAME_RATE = SAMPLE_RATE // HOP  # 50 Hz
RECEPTIVE_FIELD = 400  # samples: the WavLM conv front end needs this many for its first frame (25 ms)
WAVLM_LAYER = 6  # kNN-VC matches on the output of transformer block 6 (hidden_states[6])
MAX_WAVLM_LAYERS = 24  # transformer blocks of WavLM-Large, the deepest layer a match layer can name
KNN_WEIGHTINGS = ("uniform", "inverse-distance")  # how the k neighbours are averaged
FEATURE_DIM = 1024  # WavLM-Large width
DEFAULT_K = 4  # neighbours averaged per source frame
ENCODER_WINDOW_SECONDS = 30.0  # s kept per encoder window: longer audio is encoded in windows (a 30 s file is one)
ENCODER_CONTEXT_SECONDS = 3.0  # s of context on each side of an encoder window (36 s windows)
DEFAULT_LOUDNESS = -16.0  # LUFS (ITU-R BS.1770), as the original
DEFAULT_WAVLM = "microsoft/wavlm-large"
DEFAULT_VOCODER = "prematched"
