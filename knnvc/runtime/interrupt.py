"""SIGTERM as a clean stop: within ``sigterm_as_interrupt()``, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does.

A batch catches ``KeyboardInterrupt`` between files (``knnvc.batch.runner.run``): the file being written is abandoned
(``write.save`` removes its temporary file, so the final name is never half-written), finished files stay,
and a rerun skips them. Schedulers and ``docker stop`` send SIGTERM, so it gets the same treatment.

Signal handlers can only be installed from the main thread; elsewhere the block runs unchanged. The previous
handler is restored on exit. A SIGINT that the process inherited as ignored (``nohup``) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a ``KeyboardInterrupt`` so that everything that stops cleanly on Ctrl-C does too."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` (a ``KeyboardInterrupt``) for the duration of the block."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
