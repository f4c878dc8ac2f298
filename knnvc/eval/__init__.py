"""Measure conversions the way the kNN-VC paper does: speaker similarity, EER, WER/CER, and DNSMOS if present.

    >>> from pathlib import Path
    >>> from knnvc.eval.asr import load_asr
    >>> from knnvc.eval.core import evaluate
    >>> from knnvc.eval.inputs import pair
    >>> from knnvc.eval.speaker import load_verifier
    >>> items = pair(Path("converted/"), target=Path("target_refs/"), source=Path("sources/"))
    >>> result = evaluate(items, load_verifier(), load_asr())
    >>> result.summary["speaker_similarity"]["mean"], result.summary["eer_percent"]

The package scores files; it never converts, except ``sweep.run_sweep``, which converts through the public
pipeline (``knnvc.batch.runner.run``), over any ``ConvertOptions`` setting (``method=knn,mkl,linear`` among them)
or the target's references cut to ``reference_seconds`` of speech. Every model is found offline: resemblyzer's and
pocketsphinx's ship in their wheels; Whisper and WavLM-SV are used when they are in the local Hugging Face cache.
Install with ``pip install 'knnvc[eval]'``.
"""
