"""The server's one object: the loaded pipeline, the saved voices, the limits, the temp folders and the queue.

The page and the HTTP API both call ``Service``; it calls ``KnnVC.convert``, ``KnnVC.build_voice`` and
``knnvc.batch`` with a ``ConvertOptions`` and does nothing else to the audio. A request converts onto reference
files, a saved voice or a pair (LinearVC's map: a saved one, or an uploaded ``.pair`` file); saved voices and pairs
are the ``.voice`` and ``.pair`` files of one folder (``--voices``), offered by name. Every upload lands in a
request's own temp folder (``Service.uploads``), removed when the request ends; the whole workspace goes at
``close``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from knnvc.audio import decode, write
from knnvc.batch import plan, runner
from knnvc.errors import AudioError, UsageError, VoiceError
from knnvc.options import DEFAULT_OPTIONS, PAIR_SUFFIX, VOICE_SUFFIX, ConvertOptions
from knnvc.progress import WINDOW_STAGES, OnProgress, Progress
from knnvc.voice import Pair, Voice
from knnvc.web import zips
from knnvc.web.queue import ModelQueue

if TYPE_CHECKING:
    import numpy as np

    from knnvc.pipeline import KnnVC

log = logging.getLogger(__name__)

Notify = Callable[[str, "float | None"], None]
"""``notify(description, fraction done or None)``: progress of long work, for the page's progress bar."""

RESULT_TTL_S = 3600.0  # s: results handed to the page are removed after this long (the page copies them at once)
BATCH_EXPANSION = 4  # a batch zip may hold up to this many times the upload limit, uncompressed


@dataclass(frozen=True)
class Target:
    """What a request converts into, and how: one of a saved voice by name, reference files, a saved pair by name
    or an uploaded ``.pair`` file (``pair_file``). A pair always converts with its map (LinearVC's)."""

    voice: str | None = None
    references: Sequence[Path] = ()
    options: ConvertOptions = DEFAULT_OPTIONS
    pair: str | None = None
    pair_file: Path | None = None


class TooLargeError(UsageError):
    """An upload over the server's size or duration limit (HTTP 413)."""


class UnfitTargetError(UsageError):
    """A target that the options' method cannot convert onto (HTTP 422): LinearVC without a pair, a pair with
    method mkl, MKL-VC from less than 1 s of speech or a compact voice, k above a voice's frames."""


