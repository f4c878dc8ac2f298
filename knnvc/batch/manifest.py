"""The settings record of a conversion, so that reruns are honest: an output folder's ``knnvc-manifest.json``
(``Ledger``), and for a one-file conversion the output's own metadata (``TaggedOutput``: no file beside it).

Every conversion into a folder records there the ``Settings`` that shaped its audio (``knnvc.batch.identity``) and,
per output, its status and the seconds it took. On a rerun an output made with the same settings is skipped
("done"); one made with other settings is *stale*, and ``Ledger.check`` stops the batch (``StaleOutputsError`` names
them) unless the caller asked to overwrite; an output with no record (made by hand, before manifests, or by a run
killed before it recorded it) is kept and counted apart ("unrecorded"). Layout (JSON)::

    {"format": "knnvc-manifest/1",
     "settings": {KEY: {"audio": {...compared...}, "knnvc": "0.1.0", "device": "cpu", "first_used": ISO}},
     "files": {"sub/a.wav": {"source": "/in/sub/a.wav", "settings": KEY, "status": "converted",
                             "seconds": 0.41, "audio_seconds": 3.2, "error": null}}}

Outputs are written atomically and recorded only once written, so ``converted`` with KEY always means the file
there was made with KEY; a failure is recorded only where no output exists (a failed re-conversion leaves the old
file, and its record, as they were). Earlier versions also wrote ``queued`` entries: whether such a file was
replaced cannot be told, so it counts as stale.

One file in, one file out: a one-file conversion writes no manifest. Its settings go into the output itself, in the
``comment`` string libsndfile writes into WAV (LIST/INFO), FLAC and Ogg (Vorbis comments) alike: ``TAG_PREFIX``
and JSON ``{"settings": KEY, "audio": {...compact...}}``. A rerun reads it back and sorts the output as the
manifest would: the same KEY is done, another is stale (refused unless overwrite, naming what changed), none is
unrecorded (kept). Use ``ledger_for`` to get the right record for a conversion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knnvc.batch.identity import Settings
from knnvc.batch.plan import manifest_folder
from knnvc.errors import OutputError, UsageError
from vocoder.atomic import write_atomically

if TYPE_CHECKING:
    from knnvc.progress import Job, Progress


log = logging.getLogger(__name__)

MANIFEST_NAME = "knnvc-manifest.json"
FORMAT = "knnvc-manifest/1"
FLUSH_SECONDS = 5.0  # s: at most this long between manifest writes during a batch (plus one at the end)
SHOWN = 5  # stale outputs named in an error message
TAG_PREFIX = "knnvc-settings/1 "  # a one-file output's comment: this, then its settings as JSON
MAX_TAG = 1500  # characters: libsndfile drops longer WAV strings (INFO chunks) without a word


class StaleOutputsError(UsageError):
    """Outputs exist that were made with other settings; re-convert them (overwrite) or write elsewhere."""

    def __init__(self, message: str, stale: list[Path]) -> None:
        super().__init__(message)
        self.stale = stale


@dataclass
class Resume:
    """What a rerun finds: outputs to make, outputs done with these settings, and outputs with no record."""

    todo: list[Job] = field(default_factory=list)
    done: list[Job] = field(default_factory=list)
    unrecorded: list[Job] = field(default_factory=list)

    def reason(self, job: Job) -> str:
        """Why an existing output is kept: "done" (these settings) or "unrecorded" (no settings record)."""
        return "unrecorded" if job in self.unrecorded else "done"


class Ledger:
    """The manifest of one output ``folder`` for a batch converted with ``settings``.

    ``check`` sorts the jobs (and refuses stale outputs), ``record`` records each written output (or failure),
    and ``flush`` writes the manifest. Keys are output paths relative to ``folder``.
    """

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder, self.settings = folder, settings
        self.path = folder / MANIFEST_NAME
        self.tags: dict[str, str] = {}  # libsndfile strings each output carries (``TaggedOutput``): none here
        self.recorded = self._read_recorded()
        self._changed: dict[str, dict[str, Any]] = {}
        self._last_flush = 0.0

    def _read_recorded(self) -> dict[str, Any]:
        """The folder's manifest as it is on disk (a damaged one is an ``OutputError``)."""
        return _read(self.path)

    def key(self, output: Path) -> str:
        """``output``'s name in the manifest: its path relative to the folder (else as given)."""
        try:
            return output.relative_to(self.folder).as_posix()
        except ValueError:
            return str(output)

    def check(self, jobs: Iterable[Job], *, overwrite: bool = False) -> Resume:
        """Sort ``jobs``; raise ``StaleOutputsError`` for outputs made with other settings, unless ``overwrite``."""
        resume, stale = Resume(), []
        for job in jobs:
            if overwrite or not job.output.exists():
                resume.todo.append(job)
                continue
            entry = self.recorded["files"].get(self.key(job.output), {})
            if entry.get("status") == "converted" and entry.get("settings") == self.settings.key:
                resume.done.append(job)
            elif entry.get("status") in ("converted", "queued"):
                stale.append(job)
            else:  # no record, or a failure recorded before this file appeared
                resume.unrecorded.append(job)
        if stale:
            raise self._stale_error(stale)
        return resume

    def _stale_error(self, stale: list[Job]) -> StaleOutputsError:
        keys = {self.recorded["files"][self.key(j.output)]["settings"] for j in stale}
        made = [self.recorded["settings"].get(k, {}).get("audio", {}) for k in keys]
        changes = sorted({c for audio in made for c in self.settings.changes(audio)})
        names = ", ".join(self.key(j.output) for j in stale[:SHOWN]) + (
            f" and {len(stale) - SHOWN} more" if len(stale) > SHOWN else ""
        )
        what = "; ".join(changes[:4]) if changes else "settings not fully re-converted"
        return StaleOutputsError(
            f"{self.folder}: {len(stale)} existing output(s) were made with other settings ({what}): {names}; "
            "re-convert them with overwrite=True, or write to another output folder",
            [j.output for j in stale],
        )

    def record(self, event: Progress) -> None:
        """Record a finished file (a batch ``Progress`` event, done or fail) in memory; ``flush`` writes it. A
        ``done`` event comes once its output is written (as ``runner.run`` and the Ray job send them)."""
        if event.stage not in ("done", "fail") or event.job is None:
            return
        job, error = event.job, event.error
        if error is not None and job.output.exists():  # the file there is untouched (atomic writes): its record stands
            return
        key = self.key(job.output)
        self._changed[key] = self.recorded["files"][key] = {
            "source": str(job.source), "settings": self.settings.key, "status": "failed" if error else "converted",
            "seconds": round(event.seconds, 3), "audio_seconds": round(event.audio_seconds, 3),
            "error": None if error is None else str(error),
        }  # fmt: skip

    def flush(self, *, force: bool = False) -> None:
        """Merge what changed into the manifest on disk (at most every ``FLUSH_SECONDS`` unless ``force``); none is
        started before a file is converted. A failure is logged, not raised: a rerun counts those outputs unrecorded.
        """
        if not self._changed or (not force and time.monotonic() - self._last_flush < FLUSH_SECONDS):
            return
        if not self.path.exists() and not any(e["status"] == "converted" for e in self._changed.values()):
            return
        settings = {"audio": self.settings.audio, **self.settings.facts}
        try:
            with _locked(self.folder):
                merged = _read(self.path)  # other runs into this folder may have recorded files meanwhile
                merged["settings"].setdefault(self.settings.key, settings)
                merged["files"].update(self._changed)
                write_atomically(self.path, json.dumps(merged, indent=1, sort_keys=True).encode())
            self.recorded, self._changed = merged, {}
        except (OSError, OutputError) as exc:  # OutputError: a record another program damaged meanwhile
            log.warning("cannot record settings in %s: %s (the outputs are kept; a rerun counts them as unrecorded)",
                        self.path, getattr(exc, "strerror", None) or exc)  # fmt: skip
        self._last_flush = time.monotonic()


