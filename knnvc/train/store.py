"""The prematched features folder as a resumable record: what an earlier run wrote, skipped and with which settings.

The folder's format belongs to :mod:`vocoder.train.data` (``index.json`` and one ``<id>.safetensors`` per
utterance); this module adds ``skipped.json`` (the utterances left out, and why) and refuses to mix features
made with other settings in one folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from knnvc import files
from knnvc.errors import UsageError
from knnvc.train.speakers import Skipped, Utterance
from vocoder import atomic
from vocoder.train.data import SUFFIX, Entry, TrainingError, read_index, read_metadata, write_index

SKIPPED_NAME = "skipped.json"
CHECKED = ("k", "encoder_fingerprint", "sample_rate")  # settings that change the features: never mixed


@dataclass
class PrematchReport:
    """What a run did: utterances written now, found done from an earlier run, and left out."""

    out_dir: Path
    speakers: int = 0
    written: int = 0
    existing: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    below_rate: int = 0  # utterances written whose file is recorded below the target rate (upsampled)


@dataclass
class Store:
    """A features folder being written: its settings, the entries so far and the earlier run's skips."""

    out_dir: Path
    settings: dict[str, Any]
    entries: dict[str, Entry] = field(default_factory=dict)
    old_skipped: dict[str, Skipped] = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path, settings: dict[str, Any]) -> Store:
        """The folder's earlier state (empty for a new folder); UsageError when it was made otherwise."""
        store = cls(out_dir, settings)
        if (out_dir / "index.json").is_file():
            try:
                index = read_index(out_dir)
            except TrainingError as exc:
                raise UsageError(str(exc)) from exc
            clash = _clash({**index.settings, "sample_rate": index.sample_rate}, settings)
            if clash:
                raise UsageError(f"{out_dir} holds features made with other settings ({clash}); use a new folder")
            store.entries = {e.id: e for e in index.entries}
        if (out_dir / SKIPPED_NAME).is_file():
            try:
                rows = json.loads((out_dir / SKIPPED_NAME).read_text(encoding="utf-8"))
                store.old_skipped = {r["path"]: Skipped(**r) for r in rows}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{out_dir / SKIPPED_NAME}: unreadable ({exc}); delete it to start over") from exc
        return store

    def existing(self, utt: Utterance) -> Entry | None:
        """The entry of an utterance already written (by this or an earlier run), else None."""
        file = utt.id + SUFFIX
        if not (self.out_dir / file).is_file():
            return None
        if utt.id in self.entries:
            return self.entries[utt.id]
        try:
            meta = read_metadata(self.out_dir / file)
        except TrainingError:
            return None  # a foreign or damaged file: written again
        clash = _clash(meta, self.settings)
        if clash:
            raise UsageError(f"{self.out_dir / file} was made with other settings ({clash}); use a new folder")
        return Entry(utt.id, utt.speaker, file, int(meta["frames"]))

    def save(self, skipped: list[Skipped]) -> None:
        """Rewrite ``index.json`` and ``skipped.json``, each atomically (a crash leaves a resumable folder)."""
        try:
            write_index(self.out_dir, list(self.entries.values()), sample_rate=int(self.settings["sample_rate"]),
                        feature_dim=int(self.settings["feature_dim"]), settings=self.settings)
            rows = json.dumps([asdict(s) for s in skipped], indent=1).encode("utf-8")
            atomic.write_atomically(self.out_dir / SKIPPED_NAME, rows)
        except OSError as exc:
            raise files.write_error(self.out_dir / "index.json", exc) from exc


def _clash(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in CHECKED:
        if key in old and str(old[key]) != str(new[key]):
            return f"{key} was {old[key]}, now {new[key]}"
    return None
