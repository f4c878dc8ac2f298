"""What to score: converted files paired with their target's references, their sources and their transcripts.

One target: ``pair(converted, target, source, transcripts)``. Many targets (the paper's kind of test set): a
manifest, a tab-separated file with a header naming ``converted`` and ``target`` (files or folders of reference
speech) and optionally ``source`` and ``text``; relative paths are taken from the manifest's folder.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from knnvc.audio import decode
from knnvc.errors import AudioError, UsageError
from knnvc.eval.text import read_transcripts


@dataclass(frozen=True)
class Item:
    """One converted file to score, the target it claims to be, and what it says."""

    converted: Path
    target: Path  # the target's reference speech: a file or a folder
    source: Path | None = None
    text: str | None = None  # the words spoken, when known


def files_in(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else every audio file under it (sorted)."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise AudioError(f"{path}: no such file or folder")
    found = decode.audio_files(path)
    if not found:
        raise AudioError(f"{path}: folder holds no audio files ({', '.join(sorted(decode.AUDIO_EXTENSIONS))})")
    return found


def pair(converted: Path, target: Path, source: Path | None = None, transcripts: Path | None = None) -> list[Item]:
    """Items for converted file(s) of one target.

    Each converted file is paired with its source: the file itself when ``source`` is a file, else the source
    with the same path relative to its folder (as ``knnvc convert`` mirrors folders), else the source whose
    stem starts the converted file's stem followed by ``_`` (``a_voice.wav`` from ``a.wav``). Its transcript is
    found under the converted file's stem, else its source's stem.

    Raises:
        UsageError: a converted file without a source when ``source`` is given, or without a transcript when
            ``transcripts`` are given.
    """
    files = files_in(converted)
    files_in(target)  # fail early on a missing or empty target
    texts = read_transcripts(transcripts) if transcripts is not None else None
    sources = _source_finder(source, converted) if source is not None else None
    items = []
    for file in files:
        src = sources(file) if sources is not None else None
        text = None
        if texts is not None:
            text = texts.get(file.stem) or (texts.get(src.stem) if src is not None else None)
            if text is None:
                raise UsageError(f"{file}: no transcript for it (or its source) in {transcripts}")
        items.append(Item(file, target, src, text))
    return items


def _source_finder(source: Path, converted: Path) -> Callable[[Path], Path]:
    if source.is_file():
        return lambda _: source
    files = files_in(source)
    by_rel = {p.relative_to(source).with_suffix(""): p for p in files}
    by_stem = {p.stem: p for p in files}
    return _Finder(source, converted, by_rel, by_stem)


class _Finder:
    def __init__(self, source: Path, converted: Path, by_rel: dict[Path, Path], by_stem: dict[str, Path]) -> None:
        self.source, self.converted, self.by_rel, self.by_stem = source, converted, by_rel, by_stem

    def __call__(self, file: Path) -> Path:
        if self.converted.is_dir():
            rel = file.relative_to(self.converted).with_suffix("")
            if rel in self.by_rel:
                return self.by_rel[rel]
        if file.stem in self.by_stem:
            return self.by_stem[file.stem]
        prefixes = [s for s in self.by_stem if file.stem.startswith(s + "_")]
        if prefixes:
            return self.by_stem[max(prefixes, key=len)]
        raise UsageError(f"{file}: no source file in {self.source} matches it (same relative path or stem)")


def read_manifest(path: Path, transcripts: Path | None = None) -> list[Item]:
    """Items from a tab-separated manifest with columns ``converted``, ``target`` [, ``source``] [, ``text``].

    A row without ``text`` takes its transcript from ``transcripts`` when given (by the converted file's stem,
    else its source's), as ``pair`` does.

    Raises:
        UsageError: unreadable, no header with ``converted`` and ``target``, or an empty row.
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read manifest {path}: {exc}") from exc
    if not rows or not {"converted", "target"} <= set(rows[0]):
        raise UsageError(f"{path}: a manifest is tab-separated with a header naming converted, target[, source, text]")
    root = path.parent
    texts = read_transcripts(transcripts) if transcripts is not None else {}
    items = []
    for number, row in enumerate(rows, 2):
        if not row.get("converted") or not row.get("target"):
            raise UsageError(f"{path}:{number}: every row needs converted and target")
        src = row.get("source") or None
        converted = root / row["converted"]
        text = row.get("text") or texts.get(converted.stem) or (texts.get(Path(src).stem) if src else None)
        items.append(Item(converted, root / row["target"], root / src if src else None, text))
    return items
