"""Typed errors. The CLI maps each class to one line and one exit code; nothing below it exits.

Every message is one line that names the file (or option) at fault and says what to do about it.

Exit codes of the ``knnvc`` command (also on the documentation's "Errors and exit codes" page, docs/errors.md):

```text
==== ======================= ==========================================================================
code meaning                 raised by / when
==== ======================= ==========================================================================
0    success                 every file converted, or was already there (skipped)
1    some files failed       a batch ran to the end but some files could not be converted; each is
                             listed on stderr (``failed: ...`` naming the file) and in ``--json``'s ``failures``
2    ``UsageError``          an option or argument that cannot work (also typer's own usage errors)
3    ``InputError``          an input path that is missing or unreadable, in any command (a source,
                             reference, voice, training folder or config); ``AudioError``: audio that
                             is not audio, corrupt, empty, too short (< 400 samples at 16 kHz),
                             NaN/Inf, or a reference with no speech
4    ``WeightsError``        model weights missing, not cached while offline, corrupt, or pickled code
5    ``VoiceError``          a ``.voice`` file that is unreadable or built with another encoder
6    ``OutputError``         an output that cannot be written; ``DiskFullError`` (a full disk) also
                             stops a batch at once, keeping the files already written
7    ``DeviceError``         a device that is absent, or out of memory even at batch 1 and the
                             smallest window (or, for ``knnvc live``, no PortAudio library)
8    ``ExtraError``          a feature whose optional extra is not installed (``serve``: web,
                             ``live``: live, ``eval``: eval, ``convert --ray``: cluster); the
                             line says what to install: ``pip install "knnvc[web]"``
130  interrupted             Ctrl-C (SIGINT) or SIGTERM: the file being written is abandoned (never
                             half-written), finished files are kept, and rerunning resumes
==== ======================= ==========================================================================
```

SIGTERM deliberately reuses 130 rather than 143: for knnvc both mean "stopped on request, rerun to resume",
and a script needs to test one code. (Before a batch starts, while models load, SIGTERM keeps its default
action and ends the process, which has written nothing yet.)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1  # a batch finished, but some of its files failed
EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM (128 + SIGINT)


class KnnvcError(Exception):
    """Base class of every error knnvc raises on purpose. Its message is always one line."""

    exit_code: int = 1

    def __init_subclass__(cls, exit_code: int | None = None) -> None:
        """``class FooError(KnnvcError, exit_code=N)``: the code ``knnvc`` exits with (a subclass inherits it)."""
        super().__init_subclass__()
        if exit_code is not None:
            cls.exit_code = exit_code

    def __str__(self) -> str:
        text = super().__str__()
        if "\n" not in text and "\r" not in text:
            return text
        return " ".join(line.strip() for line in text.splitlines() if line.strip())


class UsageError(KnnvcError, exit_code=2):
    """An option or argument that cannot work (bad value, incompatible combination)."""


class InputError(KnnvcError, exit_code=3):
    """An input path (audio, a voice, a training folder, a config) that is missing or cannot be read."""


class AudioError(InputError):
    """An input file that is missing, unreadable, corrupt, empty or otherwise not usable audio."""


class WeightsError(KnnvcError, exit_code=4):
    """Model weights that are missing, unreachable (offline), corrupt or of an unknown layout."""


class VoiceError(KnnvcError, exit_code=5):
    """A saved voice that is unreadable or was built with different encoder weights."""


class OutputError(KnnvcError, exit_code=6):
    """An output that cannot be written (read-only folder, full disk, a name escaping its folder)."""


class DiskFullError(OutputError):
    """The disk (or quota) is full. A batch stops at once: every later file would fail the same way."""


class DeviceError(KnnvcError, exit_code=7):
    """A requested device that is absent, or a run that did not fit in its memory."""


class ExtraError(KnnvcError, exit_code=8):
    """A feature whose optional dependencies (a pip extra, ``knnvc[web]``) are not installed."""


def missing_extra(feature: str, extra: str, package: str | None = None) -> ExtraError:
    """The one wording: ``FEATURE needs the EXTRA extra (PACKAGE is not installed): pip install "knnvc[EXTRA]"``."""
    which = f" ({package} is not installed)" if package else ""
    return ExtraError(f'{feature} needs the {extra} extra{which}: pip install "knnvc[{extra}]"')


EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_PARTIAL: "some files in a batch failed",
    UsageError.exit_code: "usage error",
    InputError.exit_code: "input missing, unreadable or bad audio",
    WeightsError.exit_code: "weights missing or corrupt",
    VoiceError.exit_code: "bad or incompatible voice",
    OutputError.exit_code: "cannot write an output",
    DeviceError.exit_code: "device absent or out of memory",
    ExtraError.exit_code: "an optional extra is not installed",
    EXIT_INTERRUPTED: "interrupted (SIGINT or SIGTERM)",
}
"""Every exit status ``knnvc`` uses, and what it means."""