@dataclass(frozen=True)
class Limits:
    """What one request may send.

    Attributes:
        max_upload_mb: megabytes (10^6 bytes) in one request, all its files together.
        max_seconds: seconds of audio in any one uploaded file (read from its header).
        max_batch_files: files in one batch zip.
        max_waiting: requests that may wait for the model while one runs; more get "busy" (HTTP 503).
    """

    max_upload_mb: float = 200.0
    max_seconds: float = 600.0
    max_batch_files: int = 500
    max_waiting: int = 16

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_seconds <= 0 or self.max_batch_files < 1 or self.max_waiting < 0:
            raise UsageError("upload limits must be positive (and the waiting line at least 0)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


class Uploads:
    """One request's temp folder. Error messages name the uploads as the user called them, never temp paths."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._shown: dict[str, str] = {}

    def place(self, shown: str, group: str) -> Path:
        """A fresh path in this folder for an upload called ``shown`` (its name made safe), in subfolder ``group``."""
        base = re.sub(r"[^\w.\- ]+", "_", Path(shown.replace("\\", "/")).name).strip(" .") or "upload"
        folder = self.folder / group
        folder.mkdir(parents=True, exist_ok=True)
        path, n = folder / base, 1
        while path.exists():
            path, n = folder / f"{n}-{base}", n + 1
        return self.known(path, Path(shown.replace("\\", "/")).name or base)

    def known(self, path: Path, shown: str) -> Path:
        """Remember that ``path`` is called ``shown`` in messages; returns ``path``."""
        self._shown[str(path)] = shown
        return path

    def shown(self, path: str | os.PathLike[str]) -> str:
        return self._shown.get(str(path), Path(path).name)

    def message(self, exc: BaseException) -> str:
        """``exc`` as one line, temp paths replaced by the names the user gave."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        for path in sorted(self._shown, key=len, reverse=True):
            text = text.replace(path, self._shown[path])
        return text.replace(str(self.folder) + os.sep, "")


class Service:
    """Everything the page and the API share; thread-safe (the model is used one request at a time).

    Args:
        vc: a loaded ``KnnVC`` (``KnnVC.from_pretrained``).
        voices: the folder of saved ``.voice`` and ``.pair`` files offered by name (created if missing), or None.
        limits: what one request may send.
        temp_root: where the workspace folder is made (default: the system's temp folder).
    """

    def __init__(
        self, vc: KnnVC, *, voices: Path | None = None, limits: Limits | None = None, temp_root: Path | None = None
    ) -> None:
        self.vc = vc
        self.limits = limits or Limits()
        self.voices_dir = voices
        if voices is not None:
            voices.mkdir(parents=True, exist_ok=True)
        self.queue = ModelQueue(self.limits.max_waiting)
        self.workspace = Path(tempfile.mkdtemp(prefix="knnvc-serve-", dir=temp_root))
        for sub in ("jobs", "results", "gradio"):
            (self.workspace / sub).mkdir()

    def close(self) -> None:
        """Remove the workspace: every upload and result still there."""
        shutil.rmtree(self.workspace, ignore_errors=True)

    @contextmanager
    def uploads(self) -> Iterator[Uploads]:
        """A temp folder for one request, removed when the block ends."""
        folder = Path(tempfile.mkdtemp(prefix="uploads-", dir=self.workspace / "jobs"))
        try:
            yield Uploads(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def result_path(self, name: str) -> Path:
        """Where to write a file the page hands to Gradio (which copies it); old results are swept here."""
        now = time.time()
        for old in (self.workspace / "results").iterdir():
            if now - old.stat().st_mtime > RESULT_TTL_S:
                zips.remove(old)
        return Path(tempfile.mkdtemp(dir=self.workspace / "results")) / name

    # -- voices -----------------------------------------------------------------------------------------
    def voice_names(self) -> list[str]:
        """Names of the saved voices (file stems in ``--voices``), sorted."""
        return self._saved(VOICE_SUFFIX)

    def pair_names(self) -> list[str]:
        """Names of the saved pairs (``.pair`` file stems in ``--voices``), sorted."""
        return self._saved(PAIR_SUFFIX)

    def _saved(self, suffix: str) -> list[str]:
        if self.voices_dir is None or not self.voices_dir.is_dir():
            return []
        return sorted(p.stem for p in self.voices_dir.glob(f"*{suffix}") if p.is_file())

    def voice(self, name: str) -> Voice:
        """A saved voice by name; ``VoiceError`` for a name that is not one of ``voice_names``."""
        names = self.voice_names()
        if name not in names:
            none = "none yet (build one in the Voice tab)" if self.voices_dir else "none (start with --voices DIR)"
            offered = ", ".join(names) if names else none
            raise VoiceError(f"no saved voice named {name!r}; the saved voices are: {offered}")
        assert self.voices_dir is not None
        return Voice.load(self.voices_dir / f"{name}{VOICE_SUFFIX}")

    def pair(self, name: str) -> Path:
        """A saved pair's file by name; ``VoiceError`` for a name that is not one of ``pair_names``."""
        names = self.pair_names()
        if name not in names:
            none = "none yet (save one here as NAME.pair)" if self.voices_dir else "none (start with --voices DIR)"
            raise VoiceError(f"no saved pair named {name!r}; the saved pairs are: {', '.join(names) or none}")
        assert self.voices_dir is not None
        return self.voices_dir / f"{name}{PAIR_SUFFIX}"

    # -- checks -----------------------------------------------------------------------------------------
    def check_audio(self, uploads: Uploads, path: Path) -> None:
        """Refuse an empty upload, or one longer than ``max_seconds`` (from its header, before decoding)."""
        shown = uploads.shown(path)
        if path.stat().st_size == 0:
            raise AudioError(f"{shown} is empty (0 bytes); record or upload some speech")
        try:
            seconds = decode.duration_seconds(path)
        except AudioError:
            kinds = ", ".join(sorted(ext.lstrip(".").upper() for ext in decode.AUDIO_EXTENSIONS))
            raise AudioError(f"{shown} is not audio this server can read; send {kinds}") from None
        if seconds > self.limits.max_seconds:
            raise TooLargeError(
                f"{shown} is {seconds:.0f} s long; this server takes at most {self.limits.max_seconds:g} s per file"
            )

    def _target(self, uploads: Uploads, target: Target, name: str = "") -> Voice | Pair:
        """The saved voice or pair ``target`` names, an uploaded pair, or a voice built from its references (shown by
        their upload names)."""
        pair = self.pair(target.pair) if target.pair else target.pair_file
        if pair is not None:
            return Pair.load(uploads.known(pair, uploads.shown(pair)))  # messages name it, not its folder
        if target.voice:
            return self.voice(target.voice)
        refs = list(target.references)
        built = self.vc.build_voice(refs, trim=target.options.trim, name=name or Path(uploads.shown(refs[0])).stem)
        sources = tuple(dataclasses.replace(s, path=uploads.shown(s.path)) for s in built.sources)
        return dataclasses.replace(built, sources=sources)

    @contextmanager
    def _turn(self, uploads: Uploads, target: Target, say: Notify, name: str = "") -> Iterator[Voice | Pair]:
        """Wait for the model (saying how many are ahead), then hold it: the target's voice, loaded or built, or its
        pair; checked to suit the options (``UnfitTargetError``) before any source is read."""
        _check_target(target)
        for path in target.references:
            self.check_audio(uploads, path)
        with self.queue.turn(lambda ahead: say(f"waiting for the model: {ahead} ahead", None)):
            loading = "pair" if target.pair or target.pair_file else "voice"
            say("building the voice" if target.references else f"loading the {loading}", None)
            found = self._target(uploads, target, name)
            try:
                self.vc.check_target(found, target.options)
            except UsageError as exc:
                raise UnfitTargetError(str(exc)) from exc
            yield found

    # -- work -------------------------------------------------------------------------------------------
    def convert(
        self, uploads: Uploads, source: Path, target: Target, notify: Notify | None = None
    ) -> tuple[np.ndarray, int]:
        """``source`` said in ``target``'s voice: ((N,) float32, its rate in Hz)."""
        _check_target(target)  # a target that cannot work is refused before any upload is read
        self.check_audio(uploads, source)
        say = notify or _quiet
        with self._turn(uploads, target, say) as voice:
            say("converting", 0.0)
            wav = self.vc.convert(source, voice, target.options, progress=_windows(say))
        return wav, self.vc.output_rate(target.options)

    def save(self, wav: np.ndarray, rate: int, path: Path) -> Path:
        """Write a result (format from the extension), atomically."""
        return write.save(path, wav, sample_rate=rate, source_rate=rate)

    def build_voice(
        self,
        uploads: Uploads,
        references: Sequence[Path],
        name: str,
        *,
        trim: bool = True,
        notify: Notify | None = None,
    ) -> tuple[Voice, Path]:
        """Build a voice from ``references`` and save it as ``NAME.voice`` in ``--voices`` (else a result)."""
        clean = plan.safe_name(name.strip()) if name.strip() else ""
        if not clean:
            raise UsageError("give the voice a name (letters, digits, '-', '_' or '.')")
        if self.voices_dir is not None and clean in self.voice_names():
            raise UsageError(f"a saved voice named {clean!r} exists; choose another name")
        folder = self.voices_dir
        path = folder / f"{clean}{VOICE_SUFFIX}" if folder is not None else self.result_path(f"{clean}{VOICE_SUFFIX}")
        target = Target(references=references, options=ConvertOptions(trim=trim))
        with self._turn(uploads, target, notify or _quiet, name=clean) as voice:
            pass  # built while the model is held; written once it is free
        assert isinstance(voice, Voice)  # built from references
        return voice, voice.save(path)

    def convert_zip(
        self, uploads: Uploads, archive: Path, target: Target, extension: str = ".wav", notify: Notify | None = None
    ) -> tuple[Path, plan.Report]:
        """Convert every audio file in a zip; returns a zip of the results (same tree) plus ``report.json``."""
        ext = plan.check_extension(extension)
        _check_target(target)
        inputs, outputs = uploads.folder / "in", uploads.folder / "out"
        limit = self.limits.max_upload_bytes * BATCH_EXPANSION
        files = zips.extract(
            archive, inputs, max_bytes=limit, max_files=self.limits.max_batch_files, label=uploads.shown(archive)
        )
        uploads.known(inputs, uploads.shown(archive))
        for path in files:
            uploads.known(path, str(path.relative_to(inputs)))
            if path.suffix.lower() in decode.AUDIO_EXTENSIONS:
                with contextlib.suppress(AudioError):  # an unreadable file fails alone, named in the report
                    self.check_audio(uploads, path)
        say = notify or _quiet
        with self._turn(uploads, target, say) as voice:
            jobs = plan.plan(inputs, outputs, voice.name, extension=ext)

            def on_file(event: Progress) -> None:
                if event.stage in ("done", "fail") and event.total:
                    say(f"converted {event.index + 1} of {event.total} files", (event.index + 1) / event.total)

            report = runner.run(self.vc, jobs, voice, target.options, progress=on_file)
        summary = report.summary()
        summary["outputs"] = [str(j.output.relative_to(outputs)) for j in report.converted]
        summary["failures"] = [
            {"file": uploads.shown(f.source), "error": uploads.message(f.error)} for f in report.failed
        ]
        summary.pop("skipped_outputs", None)
        outputs.mkdir(parents=True, exist_ok=True)
        (outputs / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
        stem = Path(uploads.shown(archive)).stem or "batch"
        return zips.pack(outputs, self.result_path(f"{stem}_{plan.safe_name(voice.name)}.zip")), report


def _check_target(target: Target) -> None:
    """``UsageError`` unless ``target`` names exactly one target; ``UnfitTargetError`` for LinearVC without a pair
    (before any upload is read)."""
    pair = bool(target.pair or target.pair_file)
    given = [what for what, there in [("reference audio", bool(target.references)), ("a saved voice",
             bool(target.voice)), ("a pair", pair)] if there]  # fmt: skip
    if len(given) > 1:
        raise UsageError(f"give one target: {' or '.join(given)}, not {'both' if len(given) == 2 else 'all three'}")
    if not given:
        raise UsageError("give reference audio of the target speaker, or pick a saved voice or pair")
    if target.options.method == "linear" and not pair:
        raise UnfitTargetError(
            "method linear (LinearVC) converts with a pair, a map fitted from a source speaker's recordings: pick a "
            "saved pair or send a .pair file, or use method knn or mkl"
        )


def _quiet(description: str, fraction: float | None) -> None:
    log.debug("%s %s", description, "" if fraction is None else f"{fraction:.0%}")


def _windows(say: Notify) -> OnProgress:
    """The pipeline's window events (``knnvc.progress.Progress``) over long audio, as ``say``."""

    def progress(event: Progress) -> None:
        if event.stage in WINDOW_STAGES:
            done, total = event.index, event.total
            say(f"{event.stage}: window {done} of {total}", done / total if total else None)

    return progress
