"""HiFi-GAN generator configuration.

The defaults equal the published prematched kNN-VC vocoder (``prematch_g_02500000.pt``): 1024-dimensional
WavLM-Large features at 50 Hz in, 16 kHz audio out (hop 320 samples = 10 * 8 * 2 * 2).

Configs travel as JSON (``config.json``, checkpoints' ``config`` entries, ``run.json``): :func:`from_json` reads a
value back as its dataclass field's declared type (:func:`field_types`, from ``typing.get_type_hints``); the
training config (``vocoder.train.config``) reads its own fields the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# The original kNN-VC / HiFi-GAN training config's key names -> ours.
ORIGINAL_KEYS: dict[str, str] = {
    "hubert_dim": "input_dim",
    "hifi_dim": "hidden_dim",
    "sampling_rate": "sample_rate",
}

_POSITIVE_FIELDS = ("input_dim", "hidden_dim", "upsample_initial_channel", "sample_rate")


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
        # Every field as its declared type: lists (e.g. from JSON) become tuples, so the config stays hashable.
        for name, kind in field_types(type(self)).items():
            object.__setattr__(self, name, _typed(name, kind, getattr(self, name)))
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
        for name in _POSITIVE_FIELDS:
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
        """A JSON-able dict with this class's field names (lists for tuples); ``from_dict`` reads it back."""
        return {name: _jsonable(getattr(self, name)) for name in field_types(type(self))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HifiganConfig:
        """Build from our key names or the original training config's (``hubert_dim``, ``hifi_dim``,
        ``sampling_rate``). Unknown keys (batch_size, learning_rate, dist_config, ...) are ignored; missing
        ones take the defaults. Each value is converted to its field's type (see :func:`from_json`); a
        ``resblock`` written as a number (1) is read as the string ("1") the original configs use.
        Raises ValueError on conflicting aliases or malformed values."""
        if not isinstance(d, Mapping):
            raise ValueError(f"HifiganConfig.from_dict expects a mapping, got {type(d).__name__}")
        kinds = field_types(cls)
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            name = ORIGINAL_KEYS.get(key, key)
            if name not in kinds:
                logger.debug("HifiganConfig.from_dict: ignoring key %r", key)
                continue
            if name == "resblock" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            value = _typed(name, kinds[name], value)
            if name in kwargs and kwargs[name] != value:
                raise ValueError(f"HifiganConfig.from_dict: conflicting values for {name!r} (given twice)")
            kwargs[name] = value
        return cls(**kwargs)


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's field names -> their types, resolved by ``typing.get_type_hints`` (the annotations are
    strings under ``from __future__ import annotations``), in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_json(value: Any, kind: Any) -> Any:
    """``value`` as JSON gives it (numbers, strings, lists, null) converted to the type ``kind``.

    ``int`` takes a whole number (7040.0 -> 7040; a bool is not a number), ``float`` any number, ``str`` a string,
    ``X | None`` null or an X, ``tuple[X, ...]`` a list (or tuple) of X.

    Raises:
        ValueError: ``expected <what kind wants>, got <value>`` (one line).
        TypeError: ``kind`` is none of the above (a programming error, not a bad value).
    """
    try:
        return _convert(value, kind)
    except ValueError:
        raise ValueError(f"expected {describe(kind)}, got {value!r}") from None


def describe(kind: Any) -> str:
    """``kind`` in words, for messages: ``int | None`` -> "an integer or null", ``tuple[int, ...]`` -> "a list
    of integers"."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        words = " or ".join(describe(a) for a in args if a is not type(None))
        return words + (" or null" if type(None) in args else "")
    if typing.get_origin(kind) is tuple:
        return "a list of " + _plural(args[0])
    return {int: "an integer", float: "a number", str: "a string"}.get(kind, repr(kind))


def _plural(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "lists of " + _plural(typing.get_args(kind)[0])
    return {int: "integers", float: "numbers", str: "strings"}.get(kind, f"{kind!r} values")


def _convert(value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list | tuple):
            raise ValueError
        return tuple(_convert(v, args[0]) for v in value)
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError
        return value
    if kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    raise TypeError(f"no conversion from JSON to {kind!r}")


def _typed(name: str, kind: Any, value: Any) -> Any:
    """``from_json`` for the field ``name``, its error naming the field."""
    try:
        return from_json(value, kind)
    except ValueError as exc:
        raise ValueError(f"HifiganConfig.{name}: {exc}") from None


def _jsonable(value: Any) -> Any:
    """Tuples (nested too) as lists, for JSON."""
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value