class TaggedOutput(Ledger):
    """The settings record of a one-file conversion: inside the output itself (``tags``, its ``comment``), so that
    nothing is written beside it. ``check`` reads an existing output's tag back; ``record`` and ``flush`` have
    nothing to do (the tag is written with the file, atomically)."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        super().__init__(folder, settings)
        compact = {"settings": settings.key, "audio": settings.compact()}
        text = TAG_PREFIX + json.dumps(compact, sort_keys=True, separators=(",", ":"))
        if len(text) > MAX_TAG:  # the key alone still tells done from stale
            text = TAG_PREFIX + json.dumps({"settings": settings.key})
        self.tags = {"comment": text}
        self._made: dict[Path, dict[str, Any]] = {}

    def _read_recorded(self) -> dict[str, Any]:
        """An output recorded by an earlier version, in the folder's manifest, keeps that record; a folder whose
        manifest cannot be read is none of a one-file conversion's business."""
        try:
            return _read(self.path)
        except OutputError:
            return _empty()

    def check(self, jobs: Iterable[Job], *, overwrite: bool = False) -> Resume:
        """Sort ``jobs`` by each existing output's own tag (else an earlier manifest's record); raise
        ``StaleOutputsError`` for outputs made with other settings, unless ``overwrite``."""
        resume, stale = Resume(), []
        for job in jobs:
            if overwrite or not job.output.exists():
                resume.todo.append(job)
                continue
            made = read_tag(job.output)
            if made is None:
                sorted_out = super().check([job])  # no tag: what the folder's manifest says, if anything
                resume.done += sorted_out.done
                resume.unrecorded += sorted_out.unrecorded
            elif made.get("settings") == self.settings.key:
                resume.done.append(job)
            else:
                self._made[job.output] = made
                stale.append(job)
        if stale:
            raise self._stale_error(stale)
        return resume

    def _stale_error(self, stale: list[Job]) -> StaleOutputsError:
        if not self._made:  # stale by the folder's manifest
            return super()._stale_error(stale)
        now = Settings(self.settings.compact())
        changes = sorted({c for made in self._made.values() for c in now.changes(made.get("audio", {}))})
        what = "; ".join(changes[:4]) if changes else "other settings"
        names = ", ".join(str(j.output) for j in stale[:SHOWN])
        return StaleOutputsError(
            f"{names}: made with other settings ({what}); re-convert with overwrite=True, or write to another file",
            [j.output for j in stale],
        )

    def record(self, event: Progress) -> None:
        """Nothing to record: the output carries its settings."""

    def flush(self, *, force: bool = False) -> None:
        """Nothing to write: the output carries its settings."""


