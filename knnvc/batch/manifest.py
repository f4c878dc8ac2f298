"""The settings record of an output folder: ``knnvc-manifest.json``, so that reruns are honest.

Every conversion into a folder records, in that folder's manifest, the settings that shaped its audio (the voice,
every ``ConvertOptions`` field, the weights, the precision, the output format and rate) and, per output, its status
and the seconds it took. A rerun compares: an output made with the same settings is skipped ("done"); one made with
other settings is *stale*, and ``check`` refuses to go on (``StaleOutputsError`` names them) unless the caller asked
to overwrite. An existing output with no record (made before manifests, or by hand) is kept and counted apart.

Layout (JSON, written atomically; a lock on the folder serialises writers sharing it)::

    {"format": "knnvc-manifest/1",
     "settings": {KEY: {"audio": {...compared...}, "knnvc": "0.1.0", "device": "cpu", "first_used": ISO}},
     "files": {"sub/a.wav": {"source": "/in/sub/a.wav", "settings": KEY, "status": "converted",
                             "seconds": 0.41, "audio_seconds": 3.2, "error": null, "queued_ns": 17...}}}

``status`` is queued (about to be converted), converted or failed. Outputs are written atomically (a new inode), so
a queued entry whose output exists and is not the file it replaces (``was``: inode and mtime) was finished by a run
that stopped before its next flush.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knnvc.errors import AudioError, KnnvcError, OutputError, UsageError
from knnvc.files import sha256
from knnvc.options import ConvertOptions
from vocoder.atomic import write_atomically

if TYPE_CHECKING:
    from knnvc.pipeline import KnnVC
    from knnvc.progress import Job, Progress
    from knnvc.voice import Voice

log = logging.getLogger(__name__)

MANIFEST_NAME = "knnvc-manifest.json"
FORMAT = "knnvc-manifest/1"
FLUSH_SECONDS = 5.0  # s: at most this long between manifest writes during a batch (plus one at the end)
SHOWN = 5  # stale outputs named in an error message


class StaleOutputsError(UsageError):
    """Outputs exist that were made with other settings; re-convert them (overwrite) or write elsewhere."""

    def __init__(self, message: str, stale: list[Path]) -> None:
        super().__init__(message)
        self.stale = stale


@dataclass(frozen=True)
class Settings:
    """What shaped a batch's audio (``audio``, compared on reruns) and facts kept beside it (not compared)."""

    audio: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A short hash of ``audio``: equal keys mean outputs made the same way."""
        return sha256([json.dumps(self.audio, sort_keys=True).encode()])[:16]

    def changes(self, other: dict[str, Any]) -> list[str]:
        """``section.name: old -> new`` for every compared value that differs from ``other`` (a recorded one)."""
        out = []
        for section in sorted(set(self.audio) | set(other)):
            old, new = other.get(section, {}), self.audio.get(section, {})
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    out.append(f"{section}.{name}: {_short(old.get(name))} -> {_short(new.get(name))}")
        return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def voice_identity(target: Voice | Path) -> dict[str, Any]:
    """Who the outputs sound like, without encoding anything.

    A saved or in-memory ``Voice``: its name, encoder and a hash of its (M, D) frames. Reference audio (a file or
    a folder, as ``build_voice`` reads it): the sha256 of each file in order (built with the same encoder and trim,
    the same references give the same voice).
    """
    from knnvc.audio import decode
    from knnvc.voice import Voice

    if isinstance(target, Voice):
        frames = target.frames.detach().cpu().float().contiguous().numpy().tobytes()
        return {
            "name": target.name,
            "encoder_fingerprint": target.encoder_fingerprint,
            "layer": target.layer,
            "frames_sha256": sha256([frames])[:16],
        }
    files = decode.audio_files(target) if target.is_dir() else [target]
    try:
        hashes = [sha256(p)[:16] for p in files]
    except OSError as exc:
        raise AudioError(f"{exc.filename or target}: cannot read ({exc.strerror}); check the reference") from exc
    return {"name": target.stem if target.is_file() else target.resolve().name, "references": hashes}


def _morph_identity(morph: object) -> dict[str, Any] | None:
    from knnvc.voice import Voice

    return voice_identity(morph) if isinstance(morph, Voice) else None


def vocoder_identity(name: str) -> str:
    """The sha256 of a vocoder checkpoint (the registry's pinned one, else the file's), for the record."""
    from knnvc.weights import hub

    try:
        entry = hub.get_entry(name, "vocoder")
    except KnnvcError:  # not a registry name: a path
        entry = None
    if entry is not None and entry.sha256:
        return entry.sha256[:16]
    return sha256(hub.resolve_vocoder(name, offline=True))[:16]


def settings_for(
    voice: dict[str, Any],
    options: ConvertOptions,
    *,
    encoder: tuple[str, str, int],
    vocoder: str,
    precision: str,
    extension: str,
    sample_rate: int,
    device: str = "",
) -> Settings:
    """The ``Settings`` of a batch: ``voice`` from ``voice_identity``, ``encoder`` as (name, fingerprint, layer),
    ``vocoder`` its registry name or path, ``precision`` the resolved dtype (``torch.float32``...)."""
    from importlib.metadata import version



    name, fingerprint, layer = encoder
    audio = {
        "voice": voice,
        "options": {**asdict(replace(options, morph=None)), "morph": _morph_identity(options.morph)},
        "weights": {"wavlm": fingerprint, "layer": layer, "vocoder": vocoder_identity(vocoder)},
        "compute": {"precision": precision},
        "output": {"format": extension, "sample_rate": sample_rate},
    }
    facts = {"knnvc": version("knnvc"), "wavlm": name, "vocoder": vocoder, "device": device,
             "first_used": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    return Settings(audio, facts)



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

    ``check`` sorts the jobs (and refuses stale outputs), ``queue`` records the ones about to be converted,
    ``record`` records each outcome, and ``flush`` writes the manifest (atomically, merged with what other
    writers put there meanwhile). Keys are output paths relative to ``folder``.
    """

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder, self.settings = folder, settings
        self.path = folder / MANIFEST_NAME
        self.recorded = _read(self.path)
        self._changed: dict[str, dict[str, Any]] = {}
        self._last_flush = 0.0

    def key(self, output: Path) -> str:
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
            entry = self.recorded["files"].get(self.key(job.output))
            state = self._state(job.output, entry)
            if state == "stale":
                stale.append(job)
            else:
                (resume.done if state == "done" else resume.unrecorded).append(job)
        if stale:
            raise self._stale_error(stale)
        return resume

    def _state(self, output: Path, entry: dict[str, Any] | None) -> str:
        """done, stale or unrecorded, for an existing ``output`` and its manifest entry."""
        if entry is None or entry.get("status") == "failed":
            return "unrecorded"
        if entry.get("settings") != self.settings.key:
            return "stale"
        if entry.get("status") == "queued":  # the run that queued it stopped before recording it
            stat = output.stat()
            return "stale" if entry.get("was") == [stat.st_ino, stat.st_mtime_ns] else "done"
        return "done"

    def _stale_error(self, stale: list[Job]) -> StaleOutputsError:
        keys = {self.recorded["files"][self.key(j.output)]["settings"] for j in stale}
        changes = sorted({c for k in keys for c in self.settings.changes(_audio(self.recorded, k))})
        names = ", ".join(self.key(j.output) for j in stale[:SHOWN]) + (
            f" and {len(stale) - SHOWN} more" if len(stale) > SHOWN else ""
        )
        what = "; ".join(changes[:4]) if changes else "settings not fully re-converted"
        return StaleOutputsError(
            f"{self.folder}: {len(stale)} existing output(s) were made with other settings ({what}): {names}; "
            "re-convert them with overwrite=True, or write to another output folder",
            [j.output for j in stale],
        )

    def queue(self, jobs: Iterable[Job]) -> None:
        """Record ``jobs`` as about to be converted with these settings (written with the first outcome)."""
        now = time.time_ns()
        for job in jobs:
            stat = job.output.stat() if job.output.exists() else None
            was = [stat.st_ino, stat.st_mtime_ns] if stat else None
            self._set(job, {"status": "queued", "seconds": None, "audio_seconds": None, "error": None,
                            "queued_ns": now, "was": was})  # fmt: skip

    def record(self, event: Progress) -> None:
        """Record a finished file (a batch ``Progress`` event, done or fail) in memory; ``flush`` writes it."""
        if event.stage not in ("done", "fail") or event.job is None:
            return
        error = None if event.error is None else str(event.error)
        self._set(event.job, {"status": "failed" if error else "converted", "seconds": round(event.seconds, 3),
                              "audio_seconds": round(event.audio_seconds, 3), "error": error, "was": None})  # fmt: skip

    def _set(self, job: Job, values: dict[str, Any]) -> None:
        key = self.key(job.output)
        entry = {"source": str(job.source), "settings": self.settings.key, **values}
        self._changed[key] = entry
        self.recorded["files"][key] = entry

    def flush(self, *, force: bool = False) -> None:
        """Write the manifest if anything changed (at most every ``FLUSH_SECONDS`` unless ``force``).

        Nothing is written into a folder that has no manifest yet until an output has been converted there. A
        failure to write is logged, not raised: the outputs are safe, and a rerun counts any it could not record.
        """
        if not self._changed or (not force and time.monotonic() - self._last_flush < FLUSH_SECONDS):
            return
        if not self.path.exists() and not any(e["status"] == "converted" for e in self._changed.values()):
            return
        try:
            self._write()
        except OutputError as exc:
            log.warning("%s (the outputs are kept; a rerun counts them as unrecorded)", exc)
        self._last_flush = time.monotonic()

    def _write(self) -> None:
        try:
            with _locked(self.folder):
                merged = _read(self.path)  # another writer may have recorded other files meanwhile
                key = self.settings.key
                merged["settings"].setdefault(key, {"audio": self.settings.audio, **self.settings.facts})
                merged["files"].update(self._changed)
                write_atomically(self.path, json.dumps(merged, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise OutputError(f"cannot record settings in {self.path}: {exc.strerror or exc}") from exc
        self.recorded = merged
        self._changed = {}


def _audio(recorded: dict[str, Any], key: str) -> dict[str, Any]:
    audio: dict[str, Any] = recorded["settings"].get(key, {}).get("audio", {})
    return audio


def _read(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, or an empty one; a damaged one is an ``OutputError`` naming it."""
    if not path.exists():
        return {"format": FORMAT, "settings": {}, "files": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read this settings record ({exc}); move it away to start afresh") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutputError(f"{path}: not a {FORMAT} settings record; move it away to start afresh")
    data.setdefault("settings", {})
    data.setdefault("files", {})
    return data


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s manifest (POSIX ``flock``; elsewhere no lock)."""
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


def batch_settings(
    vc: KnnVC,
    target: Voice | Path,
    options: ConvertOptions,
    *,
    vocoder: str,
    extension: str,
    compute: tuple[str, str] | None = None,
) -> Settings:
    """The ``Settings`` of converting with ``vc`` into ``target`` (a ``Voice`` or reference audio): its encoder,
    ``vocoder`` (the name or path it was loaded from), precision, output rate and ``extension`` (.wav...).

    ``compute`` is (device, precision) when other workers convert (``knnvc.batch.cluster``), else ``vc``'s own."""
    device, precision = compute or (str(vc.device), str(vc.dtype).removeprefix("torch."))
    return settings_for(
        voice_identity(target),
        options,
        encoder=(vc.encoder.name, vc.encoder.fingerprint, vc.encoder.layer),
        vocoder=vocoder,
        precision=precision,
        extension=extension,
        sample_rate=vc.output_rate(options),
        device=device,
    )
