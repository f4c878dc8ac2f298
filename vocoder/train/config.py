"""Training hyperparameters (HiFi-GAN as published for kNN-VC) and the generator config for a target rate.

Field names follow the original HiFi-GAN ``config.json`` where one exists (``learning_rate``, ``adam_b1``,
``lr_decay``, ``segment_size``, ``num_mels``, ...), so the original file can be passed as overrides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vocoder.config import ORIGINAL_KEYS, HifiganConfig, field_types, from_json
from vocoder.train.data import FRAME_RATE, TrainingError, hop_for

# Upsampling per target rate (50 Hz frames): rates multiply to the hop; kernel = 2 * rate, + 1 when odd
# (kernel - rate must be even so each stage multiplies the length exactly).
UPSAMPLE_PRESETS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    16000: ((10, 8, 2, 2), (20, 16, 4, 4)),  # hop 320: the published model
    22050: ((7, 7, 3, 3), (15, 15, 7, 7)),  # hop 441 = 3^2 * 7^2
    24000: ((10, 8, 3, 2), (20, 16, 7, 4)),  # hop 480
    44100: ((7, 7, 3, 3, 2), (15, 15, 7, 7, 4)),  # hop 882
    48000: ((10, 8, 4, 3), (20, 16, 8, 7)),  # hop 960
}

# Keys of the original HiFi-GAN config.json that have no meaning here (or are checked elsewhere).
IGNORED_KEYS = frozenset({"num_gpus", "dist_config", "num_freq", "hop_size", "fmax"})


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the published kNN-VC HiFi-GAN hyperparameters.

    Attributes:
        max_steps: stop after this many generator updates in total (a resumed run counts earlier steps).
        batch_size: segments per step per process (per GPU under DDP).
        segment_size: audio samples per segment at the target rate, rounded down to whole frames (7040 =
            22 frames = 0.44 s at 16 kHz; keep 22 frames at other rates: 9702 at 22.05 kHz, 21120 at 48 kHz).
        num_mels, n_fft, win_size, fmin, fmax_for_loss: the loss spectrogram; ``n_fft``/``win_size`` None
            means 1024 at 16 kHz, scaled to keep 64 ms (next power of two) at other rates; fmax None = sr/2.
        discriminator_scale: fraction of the published discriminator channel widths (1.0 = published).
        checkpoint_every: steps between checkpoints, validation audio and the loss plot.
        log_every: steps between logged scalars (tensorboard and ``losses.jsonl``).
        val_utterances: utterances held out from training for validation audio and the validation mel loss.
        keep_states: training states (discriminators, optimisers) kept on disk; generator files are all kept.
    """

    max_steps: int = 2_500_000
    batch_size: int = 16
    learning_rate: float = 2e-4
    adam_b1: float = 0.8
    adam_b2: float = 0.99
    weight_decay: float = 0.01
    lr_decay: float = 0.999
    seed: int = 1234
    segment_size: int = 7040
    num_mels: int = 80
    n_fft: int | None = None
    win_size: int | None = None
    fmin: float = 0.0
    fmax_for_loss: float | None = None
    mel_weight: float = 45.0
    discriminator_scale: float = 1.0
    checkpoint_every: int = 5000
    log_every: int = 100
    val_utterances: int = 4
    val_max_seconds: float = 10.0
    num_workers: int = 4
    keep_states: int = 2

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "segment_size", "num_mels", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.discriminator_scale <= 4:
            raise TrainingError(f"discriminator_scale must be in (0, 4], got {self.discriminator_scale}")

    def segment_frames(self, sample_rate: int) -> int:
        """Whole frames per training segment: ``segment_size // hop`` (7040 // 320 = 22 at 16 kHz)."""
        return max(1, self.segment_size // hop_for(sample_rate))

    def stft_sizes(self, sample_rate: int) -> tuple[int, int]:
        """(n_fft, win_size) of the loss spectrogram at ``sample_rate``."""
        default = 1 << math.ceil(math.log2(0.064 * sample_rate))
        n_fft = self.n_fft or default
        return n_fft, self.win_size or n_fft

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from JSON values, each converted to its field's type (``vocoder.config.from_json``: ints given
        as floats such as 7040.0 are accepted, null only where the field allows None). Reads back ``asdict``.

        Raises:
            TrainingError: an unknown key, or a value of the wrong type (one line naming the setting).
        """
        kinds = field_types(cls)
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if name not in kinds:
                raise TrainingError(f"unknown training setting {name!r}")
            try:
                kwargs[name] = from_json(value, kinds[name])
            except ValueError as exc:
                raise TrainingError(f"training setting {name}: {exc}") from None
        return cls(**kwargs)


def vocoder_config_for(sample_rate: int, input_dim: int, overrides: Mapping[str, Any] | None = None) -> HifiganConfig:
    """The generator config for data at ``sample_rate`` with ``input_dim`` features, plus ``overrides``.

    Upsampling comes from :data:`UPSAMPLE_PRESETS` unless overridden. Raises TrainingError when the
    upsampling does not multiply to ``sample_rate / 50`` or the overrides contradict the data.
    """
    overrides = dict(overrides or {})
    base: dict[str, Any] = {"input_dim": input_dim, "sample_rate": sample_rate}
    if sample_rate in UPSAMPLE_PRESETS:
        base["upsample_rates"], base["upsample_kernel_sizes"] = UPSAMPLE_PRESETS[sample_rate]
    try:
        cfg = HifiganConfig.from_dict({**base, **{ORIGINAL_KEYS.get(k, k): v for k, v in overrides.items()}})
    except ValueError as exc:
        raise TrainingError(f"invalid vocoder config: {exc}") from exc
    hop = hop_for(sample_rate)
    if cfg.sample_rate != sample_rate or cfg.input_dim != input_dim:
        raise TrainingError(
            f"the vocoder config ({cfg.input_dim}-d, {cfg.sample_rate} Hz) does not fit the features "
            f"({input_dim}-d, {sample_rate} Hz)"
        )
    if cfg.hop != hop:
        raise TrainingError(
            f"upsample_rates {list(cfg.upsample_rates)} multiply to {cfg.hop}, but {sample_rate} Hz at "
            f"{FRAME_RATE} Hz frames needs {hop}; set upsample_rates and upsample_kernel_sizes in the config overrides"
        )
    return cfg


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a JSON config (ours, or the original HiFi-GAN config.json) into (vocoder, training) overrides.

    Raises TrainingError on keys that are neither.
    """
    vocoder_keys = set(field_types(HifiganConfig)) | set(ORIGINAL_KEYS)
    train_keys = set(field_types(TrainConfig))
    voc: dict[str, Any] = {}
    train: dict[str, Any] = {}
    unknown = []
    for key, value in overrides.items():
        if key in vocoder_keys:
            voc[key] = value
        elif key in train_keys:
            train[key] = value
        elif key not in IGNORED_KEYS:
            unknown.append(key)
    if unknown:
        raise TrainingError(
            f"unknown config keys {sorted(unknown)}; vocoder keys: {sorted(vocoder_keys)}; "
            f"training keys: {sorted(train_keys)}"
        )
    return voc, train
