"""The one progress type: every long-running call in the library reports through ``Progress`` events.

A caller passes ``progress=fn`` (an ``OnProgress``) and gets one event per step; the library never draws anything.
The CLI renders the events with rich; the web page and the stream forward them. Stages:

| stage    | what happened                                     | ``index`` / ``total``                       |
| -------- | ------------------------------------------------- | ------------------------------------------- |
| start    | a file of a batch begins its conversion           | the file's position (from 0) / files        |
| done     | ... was written (``seconds``, ``audio_seconds``)  | the file's position / files                 |
| skip     | ... already had its output                        | the file's position / files                 |
| fail     | ... failed (``error``)                            | the file's position / files                 |
| convert  | input ``index`` of ``convert_batch`` begins       | the input's position / inputs in the call   |
| encode   | windows of one long input were encoded            | windows done / windows                      |
| vocode   | windows of one long input were vocoded            | windows done / windows                      |
| download | bytes of weights arrived (``name``)               | bytes done / bytes (None: not announced)    |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from knnvc.errors import KnnvcError

FILE_STAGES = ("start", "done", "skip", "fail")
WINDOW_STAGES = ("encode", "vocode")


@dataclass(frozen=True)
class Job:
    """One source file and where its conversion goes."""

    source: Path
    output: Path


@dataclass(frozen=True)
class Progress:
    """A progress event (see the module's table). ``job`` names the file of a batch event, else None.

    ``seconds`` is a finished file's share of the compute wall time (its group's time split by audio length;
    decoding and writing overlap the compute in threads) and ``audio_seconds`` its length.
    """

    stage: str
    index: int
    total: int | None
    job: Job | None = None
    seconds: float = 0.0
    audio_seconds: float = 0.0
    error: KnnvcError | None = None
    name: str = ""


OnProgress = Callable[[Progress], None]
"""What every ``progress=`` parameter takes: a function of one ``Progress`` event."""


def report(progress: OnProgress | None, event: Progress) -> None:
    """Send ``event`` to ``progress`` when there is one."""
    if progress is not None:
        progress(event)
