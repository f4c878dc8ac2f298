"""WER and CER (jiwer) after a text normalisation, and reading transcript files.

Both sides are normalised the same way before scoring, by the ASR's :class:`Normaliser`:

- :data:`PLAIN` (:func:`normalise`): lower case, Unicode punctuation removed (apostrophes too, so "DON'T" and
  "don't" agree), whitespace collapsed. For ASRs that write words only (pocketsphinx).
- :func:`whisper_english`: Whisper's English normaliser, as shipped in transformers (the Whisper paper's WER
  normalisation): numbers, contractions and British spellings to one form, so that Whisper's "25" and
  LibriSpeech's "TWENTY FIVE" agree.

Totals are corpus-level: all edits over all reference words (or characters), not a mean of per-file rates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from knnvc.errors import UsageError
from knnvc.eval.models import need

TRANSCRIPT_SUFFIXES = (".txt", ".tsv", ".lab")


@dataclass(frozen=True)
class ErrorRates:
    """Word and character error rates (fractions; may exceed 1 with many insertions) and the edit counts."""

    wer: float
    cer: float
    word_edits: int
    words: int
    char_edits: int
    chars: int


@dataclass(frozen=True)
class Normaliser:
    """A text normalisation applied to references and hypotheses alike before WER/CER; ``name`` is for the report."""

    name: str
    apply: Callable[[str], str]

    def __call__(self, text: str) -> str:
        return self.apply(text)


def normalise(text: str) -> str:
    """Lower case, punctuation and symbols removed, whitespace collapsed."""
    kept = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in unicodedata.normalize("NFKC", text))
    return re.sub(r"\s+", " ", kept.lower()).strip()


PLAIN = Normaliser("plain (lower case, punctuation removed)", normalise)


def whisper_english(spellings: Mapping[str, str] | None) -> Normaliser:
    """Whisper's English normaliser (transformers' ``EnglishTextNormalizer``), for Whisper's transcripts.

    It lower-cases; drops bracketed text and fillers (um, hmm); expands contractions ("won't" -> "will not",
    "it's" -> "it is") and titles ("mr" -> "mister"); writes numbers as digits, spelled or not ("twenty five",
    "25" -> "25"; "two thousand and one" -> "2001"); maps British spellings to American through ``spellings``;
    removes punctuation. ``spellings`` is Whisper's ``normalizer.json`` (every ``openai/whisper-*`` checkpoint
    ships it, and its tokenizer reads it as ``english_spelling_normalizer``); None or empty leaves spellings as
    they are.
    """
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    english = EnglishTextNormalizer(dict(spellings or {}))
    which = f"{len(spellings)} British-to-American spellings" if spellings else "no spelling list"
    return Normaliser(f"Whisper English (transformers EnglishTextNormalizer, {which})", lambda t: english(t).strip())


def error_rates(
    references: Sequence[str], hypotheses: Sequence[str], normaliser: Callable[[str], str] = normalise
) -> ErrorRates:
    """Corpus WER and CER of ``hypotheses`` against ``references`` (same order), both after ``normaliser``.

    Raises:
        UsageError: the lists differ in length, or a reference is empty after normalisation.
    """
    jiwer = need("jiwer", "WER/CER")
    if len(references) != len(hypotheses):
        raise UsageError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normaliser(r) for r in references]
    hyps = [normaliser(h) for h in hypotheses]
    if not refs or not all(map(_worded, refs)):
        raise UsageError("every reference transcript needs at least one word")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    word_edits = words.substitutions + words.deletions + words.insertions
    char_edits = chars.substitutions + chars.deletions + chars.insertions
    n_words = sum(len(r.split()) for r in refs)
    n_chars = sum(len(r) for r in refs)
    return ErrorRates(word_edits / n_words, char_edits / n_chars, word_edits, n_words, char_edits, n_chars)


def has_words(text: str, normaliser: Callable[[str], str] = normalise) -> bool:
    """Whether ``text`` keeps a letter or digit after ``normaliser`` (a reference WER can be counted against)."""
    return _worded(normaliser(text))


def _worded(normalised: str) -> bool:
    return any(c.isalnum() for c in normalised)


def read_transcripts(path: Path) -> dict[str, str]:
    """Transcripts by utterance id (a file name without its extension).

    ``path`` is a file, or a folder searched recursively for ``*.txt``/``*.tsv``/``*.lab``. Each line is
    ``ID<whitespace>TEXT`` (LibriSpeech's ``*.trans.txt``; a tab-separated ``file.wav<TAB>text`` works too:
    an audio extension on the id is dropped). A file of one line with no id, beside an audio file of the same
    stem (``a.wav`` + ``a.txt``/``a.lab``), is that file's transcript.

    Raises:
        UsageError: no such path, a line without text, or an id given twice with different texts.
    """
    if not path.exists():
        raise UsageError(f"transcripts={str(path)!r}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.suffix in TRANSCRIPT_SUFFIXES) if path.is_dir() else [path]
    found: dict[str, str] = {}
    for file in files:
        for key, text in _parse(file).items():
            if found.setdefault(key, text) != text:
                raise UsageError(f"{file}: utterance {key!r} has two different transcripts")
    if not found:
        raise UsageError(f"transcripts={str(path)!r}: no transcripts found")
    return found


def _parse(file: Path) -> dict[str, str]:
    try:
        lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read transcripts {file}: {exc}") from exc
    siblings = [file.with_suffix(s) for s in (".wav", ".flac", ".mp3", ".ogg")]
    if len(lines) == 1 and any(s.exists() for s in siblings):
        return {file.stem: lines[0]}  # a per-file transcript beside its audio
    out = {}
    for number, line in enumerate(lines, 1):
        key, _, text = line.partition("\t") if "\t" in line else line.partition(" ")
        if not text.strip():
            raise UsageError(f"{file}:{number}: expected 'ID TEXT', got {line!r}")
        out[Path(key.strip()).stem if Path(key).suffix.lower() in _AUDIO else key.strip()] = text.strip()
    return out


_AUDIO = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif", ".webm"}
