"""Speech recognition for WER/CER: Whisper from the local Hugging Face cache, else pocketsphinx's in-wheel model.

The kNN-VC paper transcribed with Whisper-base. When ``openai/whisper-base`` (or another Whisper) is in the local
cache, ``load_asr("auto")`` uses it offline, greedy, English. Otherwise it falls back to pocketsphinx's US-English
model, which ships inside its wheel: far weaker (on the espeak-ng fixture sentence its WER is about 0.9), so its
numbers only rank settings against each other; they are not comparable with the paper's.

Each transcriber names the text normalisation its WER/CER use (``normaliser``, shown in the report). Whisper's is
Whisper's English normaliser (``text.whisper_english``), the one Whisper's own WER figures use: Whisper writes "25"
where LibriSpeech says "TWENTY FIVE", "Mr." for "MISTER", "color" for "COLOUR". pocketsphinx keeps the plain one
(``text.PLAIN``): it writes lower-case dictionary words only, so there is nothing to reconcile, and folding
"twenty five" into "25" on both sides would only change how many words its WER is divided by.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from knnvc.errors import WeightsError
from knnvc.eval.models import LocalModel, need, pick
from knnvc.eval.text import PLAIN, Normaliser, whisper_english
from knnvc.options import SAMPLE_RATE

log = logging.getLogger(__name__)

WHISPER = "openai/whisper-base"  # the paper's ASR


class Transcriber(Protocol):
    """``transcribe`` maps (N,) float32 16 kHz audio to text; ``name`` says which model, for the report;
    ``normaliser`` is the text normalisation WER/CER apply to its transcripts and to their references."""

    name: str
    normaliser: Normaliser

    def transcribe(self, wav: np.ndarray) -> str: ...


class PocketSphinx:
    """CMU pocketsphinx with its default US-English acoustic model, dictionary and language model (in the wheel)."""

    name = "pocketsphinx en-us (in-wheel model)"
    normaliser = PLAIN

    def __init__(self) -> None:
        pocketsphinx = need("pocketsphinx", "WER/CER")
        try:
            self._decoder = pocketsphinx.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        except (RuntimeError, ValueError) as exc:
            raise WeightsError(f"pocketsphinx's en-us model did not load ({exc}); reinstall pocketsphinx") from exc

    def transcribe(self, wav: np.ndarray) -> str:
        pcm = (np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767).astype("<i2")
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class Whisper(LocalModel):
    """transformers' Whisper from a local folder or the local HF cache: English, greedy, 30 s windows chunked."""

    preprocessor, model = "WhisperProcessor", "WhisperForConditionalGeneration"
    metric, what, label = "WER/CER", "Whisper", "Whisper ({path}), greedy, English"

    def __init__(self, path: str, device: str = "cpu") -> None:
        super().__init__(path, device)
        # normalizer.json, Whisper's British-to-American spellings: in every openai/whisper-* checkpoint
        spellings = getattr(self._prepare.tokenizer, "english_spelling_normalizer", None)
        if not spellings:
            log.warning("%s has no normalizer.json: WER/CER leave British and American spellings apart", path)
        self.normaliser = whisper_english(spellings)

    def transcribe(self, wav: np.ndarray) -> str:
        window = 30 * SAMPLE_RATE  # Whisper hears 30 s at a time
        texts = []
        for start in range(0, max(len(wav), 1), window):
            piece = np.asarray(wav[start : start + window], np.float32)
            inputs = self._prepare(piece, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            features = inputs.input_features.to(self._device)
            with self._torch.inference_mode():
                ids = self._model.generate(features, language="en", task="transcribe", num_beams=1, do_sample=False)
            texts.append(self._prepare.batch_decode(ids, skip_special_tokens=True)[0].strip())
        return " ".join(t for t in texts if t)


def load_asr(name: str = "auto", device: str = "cpu") -> Transcriber:
    """``auto`` (Whisper-base when cached, else pocketsphinx), ``pocketsphinx``, ``whisper``, or a Whisper path/id.

    Raises:
        WeightsError: the model asked for is not installed or not in the local cache.
    """
    whisper: Callable[[str], Transcriber] = functools.partial(Whisper, device=device)
    return pick(name, option="asr", fallback="pocketsphinx", make_fallback=PocketSphinx,
                always="its model ships in its wheel", repo=WHISPER, make=whisper, alias="whisper",
                what="ASR model")  # fmt: skip
