"""Out-of-memory recovery: halve the batch, then the window, and only then give up with a ``DeviceError``.

Two decorators for the pipeline's methods keep its code free of retry loops:

- ``splits_batches(stage)`` on a method that takes a batch (a list of waveforms, or a (B, ...) tensor) and
  returns one result per item. On out-of-memory the batch is split in halves and retried, down to one item;
  the largest size that fitted is remembered, so later calls start there instead of failing again.
- ``retries_smaller(stage)`` on a stage (encoding, vocoding, matching). When an out-of-memory error survives
  batch size 1, the stage's window is halved (the encoder's ``window`` attribute of the pipeline, or the
  vocoder's window, see ``vocoder_core``) and the whole stage is retried, down to ``MIN_WINDOW`` frames. Then
  it raises ``DeviceError``, whose message says what to change.

Out-of-memory is ``torch.OutOfMemoryError`` (CUDA), or a ``RuntimeError`` saying so (MPS, CPU allocator, or
cuBLAS's ``CUBLAS_STATUS_ALLOC_FAILED``).
The state lives on the pipeline object (``guard(owner)``); nothing here is global.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import torch
from torch import Tensor

from knnvc.errors import DeviceError
from knnvc.options import FRAME_RATE
from knnvc.runtime.windows import VOCODER_CORE

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Batch = TypeVar("Batch", list[Tensor], Tensor)

MIN_WINDOW = FRAME_RATE  # frames: windows are not halved below 1 s
_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "cublas_status_alloc_failed",  # cuBLAS could not get its workspace: the device is full
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device (or host) allocation failure."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MESSAGES)


def free_memory(device: torch.device) -> None:
    """Return cached blocks to the device after a failed allocation."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class OomGuard:
    """What one pipeline has learnt about its memory: batch limits per stage, and window halvings."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.batch_limit: dict[str, int] = {}
        self.vocoder_halvings = 0

    def batched(self, stage: str, fn: Callable[[Batch], Batch], items: Batch) -> Batch:
        """``fn(items)``, in chunks no larger than what fits; a chunk that runs out of memory is halved."""
        size = min(len(items), self.batch_limit.get(stage, len(items)))
        parts: list[Batch] = []
        start = 0
        while start < len(items):
            chunk = items[start : start + size]
            try:
                parts.append(fn(chunk))
            except RuntimeError as exc:
                if size == 1 or not is_out_of_memory(exc):
                    raise
                failed = True
            else:
                failed = False
            if failed:  # outside the except block, so the failed attempt's tensors can be freed
                free_memory(self.device)
                log.warning("out of memory on %s %s %d items at once; retrying %d at a time",
                            self.device, stage, size, size // 2)  # fmt: skip
                size = self.batch_limit[stage] = size // 2
                continue
            start += len(chunk)
        return _join(parts)

    def retry(self, stage: str, attempt: Callable[[], R], owner: Any) -> R:
        """``attempt()``; on out-of-memory at batch size 1, halve ``stage``'s window and retry, then give up."""
        while True:
            try:
                return attempt()
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            free_memory(self.device)
            if not self._shrink(stage, owner):
                raise DeviceError(self._advice(stage, owner, detail))

    def _shrink(self, stage: str, owner: Any) -> bool:
        if stage == "encoding" and getattr(owner, "window", 0) > MIN_WINDOW:
            owner.window = max(MIN_WINDOW, owner.window // 2)
            log.warning("out of memory on %s at batch size 1; encoding in %g s windows", self.device,
                        owner.window / FRAME_RATE)  # fmt: skip
            return True
        if stage == "vocoding" and vocoder_core(owner) > MIN_WINDOW:
            self.vocoder_halvings += 1
            log.warning("out of memory on %s at batch size 1; vocoding in %g s windows", self.device,
                        vocoder_core(owner) / FRAME_RATE)  # fmt: skip
            return True
        return False

    def _advice(self, stage: str, owner: Any, detail: str) -> str:
        window = {"encoding": getattr(owner, "window", 0), "vocoding": vocoder_core(owner)}.get(stage)
        at = f" at batch size 1 with {window / FRAME_RATE:g} s windows" if window else ""
        if self.device.type == "cpu":
            fix = "close other programs, or split the file into shorter parts"
        else:
            fix = "free GPU memory (other processes), or use precision='bf16' or device='cpu'"
        return f"out of memory on {self.device} while {stage}{at} ({detail}); {fix}"


def guard(owner: Any) -> OomGuard:
    """The ``OomGuard`` of a pipeline object (created on first use; it needs ``owner.device``)."""
    found = getattr(owner, "_oom_guard", None)
    if not isinstance(found, OomGuard):
        found = OomGuard(torch.device(owner.device))
        owner._oom_guard = found
    return found


def vocoder_core(owner: Any) -> int:
    """Frames kept per vocoder window: ``VOCODER_CORE``, halved after each out-of-memory at batch size 1."""
    found = getattr(owner, "_oom_guard", None)
    halvings = found.vocoder_halvings if isinstance(found, OomGuard) else 0
    return max(MIN_WINDOW, VOCODER_CORE >> halvings)


def splits_batches(
    stage: str,
) -> Callable[[Callable[..., Batch]], Callable[..., Batch]]:
    """Decorate ``method(self, batch, *args) -> results``: out-of-memory halves the batch (``OomGuard.batched``)."""

    def wrap(method: Callable[..., Batch]) -> Callable[..., Batch]:
        @functools.wraps(method)
        def run(self: Any, items: Batch, *args: Any) -> Batch:
            return guard(self).batched(stage, lambda chunk: method(self, chunk, *args), items)

        return run

    return wrap


def retries_smaller(
    stage: str,
) -> Callable[[Callable[Concatenate[Any, P], R]], Callable[Concatenate[Any, P], R]]:
    """Decorate a stage method: out-of-memory at batch size 1 halves its window (see ``OomGuard.retry``)."""

    def wrap(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
        @functools.wraps(method)
        def run(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
            return guard(self).retry(stage, lambda: method(self, *args, **kwargs), self)

        return run

    return wrap


def _join(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return [item for part in parts for item in part]
