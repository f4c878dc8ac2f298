"""Typed errors. The CLI maps each class to one line and one exit code; nothing below it exits."""

from __future__ import annotations


class KnnvcError(Exception):
    """Base class of every error knnvc raises on purpose."""

    exit_code: int = 1


class UsageError(KnnvcError):
    """An option or argument that cannot work (bad value, incompatible combination)."""

    exit_code = 2


class AudioError(KnnvcError):
    """An input file that is missing, unreadable, corrupt, empty or otherwise not usable audio."""

    exit_code = 3


class WeightsError(KnnvcError):
    """Model weights that are missing, unreachable (offline), corrupt or of an unknown layout."""

    exit_code = 4


class VoiceError(KnnvcError):
    """A saved voice that is unreadable or was built with different encoder weights."""

    exit_code = 5


class OutputError(KnnvcError):
    """An output that cannot be written (read-only folder, full disk, a name escaping its folder)."""

    exit_code = 6


class DeviceError(KnnvcError):
    """A requested device that is absent, or a run that did not fit in its memory."""

    exit_code = 7
