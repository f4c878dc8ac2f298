"""One conversion at a time per model: a first-come, first-served turn with a bounded waiting line."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from knnvc.errors import KnnvcError


class BusyError(KnnvcError):
    """Too many requests are already waiting for the model; try again later (HTTP 503)."""

    exit_code = 1


class ModelQueue:
    """A FIFO lock: requests hold the model one at a time, in arrival order; at most ``max_waiting`` wait.

    A waiting request does not disturb the one running; ``on_wait(ahead)`` tells it how many are before it
    each time the line moves.
    """

    def __init__(self, max_waiting: int = 16) -> None:
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._line: list[int] = []  # tickets waiting or running, oldest first; the first one runs

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn (not counting the one running)."""
        with self._cond:
            return max(len(self._line) - 1, 0)

    @contextmanager
    def turn(self, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        """Wait for the model (raises ``BusyError`` when the line is full), hold it inside the block."""
        with self._cond:
            if len(self._line) > self.max_waiting:
                raise BusyError(f"the server is busy ({self.max_waiting} requests waiting); try again in a minute")
            ticket = next(self._tickets)
            self._line.append(ticket)
            try:
                ahead = -1
                while self._line[0] != ticket:
                    now = self._line.index(ticket)
                    if now != ahead and on_wait is not None:
                        on_wait(now)
                    ahead = now
                    self._cond.wait(timeout=1.0)
            except BaseException:  # cancelled while waiting: leave the line so the others move on
                self._line.remove(ticket)
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                self._line.remove(ticket)
                self._cond.notify_all()
