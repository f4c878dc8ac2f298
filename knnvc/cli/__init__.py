"""The ``knnvc`` command: a thin typer layer over the Python API (``knnvc.pipeline``, ``knnvc.batch``).

One module per command group registers its commands on ``knnvc.cli.app``. Heavy modules (torch, transformers, the
pipeline) are imported inside the commands, so ``knnvc --help`` is instant.
"""

from __future__ import annotations

from knnvc.cli import convert, eval, info, live, pair, serve, stream, train, voice  # noqa: F401  (they register commands)
from knnvc.cli.app import app

__all__ = ["app"]
