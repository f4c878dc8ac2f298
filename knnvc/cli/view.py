"""What ``knnvc convert`` shows on stderr while it works: a status line naming each stage of its start (``Stages``),
then a bar over the files (ETA by audio seconds) and one over the windows (``BatchView``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from knnvc.cli import common
from knnvc.errors import KnnvcError
from knnvc.progress import WINDOW_STAGES, Job, Progress

if TYPE_CHECKING:
    from types import TracebackType

    from rich.live import Live
    from rich.progress import Progress as RichProgress
    from rich.progress import ProgressColumn, Task
    from rich.spinner import Spinner

log = logging.getLogger(__name__)


class Stages:
    """A command's start, stage by stage: one transient status line on stderr (drawn on a terminal only) that names
    what is happening now ("loading torch…", "loading models: WavLM-Large…"), redrawn as each stage begins, so that
    something shows at once, before the slow imports. Each stage's seconds are logged (``--verbose`` shows them).

    Used as ``with Stages(show) as stages: stages.now("checking the inputs") ...``; leaving the block clears the line
    (before an error is printed, or the progress bar takes its place).
    """

    def __init__(self, show: bool) -> None:
        self.show = show
        self.live: Live | None = None
        self.spinner: Spinner | None = None
        self.stage, self.since = "", time.perf_counter()

    def __enter__(self) -> Stages:
        if self.show:
            from rich.live import Live
            from rich.spinner import Spinner

            self.spinner = Spinner("dots", text="starting…", style="status.spinner")
            self.live = Live(self.spinner, console=common.err, transient=True, refresh_per_second=12.5)
            self.live.start(refresh=True)
        return self

    def now(self, what: str) -> None:
        """Stage ``what`` begins: log how long the last one took, and show this one at once."""
        self._log()
        self.stage, self.since = what, time.perf_counter()
        if self.live is not None and self.spinner is not None:
            self.spinner.update(text=f"{what}…")
            self.live.refresh()

    def _log(self) -> None:
        if self.stage:
            log.debug("%s: %.2f s", self.stage, time.perf_counter() - self.since)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._log()
        if self.live is not None:
            self.live.stop()
            self.live = None

def eta_column() -> ProgressColumn:
    """A rich column: time left at the average speed so far (audio seconds per wall second since converting began).

    rich's own column uses the last 30 s of updates, which a batch's bursts of finished files throw far off.
    (Built on first use: rich.progress stays out of ``knnvc --help``.)
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Eta(ProgressColumn):
        def render(self, task: Task) -> Text:
            elapsed, done, total = task.elapsed, task.completed, task.total
            if not elapsed or done <= 0 or total is None:
                return Text("-:--:--", style="progress.remaining")
            left = max(0.0, (total - done) * elapsed / done)
            hours, minutes, seconds = int(left // 3600), int(left % 3600 // 60), int(left % 60)
            return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return Eta()


class BatchView:
    """Rich progress on stderr: one bar over the files (ETA by audio seconds), one over the current file's windows.

    The bar names the files the pipeline is converting (their ``start`` events; a group's files are computed
    together), not ones being decoded ahead. A file's audio seconds count as done when it is written, and within a
    file converted alone by its windows.
    """

    def __init__(
        self,
        todo: list[Job],
        *,
        show: bool,
        verbose: bool,
        clock: Callable[[], float] | None = None,
        began: float | None = None,
    ) -> None:
        """``began``: when the command began (``time.perf_counter``), for a one-file run whose result line also
        says how long the start took (imports, models, the voice: until its file began converting)."""
        from knnvc.audio.decode import duration_seconds

        self.show, self.verbose, self.clock = show, verbose, clock
        self.began = began
        self.started_in: float | None = None  # seconds from ``began`` to the first file's start
        self.lengths = {job.source: _safe_duration(duration_seconds, job.source) for job in todo}
        self.credited: dict[Path, float] = {}  # audio seconds of each file counted as converted so far
        self.running: list[Job] = []  # started, not yet done or failed
        self.files, self.done, self.failed = len(todo), 0, 0
        self.bar: RichProgress | None = None

    def __enter__(self) -> BatchView:
        from rich.progress import BarColumn, TextColumn

        if not self.show:
            return self
        info = TextColumn("{task.fields[info]}")
        columns = (TextColumn("{task.description}"), BarColumn(), info, eta_column())
        self.bar = common.progress_bar(*columns, get_time=self.clock)
        self.bar.start()
        self.files_task = self.bar.add_task("converting", total=sum(self.lengths.values()) or None, info=self._info())
        self.chunk_task = self.bar.add_task("", total=None, visible=False, info="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _info(self) -> str:
        return f"{self.done}/{self.files} files" + (f", {self.failed} failed" if self.failed else "")

    def _credit(self, job: Job | None, fraction: float) -> None:
        """Count ``fraction`` of ``job``'s audio as converted (never less than before)."""
        if job is None or self.bar is None:
            return
        seconds = self.lengths.get(job.source, 0.0) * min(1.0, fraction)
        gain = seconds - self.credited.get(job.source, 0.0)
        if gain > 0:
            self.credited[job.source] = seconds
            self.bar.update(self.files_task, advance=gain)

    def on_event(self, event: Progress) -> None:
        if self.bar is None or event.job is None:
            return
        job, stage = event.job, event.stage
        if stage == "start":
            if self.began is not None and self.started_in is None:
                self.started_in = time.perf_counter() - self.began
            self.running.append(job)
            self._describe()
        elif stage in WINDOW_STAGES:
            self._window(event)
        elif stage == "skip":
            if self.verbose:
                skipped = f"skipped {common.shown(job.output)} (exists; --overwrite replaces it)"
                self.bar.console.print(skipped, markup=False)
        else:
            self._finished(event)

    def _describe(self) -> None:
        """Name the files being converted: the first of the group, and how many more."""
        assert self.bar is not None
        if self.running:
            more = f" (+{len(self.running) - 1})" if len(self.running) > 1 else ""
            self.bar.update(self.files_task, description=f"converting {self.running[0].source.name}{more}")

    def _window(self, event: Progress) -> None:
        """Windows of a long file: their own bar, and half of the file's audio per stage (encode, vocode)."""
        assert self.bar is not None
        done, total = event.index, event.total or 1
        self._credit(event.job, 0.5 * (done / total + (event.stage == "vocode")))
        if total > 1:
            self.bar.update(self.chunk_task, description=f"  {event.stage} windows", completed=done, total=total,
                            visible=True, info=f"{done}/{total}")  # fmt: skip

    def _finished(self, event: Progress) -> None:
        assert self.bar is not None and event.job is not None
        job = event.job
        self.done += 1
        if job in self.running:
            self.running.remove(job)
            self._describe()
        if event.stage == "fail" and not self.credited.get(job.source):  # never computed: no longer to come
            self.failed += 1
            total = self.bar.tasks[self.files_task].total
            self.bar.update(self.files_task, total=max(0.0, (total or 0.0) - self.lengths.get(job.source, 0.0)))
        else:
            self.failed += event.stage == "fail"
            self._credit(job, 1.0)
        self.bar.update(self.files_task, info=self._info())
        self.bar.update(self.chunk_task, visible=False)
        if event.stage == "done":
            start = "" if self.started_in is None else f" (started in {self.started_in:.1f} s)"
            self.bar.console.print(
                f"{common.shown(job.output)}: {event.audio_seconds:.1f} s of audio in {event.seconds:.2f} s{start}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip


def _safe_duration(measure: Callable[[Path], float], path: Path) -> float:
    """The header's duration, or 0 for a file whose header cannot be read (it will fail to convert anyway)."""
    try:
        return float(measure(path))
    except KnnvcError:
        return 0.0
