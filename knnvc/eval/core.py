"""``evaluate``: score converted files for speaker similarity, EER, WER/CER and (optionally) DNSMOS.

It reads files only; it never converts. Models are passed in (``speaker.load_verifier``, ``asr.load_asr``,
``quality.load_dnsmos``), so a caller loads each once for many evaluations (the sweep does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knnvc.audio import decode
from knnvc.errors import UsageError
from knnvc.eval.asr import Transcriber
from knnvc.eval.eer import Trials, equal_error_rate, target_trials
from knnvc.eval.inputs import Item, files_in
from knnvc.eval.quality import Dnsmos
from knnvc.eval.speaker import Verifier, speaker_embedding
from knnvc.eval.text import error_rates, has_words
from knnvc.progress import OnProgress, Progress

log = logging.getLogger(__name__)


@dataclass
class FileScore:
    """One converted file's scores. Similarities are cosines in [-1, 1]; wer/cer fractions; dnsmos 1-5."""

    file: str
    target: str
    speaker_similarity: float
    source_similarity: float | None = None  # the source against the same target: the score before conversion
    reference_text: str | None = None
    reference_from: str | None = None  # "transcript", or "ASR of the source"
    hypothesis: str | None = None
    wer: float | None = None
    cer: float | None = None
    dnsmos: dict[str, float] | None = None


@dataclass
class Evaluation:
    """Everything ``evaluate`` found: per-file scores, the summary, the models used and notes on what was skipped."""

    files: list[FileScore]
    summary: dict[str, Any]
    models: dict[str, str]
    notes: list[str] = field(default_factory=list)
    genuine_scores: list[float] = field(default_factory=list)  # real-vs-real target trials (the EER's genuine side)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "models": self.models, "notes": self.notes,
                "files": [asdict(f) for f in self.files]}  # fmt: skip


def evaluate(
    items: Sequence[Item],
    verifier: Verifier,
    asr: Transcriber | None = None,
    dnsmos: Dnsmos | None = None,
    *,
    progress: OnProgress | None = None,
) -> Evaluation:
    """Score ``items`` (see ``inputs.pair`` and ``inputs.read_manifest``).

    Speaker similarity is the cosine between each converted file's embedding and its target's speaker
    embedding (the normalised mean over the target's reference files). The EER pools, over targets, the
    trials of ``eer.target_trials``. WER/CER compare the ASR of each converted file with its ``text``, or with
    the ASR of its source when it has no text; files with neither are left out of WER/CER (with a note).

    Args:
        progress: gets a ``knnvc.progress.Progress`` event (stage, files done, total) after each file of each stage.
    """
    if not items:
        raise UsageError("nothing to evaluate: no converted files")
    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(Progress(stage, done, total))

    targets = sorted({item.target for item in items})
    reference_files = {t: files_in(t) for t in targets}
    total = sum(len(files) for files in reference_files.values())
    embedded: dict[Path, list[np.ndarray]] = {t: [] for t in targets}
    for target, files in reference_files.items():
        for file in files:
            embedded[target].append(verifier.embed(decode.load(file)))
            report("embedding references", sum(map(len, embedded.values())), total)
    refs = {t: np.stack(e) for t, e in embedded.items()}  # (R, D) per target
    centroid = {t: speaker_embedding(e) for t, e in refs.items()}
    scores: list[FileScore] = []
    converted_embs: dict[Path, list[np.ndarray]] = {t: [] for t in targets}
    sources = _Sources(verifier, asr)
    for done, item in enumerate(items, 1):
        wav = decode.load(item.converted)
        emb = verifier.embed(wav)
        converted_embs[item.target].append(emb)
        score = FileScore(str(item.converted), str(item.target), float(emb @ centroid[item.target]))
        if item.source is not None:
            score.source_similarity = float(sources.embedding(item.source) @ centroid[item.target])
        if asr is not None:
            score.hypothesis = asr.transcribe(wav)
            score.reference_text, score.reference_from = item.text, "transcript"
            if item.text is None and item.source is not None:
                score.reference_text, score.reference_from = sources.transcript(item.source), "ASR of the source"
        if dnsmos is not None:
            score.dnsmos = dnsmos.score(wav)
        scores.append(score)
        report("scoring", done, len(items))
    trials = Trials.join([target_trials(refs[t], np.array(converted_embs[t])) for t in targets if converted_embs[t]])
    return _summarise(scores, trials, verifier, asr, dnsmos)


