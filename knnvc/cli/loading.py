"""Loading ahead: a command's slow start (``import torch``, transformers, the weights) in a background thread while
the command checks its inputs, each result taken where the command needs it.

The steps are a generator that yields ``(name, value)`` after each one (``Ahead``); ``take(name)`` waits for that
step and returns its value, or raises the exception that stopped the steps at or before it, exactly as the step
would have raised it where ``take`` is called. So a command that takes its steps in the order it used to run them
fails as it used to: the same error first, the same one line, the same exit code (an error of the main thread, met
first, wins; a step it never takes never fails it). Waiting can be interrupted (Ctrl-C) as any wait of the main
thread can.

The thread is a daemon: a command that fails (or is interrupted) before taking every step does not wait for the
rest. When the command ends (its click context closes), the steps stop at the next one; a caller that runs the
command in its own process (typer's test runner) also waits for the step under way, so no work of that command is
left running; the ``knnvc`` program itself ends at once instead (``knnvc.cli.app.exit_at_once``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from knnvc.cli.app import whole_program


class Ahead:
    """Runs ``steps`` in a daemon thread, started at once; ``take`` hands each step's value over."""

    def __init__(self, steps: Iterator[tuple[str, Any]], name: str = "knnvc-load-ahead") -> None:
        self._steps = steps
        self._done: dict[str, Any] = {}
        self._error: BaseException | None = None
        self._over = False  # no step will come any more: the steps ended, failed or were stopped
        self._stop = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for name, value in self._steps:
                with self._changed:
                    self._done[name] = value
                    self._changed.notify_all()
                    if self._stop:
                        break
        except BaseException as exc:  # noqa: BLE001 (not hidden: handed to the command, raised where it takes the step)
            with self._changed:
                self._error = exc
        finally:
            close = getattr(self._steps, "close", None)
            if close is not None:
                close()
            with self._changed:
                self._over = True
                self._changed.notify_all()

    def take(self, name: str) -> Any:
        """Wait for step ``name`` and return its value; raise here the exception that stopped the steps before it."""
        with self._changed:
            while name not in self._done and not self._over:
                self._changed.wait()
            if name in self._done:
                return self._done[name]
            error = self._error
        if error is not None:
            raise error
        raise RuntimeError(f"loading ahead: no step {name!r} came")  # a command asking for a step it never set

    def close(self) -> None:
        """Stop after the step under way. Called from within ``knnvc`` the program, that is all (the process ends at
        once); from a caller of the command in its own process, wait for that step too."""
        with self._changed:
            self._stop = True
        if not whole_program() and self._thread is not threading.current_thread():
            self._thread.join()


def ahead(steps: Iterator[tuple[str, Any]]) -> Ahead:
    """``Ahead(steps)``, closed when the command running now ends (its click context closes)."""
    from typer._click.globals import get_current_context

    loading = Ahead(steps)
    ctx = get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(loading.close)
    return loading
