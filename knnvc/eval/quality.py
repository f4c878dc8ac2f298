"""Optional quality estimate: DNSMOS P.835 (SIG, BAK, OVRL) and P.808 through speechmos on onnxruntime.

speechmos ships the DNSMOS ONNX models inside its wheel. When it (or onnxruntime) is missing, or the model
files are not where the wheel puts them, ``load_dnsmos`` returns None and a one-line reason, and the report
skips the metric.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np

from knnvc.options import SAMPLE_RATE

log = logging.getLogger(__name__)

MODELS = ("dnsmos_models/sig_bak_ovr.onnx", "dnsmos_models/model_v8.onnx")


class Dnsmos:
    """DNSMOS scores of one clip: ``score`` maps (N,) float32 16 kHz audio to {ovrl, sig, bak, p808} (1-5)."""

    name = "DNSMOS P.835 + P.808 (speechmos, onnxruntime)"

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from speechmos import dnsmos

        self._run = dnsmos.run

    def score(self, wav: np.ndarray) -> dict[str, float]:
        clip = np.clip(np.asarray(wav, np.float32), -1.0, 1.0)  # speechmos refuses samples outside [-1, 1]
        out = self._run(clip, SAMPLE_RATE)
        return {key: float(out[f"{key}_mos"]) for key in ("ovrl", "sig", "bak", "p808")}


def load_dnsmos() -> tuple[Dnsmos | None, str]:
    """(scorer, "") when speechmos, onnxruntime and the model files are present, else (None, why not)."""
    for module in ("speechmos", "onnxruntime", "librosa"):
        if importlib.util.find_spec(module) is None:
            return None, f"DNSMOS skipped: {module} is not installed (pip install 'knnvc[eval]')"
    spec = importlib.util.find_spec("speechmos")
    root = Path(spec.origin).parent if spec is not None and spec.origin else None
    missing = [m for m in MODELS if root is None or not (root / m).is_file()]
    if missing:
        return None, f"DNSMOS skipped: this speechmos wheel lacks its model files ({', '.join(missing)})"
    return Dnsmos(), ""
