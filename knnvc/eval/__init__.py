"""Measure conversions the way the kNN-VC paper does: speaker similarity, EER, WER/CER, and DNSMOS if present.

    >>> from pathlib import Path
    >>> from knnvc.eval import evaluate, load_asr, load_verifier, pair, write_report
    >>> items = pair(Path("converted/"), target=Path("target_refs/"), source=Path("sources/"))
    >>> result = evaluate(items, load_verifier(), load_asr())
    >>> result.summary["speaker_similarity"]["mean"], result.summary["eer_percent"]

The package scores files; it never converts, except ``sweep.run_sweep``, which converts through the public
pipeline (``knnvc.batch.runner.run``). Every model is found offline: resemblyzer's and pocketsphinx's ship in their
wheels; Whisper and WavLM-SV are used when they are in the local Hugging Face cache. Install with
``pip install 'knnvc[eval]'``.
"""

from __future__ import annotations

from knnvc.eval.asr import load_asr
from knnvc.eval.core import Evaluation, FileScore, evaluate
from knnvc.eval.eer import Trials, equal_error_rate, target_trials
from knnvc.eval.inputs import Item, pair, read_manifest
from knnvc.eval.quality import load_dnsmos
from knnvc.eval.report import write_report
from knnvc.eval.speaker import load_verifier
from knnvc.eval.text import Normaliser, error_rates, normalise, whisper_english

__all__ = [
    "Evaluation",
    "FileScore",
    "Item",
    "Normaliser",
    "Trials",
    "equal_error_rate",
    "error_rates",
    "evaluate",
    "load_asr",
    "load_dnsmos",
    "load_verifier",
    "normalise",
    "pair",
    "read_manifest",
    "target_trials",
    "whisper_english",
    "write_report",
]
