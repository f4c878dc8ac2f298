"""knnvc: zero-shot voice conversion (kNN-VC, Baas, van Niekerk & Kamper, Interspeech 2023).

Nothing heavy is imported here: ``import knnvc`` is cheap, and the pipeline's modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knnvc.errors import (
    AudioError,
    DeviceError,
    ExtraError,
    InputError,
    KnnvcError,
    OutputError,
    UsageError,
    VoiceError,
    WeightsError,
)

__all__ = [
    "AudioError",
    "DeviceError",
    "ExtraError",
    "InputError",
    "KnnvcError",
    "KnnVC",
    "OutputError",
    "UsageError",
    "Voice",
    "VoiceError",
    "WeightsError",
    "__version__",
    "convert",
]

if TYPE_CHECKING:
    from knnvc.pipeline import KnnVC, convert
    from knnvc.voice import Voice


def __getattr__(name: str) -> Any:
    if name == "__version__":  # written once, in pyproject.toml
        from knnvc.options import package_version

        return package_version()
    if name == "convert":
        from knnvc.pipeline import convert

        return convert
    if name == "KnnVC":
        from knnvc.pipeline import KnnVC

        return KnnVC
    if name == "Voice":
        from knnvc.voice import Voice

        return Voice
    raise AttributeError(f"module 'knnvc' has no attribute {name!r}")