def read_tag(path: Path) -> dict[str, Any] | None:
    """The settings a knnvc output carries in its own metadata (``TaggedOutput``), or None (no tag, not audio)."""
    import soundfile as sf

    try:
        with sf.SoundFile(os.fsencode(path) if os.name != "nt" else str(path)) as audio:
            comment = audio.comment or ""
    except (OSError, RuntimeError, ValueError, sf.LibsndfileError):
        return None
    if not comment.startswith(TAG_PREFIX):
        return None
    try:
        made = json.loads(comment[len(TAG_PREFIX) :])
    except ValueError:
        return None
    return made if isinstance(made, dict) else None


def ledger_for(source: Path, jobs: list[Job], settings: Settings) -> Ledger:
    """The settings record of converting ``source`` into ``jobs``' outputs with ``settings``: the output folder's
    manifest for a folder of sources (``Ledger``), the output's own metadata for one file (``TaggedOutput``)."""
    folder = manifest_folder(source, jobs)
    return TaggedOutput(folder, settings) if source.is_file() else Ledger(folder, settings)


def _read(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, or an empty one; a damaged one is an ``OutputError`` naming it."""
    if not path.exists():
        return _empty()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read this settings record ({exc}); move it away to start afresh") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutputError(f"{path}: not a {FORMAT} settings record; move it away to start afresh")
    data.setdefault("settings", {})
    data.setdefault("files", {})
    return data


def _empty() -> dict[str, Any]:
    return {"format": FORMAT, "settings": {}, "files": {}}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` while its manifest is merged. Atomic replace keeps the JSON whole, but a
    merge is read, update, replace: two runs reading the same manifest would each drop the other's new records."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer per folder is assumed
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)  # the folder itself: no lock file is left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
