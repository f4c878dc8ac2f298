"""HiFi-GAN generator configuration.

The defaults equal the published prematched kNN-VC vocoder (``prematch_g_02500000.pt``): 1024-dimensional
WavLM-Large features at 50 Hz in, 16 kHz audio out (hop 320 samples = 10 * 8 * 2 * 2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# The original kNN-VC / HiFi-GAN training config's key names -> ours.
ORIGINAL_KEYS: dict[str, str] = {
    "hubert_dim": "input_dim",
    "hifi_dim": "hidden_dim",
    "sampling_rate": "sample_rate",
}

_INT_FIELDS = ("input_dim", "hidden_dim", "upsample_initial_channel", "sample_rate")
_INT_TUPLE_FIELDS = ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes")


@dataclass(frozen=True)
class HifiganConfig:
    """Architecture of a kNN-VC HiFi-GAN generator.

    Attributes:
        input_dim: feature width D of the input (B, T, D) at ``sample_rate / hop`` Hz (50 Hz by default).
        hidden_dim: width of ``lin_pre``'s output, the input of ``conv_pre``.
        upsample_initial_channel: channels after ``conv_pre``; halved by each upsampling stage.
        upsample_rates: stride of each transposed convolution; their product is the hop in samples.
        upsample_kernel_sizes: kernel of each transposed convolution.
        resblock: "1" (two convs per dilation) or "2" (one conv per dilation, dilations 1 and 3).
        resblock_kernel_sizes: kernel of each of the parallel residual blocks after every upsampling.
        resblock_dilation_sizes: dilations of each residual block.
        sample_rate: output audio rate in Hz.
    """

    input_dim: int = 1024
    hidden_dim: int = 512
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (10, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (20, 16, 4, 4)
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) and store tuples, so the config stays hashable.
        for name in (*_INT_TUPLE_FIELDS, "resblock_dilation_sizes"):
            object.__setattr__(self, name, _coerce(name, getattr(self, name)))
        self._validate()

    @property
    def hop(self) -> int:
        """Output samples per input frame (320 for the published model: 20 ms at 16 kHz)."""
        return math.prod(self.upsample_rates)

    @property
    def frame_rate(self) -> float:
        """Input feature rate in Hz (50.0 for the published model)."""
        return self.sample_rate / self.hop

    def _validate(self) -> None:
        for name in _INT_FIELDS:
            if getattr(self, name) <= 0:
                raise ValueError(f"HifiganConfig.{name} must be positive, got {getattr(self, name)}")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"HifiganConfig.resblock must be '1' or '2', got {self.resblock!r}")
        n_up = len(self.upsample_rates)
        if n_up == 0 or len(self.upsample_kernel_sizes) != n_up:
            raise ValueError(
                "HifiganConfig.upsample_rates and upsample_kernel_sizes must be non-empty and of equal "
                f"length, got {self.upsample_rates} and {self.upsample_kernel_sizes}"
            )
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            if u <= 0 or k < u or (k - u) % 2:
                raise ValueError(
                    f"HifiganConfig: upsample kernel {k} with rate {u} must satisfy kernel >= rate > 0 and "
                    "kernel - rate even, so that each stage multiplies the length exactly by its rate"
                )
        if self.upsample_initial_channel % (2**n_up):
            raise ValueError(
                f"HifiganConfig.upsample_initial_channel={self.upsample_initial_channel} must be divisible "
                f"by 2**{n_up}={2**n_up} (channels halve at each of the {n_up} upsampling stages)"
            )
        self._validate_resblocks()

    def _validate_resblocks(self) -> None:
        kernels, dilations = self.resblock_kernel_sizes, self.resblock_dilation_sizes
        if not kernels or len(dilations) != len(kernels):
            raise ValueError(
                "HifiganConfig.resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and of "
                f"equal length, got {kernels} and {dilations}"
            )
        for k in kernels:
            if k <= 0 or k % 2 == 0:
                raise ValueError(f"HifiganConfig.resblock_kernel_sizes must be odd and positive, got {k}")
        need = 2 if self.resblock == "2" else 1
        for d in dilations:
            if len(d) < need or any(x <= 0 for x in d):
                raise ValueError(
                    f"HifiganConfig.resblock_dilation_sizes entries must hold at least {need} positive "
                    f"dilations for resblock {self.resblock!r}, got {d}"
                )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with this class's field names (lists for tuples)."""
        return {
            "input_dim": self.input_dim,
            "hidden_dim": self.hidden_dim,
            "upsample_initial_channel": self.upsample_initial_channel,
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "resblock": self.resblock,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "sample_rate": self.sample_rate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HifiganConfig:
        """Build from our key names or the original training config's (``hubert_dim``, ``hifi_dim``,
        ``sampling_rate``). Unknown keys (batch_size, learning_rate, dist_config, ...) are ignored; missing
        ones take the defaults. Raises ValueError on conflicting aliases or malformed values."""
        if not isinstance(d, Mapping):
            raise ValueError(f"HifiganConfig.from_dict expects a mapping, got {type(d).__name__}")
        fields = set(cls.__dataclass_fields__)
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            name = ORIGINAL_KEYS.get(key, key)
            if name not in fields:
                logger.debug("HifiganConfig.from_dict: ignoring key %r", key)
                continue
            value = _coerce(name, value)
            if name in kwargs and kwargs[name] != value:
                raise ValueError(f"HifiganConfig.from_dict: conflicting values for {name!r} (given twice)")
            kwargs[name] = value
        return cls(**kwargs)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"HifiganConfig.{name}: expected an integer, got {value!r}")
    return int(value)


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"HifiganConfig.{name}: expected a list of integers, got {value!r}")
    return tuple(_as_int(name, v) for v in value)


def _coerce(name: str, value: Any) -> Any:
    """Convert a JSON value (lists, numbers) to the field's type."""
    if name in _INT_FIELDS:
        return _as_int(name, value)
    if name in _INT_TUPLE_FIELDS:
        return _as_int_tuple(name, value)
    if name == "resblock_dilation_sizes":
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise ValueError(f"HifiganConfig.{name}: expected a list of lists of integers, got {value!r}")
        return tuple(_as_int_tuple(name, v) for v in value)
    if name == "resblock":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"HifiganConfig.resblock: expected '1' or '2', got {value!r}")
        return str(value)
    return value
