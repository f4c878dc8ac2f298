"""The paper's kind of test set from LibriSpeech test-clean: sources, targets' references and a manifest.

``plan(root, work)`` reads ``root`` (``LibriSpeech/test-clean``: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac``
and ``*.trans.txt``) and lays out, with symbolic links to the original files:

- ``work/sources/T/`` the source utterances to convert into target speaker ``T``;
- ``work/targets/T/`` ``T``'s reference speech: every utterance of ``T`` not used as a source (about 8 minutes);
- ``work/manifest.tsv`` one row per conversion: ``converted/T/UTT.wav``, its target, its source and its text.

Selection: for each of the speakers (sorted by id), ``sources_per_speaker`` utterances are drawn at random
(``seed``); the m-th of speaker number j is converted into speaker number (j + 1 + m) mod n. So every target
receives as many conversions as each speaker gives, each from a different speaker, never its own.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

from knnvc.errors import OutputError, UsageError
from knnvc.eval.text import read_transcripts


@dataclass(frozen=True)
class Plan:
    manifest: Path
    speakers: int
    conversions: int
    reference_seconds: dict[str, float]  # per target, from the file sizes' sample counts


def speakers(root: Path) -> dict[str, list[Path]]:
    """Utterance files by speaker id (the first folder level), sorted."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder; give LibriSpeech's test-clean folder")
    found: dict[str, list[Path]] = {}
    for flac in sorted(root.rglob("*.flac")):
        found.setdefault(flac.relative_to(root).parts[0], []).append(flac)
    if len(found) < 2:
        raise UsageError(f"{root}: expected SPEAKER/CHAPTER/*.flac for at least two speakers")
    return found


def plan(root: Path, work: Path, *, sources_per_speaker: int = 5, seed: int = 0) -> Plan:
    """Lay out the sources, targets and manifest under ``work`` (see the module's docstring)."""
    by_speaker = speakers(root)
    texts = read_transcripts(root)
    ids = sorted(by_speaker)
    n = len(ids)
    if not 1 <= sources_per_speaker < n:
        raise UsageError(f"sources per speaker must be 1 to {n - 1} (the other speakers), got {sources_per_speaker}")
    rng = random.Random(seed)
    chosen = {s: rng.sample(by_speaker[s], sources_per_speaker) for s in ids}
    rows = []
    try:
        for j, speaker in enumerate(ids):
            for m, utt in enumerate(chosen[speaker]):
                target = ids[(j + 1 + m) % n]
                _link(utt, work / "sources" / target / utt.name)
                rows.append({"converted": f"converted/{target}/{utt.stem}.wav", "target": f"targets/{target}",
                             "source": f"sources/{target}/{utt.name}", "text": texts[utt.stem]})  # fmt: skip
        seconds = {}
        for speaker in ids:
            refs = [u for u in by_speaker[speaker] if u not in chosen[speaker]]
            for utt in refs:
                _link(utt, work / "targets" / speaker / utt.name)
            seconds[speaker] = sum(_seconds(u) for u in refs)
        manifest = work / "manifest.tsv"
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["converted", "target", "source", "text"], delimiter="\t")
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise OutputError(f"cannot lay out the test set under {work}: {exc}") from exc
    except KeyError as exc:
        raise UsageError(f"{root}: no transcript for utterance {exc}") from exc
    return Plan(manifest, n, len(rows), seconds)


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    os.symlink(src.resolve(), dest)


def _seconds(path: Path) -> float:
    from knnvc.audio.decode import duration_seconds

    return float(duration_seconds(path))