class _Sources:
    """Each source's embedding and transcript, computed once however many conversions share it."""

    def __init__(self, verifier: Verifier, asr: Transcriber | None) -> None:
        self.verifier, self.asr = verifier, asr
        self.embeddings: dict[Path, np.ndarray] = {}
        self.texts: dict[Path, str] = {}

    def embedding(self, source: Path) -> np.ndarray:
        if source not in self.embeddings:
            self.embeddings[source] = self.verifier.embed(decode.load(source))
        return self.embeddings[source]

    def transcript(self, source: Path) -> str:
        if source not in self.texts:
            assert self.asr is not None
            self.texts[source] = self.asr.transcribe(decode.load(source))
        return self.texts[source]


def _summarise(
    scores: list[FileScore], trials: Trials, verifier: Verifier, asr: Transcriber | None, dnsmos: Dnsmos | None
) -> Evaluation:
    notes: list[str] = []
    summary: dict[str, Any] = {"files": len(scores), "targets": len({s.target for s in scores})}
    summary["speaker_similarity"] = _stats([s.speaker_similarity for s in scores])
    sources = [s.source_similarity for s in scores if s.source_similarity is not None]
    summary["source_similarity"] = _stats(sources) if sources else None
    summary["genuine_similarity"] = _stats(list(trials.genuine)) if trials.genuine.size else None
    summary["eer_percent"] = None
    if trials.genuine.size and trials.converted.size:
        rate, threshold = equal_error_rate(trials.scores, trials.labels)
        summary["eer_percent"] = round(100 * rate, 2)
        summary["eer_threshold"] = round(threshold, 4)
    else:
        notes.append("EER skipped: it needs at least two reference files per target (genuine trials)")
    summary["eer_trials"] = {"genuine": int(trials.genuine.size), "converted": int(trials.converted.size)}
    _intelligibility(scores, summary, notes, asr)
    if dnsmos is not None:
        summary["dnsmos"] = {k: round(float(np.mean([s.dnsmos[k] for s in scores if s.dnsmos])), 3)
                             for k in ("ovrl", "sig", "bak", "p808")}  # fmt: skip
    models = {"verifier": verifier.name, "asr": asr.name if asr else "none"}
    models["dnsmos"] = dnsmos.name if dnsmos else "none"
    return Evaluation(scores, summary, models, notes, [float(x) for x in trials.genuine])


def _intelligibility(
    scores: list[FileScore], summary: dict[str, Any], notes: list[str], asr: Transcriber | None
) -> None:
    summary["wer_percent"] = summary["cer_percent"] = None
    if asr is None:
        notes.append("WER/CER skipped: no ASR model")
        return
    normaliser = asr.normaliser
    scored = [s for s in scores if s.hypothesis is not None and has_words(s.reference_text or "", normaliser)]
    for s in scored:
        one = error_rates([s.reference_text or ""], [s.hypothesis or ""], normaliser)
        s.wer, s.cer = round(one.wer, 4), round(one.cer, 4)
    if not scored:
        notes.append("WER/CER skipped: give --transcripts, or --source so that the source's ASR is the reference")
        return
    if len(scored) < len(scores):
        notes.append(f"WER/CER over {len(scored)} of {len(scores)} files (the others have no reference text)")
    total = error_rates([s.reference_text or "" for s in scored], [s.hypothesis or "" for s in scored], normaliser)
    summary["wer_percent"], summary["cer_percent"] = round(100 * total.wer, 2), round(100 * total.cer, 2)
    summary["wer_reference"] = " and ".join(sorted({s.reference_from or "" for s in scored}))
    summary["wer_normaliser"] = normaliser.name


def _stats(values: list[float]) -> dict[str, float | int]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4), "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4), "n": int(v.size)}  # fmt: skip
