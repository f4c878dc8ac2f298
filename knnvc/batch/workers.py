"""Decode ahead of the compute and write behind it: a batch's I/O in worker threads (``Overlap``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from knnvc.audio import write
from knnvc.errors import DiskFullError, KnnvcError
from knnvc.progress import Job


def save(path: Path, wav: np.ndarray, rate: int, tags: Mapping[str, str] | None = None) -> None:
    """Write an output atomically at ``rate`` (no resampling), with ``tags`` in the file's own metadata: the
    settings record of a one-file conversion (``knnvc.batch.manifest.TaggedOutput``). ``OutputError`` as
    ``knnvc.audio.write.save`` raises it."""
    write.save(path, wav, sample_rate=rate, source_rate=rate, tags=tags)


class Overlap:
    """Decode sources ahead of the compute and write outputs behind it, in worker threads.

    ``load`` decodes a source ((N,) float32; a ``KnnvcError`` fails that file), ``finish`` turns a synthesised
    output into the final one at ``rate`` Hz (loudness, resampling); both run in worker threads. libsndfile, soxr
    and file writes release the GIL, so a GPU (or the CPU's math threads) keeps working while the next group is
    decoded and the last one is encoded to disk. Writes stay atomic (``save``), each output carrying ``tags`` in
    its metadata; leaving the ``with`` block waits for every write already handed over, so Ctrl-C never loses one.
    """

    def __init__(
        self,
        load: Callable[[Path], np.ndarray],
        finish: Callable[[np.ndarray], np.ndarray],
        rate: int,
        workers: int = 2,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._decode, self._finish, self.rate, self.tags = load, finish, rate, tags
        self._readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="knnvc-read")
        # Loudness and resampling of finished outputs (numpy and soxr release the GIL), off the compute thread.
        self._chores = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="knnvc-finish")
        # One writer keeps outputs in order, so a full disk stops the batch at the first file it hits.
        self._writers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knnvc-write")
        self._writes: list[tuple[int, Job, Future[float | None]]] = []
        self._disk_full = threading.Event()
        self.interrupted = False
        self.seconds: dict[int, float] = {}  # job index -> its share of the compute, until recorded

    def __enter__(self) -> Overlap:
        return self

    def __exit__(self, *exc: object) -> None:
        self._readers.shutdown(wait=True, cancel_futures=True)
        self._writers.shutdown(wait=True)
        self._chores.shutdown(wait=True)

    def _load(self, job: Job) -> np.ndarray | KnnvcError:
        try:
            return self._decode(job.source)
        except KnnvcError as exc:
            return exc

    def groups(
        self, todo: list[tuple[int, Job]], size: int
    ) -> Iterator[list[tuple[int, Job, np.ndarray | KnnvcError]]]:
        """Decoded groups of up to ``size`` jobs, in order; the next group is decoded while one is used."""
        chunks = [todo[start : start + size] for start in range(0, len(todo), size)]
        futures = [[(i, job, self._readers.submit(self._load, job)) for i, job in chunk] for chunk in chunks[:1]]
        for n in range(len(chunks)):
            if n + 1 < len(chunks):
                futures.append([(i, job, self._readers.submit(self._load, job)) for i, job in chunks[n + 1]])
            yield [(i, job, future.result()) for i, job, future in futures[n]]
            futures[n] = []

    def _save(self, job: Job, finished: Future[np.ndarray]) -> float | None:
        """Write one output; None when a full disk already stopped the batch (the job is left for a rerun)."""
        if self._disk_full.is_set():
            return None
        wav = finished.result()
        try:
            save(job.output, wav, self.rate, self.tags)
        except DiskFullError:
            self._disk_full.set()
            raise
        return len(wav) / self.rate

    def write(self, i: int, job: Job, wav: np.ndarray) -> None:
        """Run ``finish`` on a synthesised output, then write it, in the workers; the caller never waits."""
        finished = self._chores.submit(self._finish, wav)
        self._writes.append((i, job, self._writers.submit(self._save, job, finished)))

    def _outcomes(self, wait: bool) -> list[tuple[int, Job, float | KnnvcError]]:
        done: list[tuple[int, Job, float | KnnvcError]] = []
        kept: list[tuple[int, Job, Future[float | None]]] = []
        for i, job, future in self._writes:
            if not (wait or future.done()):
                kept.append((i, job, future))
                continue
            try:
                seconds = future.result()
                if seconds is not None:  # None: never attempted, the disk was full
                    done.append((i, job, seconds))
            except KnnvcError as exc:
                done.append((i, job, exc))
            except KeyboardInterrupt:  # raised inside a write: that file is abandoned (atomically), stop
                self.interrupted = True
        self._writes = kept
        return done

    def finished(self) -> list[tuple[int, Job, float | KnnvcError]]:
        """Writes completed so far: (index, job, audio seconds or the error)."""
        return self._outcomes(wait=False)

    def finish(self) -> list[tuple[int, Job, float | KnnvcError]]:
        """Wait for every write handed over and return their outcomes."""
        return self._outcomes(wait=True)
