"""Who speaks each training utterance: from the folder structure or from a CSV manifest.

Folders: ``DATA_DIR/<speaker>/.../<utt>.<ext>`` (LibriSpeech's ``speaker/chapter/utt``): the speaker is the first
folder under DATA_DIR, whatever the depth below it, so a speaker's chapters are pooled together.
Manifest: a CSV with a header and the columns ``path,speaker``; relative paths are relative to DATA_DIR.
Each utterance gets an ``id`` (a relative path without extension) that names its output file.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from knnvc.audio import decode
from knnvc.errors import AudioError, UsageError


@dataclass(frozen=True)
class Utterance:
    """One input file: ``id`` names its output (``OUT_DIR/<id>.safetensors``)."""

    id: str
    speaker: str
    path: Path


@dataclass(frozen=True)
class Skipped:
    """An utterance left out of the features, and why."""

    path: str
    speaker: str
    reason: str


def _check_speaker(name: str, where: str) -> str:
    name = name.strip()
    if not name or name in {".", ".."} or name.startswith(".") or "/" in name or "\\" in name:
        raise UsageError(f"{where}: speaker {name!r} is not usable as a folder name")
    return name


def _from_folders(data_dir: Path) -> tuple[list[Utterance], list[Skipped]]:
    """Speaker = the first folder under DATA_DIR; id = the path under DATA_DIR without its extension."""
    utts, skipped = [], []
    for path in decode.audio_files(data_dir):
        rel = PurePosixPath(path.relative_to(data_dir).as_posix())
        if len(rel.parts) < 2:
            skipped.append(Skipped(str(path), "", "not inside a speaker folder"))
            continue
        utts.append(Utterance(str(rel.with_suffix("")), _check_speaker(rel.parts[0], str(path)), path))
    return utts, skipped


def _from_manifest(data_dir: Path, manifest: Path) -> list[Utterance]:
    """Rows ``path,speaker``; id = ``<speaker>/<path under DATA_DIR, or file stem>`` without extension."""
    try:
        with manifest.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read manifest {manifest}: {exc}") from exc
    if rows and not {"path", "speaker"} <= set(rows[0]):
        raise UsageError(f"manifest {manifest} needs the columns path,speaker; found {sorted(rows[0])}")
    utts = []
    for line, row in enumerate(rows, start=2):
        speaker = _check_speaker(row["speaker"] or "", f"{manifest}:{line}")
        path = Path(row["path"] or "").expanduser()
        path = path if path.is_absolute() else data_dir / path
        try:
            rel = PurePosixPath(path.resolve().relative_to(data_dir.resolve()).as_posix()).with_suffix("")
        except ValueError:
            rel = PurePosixPath(path.stem)
        ident = str(rel) if rel.parts[0] == speaker else f"{speaker}/{rel}"
        utts.append(Utterance(ident, speaker, path))
    return utts


def discover(data_dir: str | os.PathLike[str], manifest: str | os.PathLike[str] | None = None,
             ) -> tuple[list[Utterance], list[Skipped]]:
    """The utterances to prematch (sorted by id) and the files left out; raises UsageError when none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"{data_dir}: no such folder")
    utts, skipped = (_from_manifest(data_dir, Path(manifest)), []) if manifest else _from_folders(data_dir)
    seen: dict[str, Path] = {}
    for u in utts:
        if u.id in seen:
            raise UsageError(f"two utterances map to the same id {u.id!r}: {seen[u.id]} and {u.path}")
        seen[u.id] = u.path
    if not utts:
        raise UsageError(f"no audio found in {data_dir}" + (f" via {manifest}" if manifest else
                         " (expected DATA_DIR/<speaker>/.../<utterance> files)"))
    return sorted(utts, key=lambda u: u.id), skipped


def pool_groups(utts: Sequence[Utterance], max_seconds: float) -> list[list[Utterance]]:
    """Split one speaker's utterances into pools of at most about ``max_seconds`` of audio each.

    A speaker under the limit is one pool (LibriSpeech speakers have ~25 min). A bigger one (a 24 h
    single-speaker corpus) is cut, in id order, into ``ceil(total / max_seconds)`` groups of about equal
    duration, so that memory and matching time stay bounded; a group never has fewer than two utterances.
    Durations come from the file headers; unreadable files count as zero (they are reported later).
    """
    durations = []
    for utt in utts:
        try:
            durations.append(decode.duration_seconds(utt.path))
        except AudioError:
            durations.append(0.0)
    total = sum(durations)
    n_groups = max(1, math.ceil(total / max_seconds)) if max_seconds > 0 else 1
    if n_groups == 1:
        return [list(utts)]
    target = total / n_groups
    groups: list[list[Utterance]] = [[]]
    filled = 0.0
    for utt, seconds in zip(utts, durations, strict=True):
        if filled >= target and len(groups[-1]) >= 2:
            groups.append([])
            filled = 0.0
        groups[-1].append(utt)
        filled += seconds
    if len(groups) > 1 and len(groups[-1]) < 2:
        groups[-2].extend(groups.pop())
    return groups
