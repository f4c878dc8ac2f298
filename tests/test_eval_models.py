"""knnvc.eval with its real models: resemblyzer's in-wheel speaker encoder on the fixture's two espeak-ng voices,
pocketsphinx's in-wheel en-US model transcribing a fixture file, DNSMOS, and the report's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from knnvc.audio import decode
from knnvc.errors import ExtraError, WeightsError
from knnvc.eval.asr import load_asr
from knnvc.eval.core import evaluate
from knnvc.eval.inputs import Item
from knnvc.eval.quality import load_dnsmos
from knnvc.eval.report import write_report
from knnvc.eval.speaker import Resemblyzer, XVector, load_verifier
from knnvc.eval.text import error_rates
from tests.conftest import REF_DIR, SOURCE_WAV

REF_01, REF_02, REF_03 = sorted(REF_DIR.glob("*.wav"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models on a busy 2-core machine


@pytest.fixture(scope="module")
def verifier() -> Resemblyzer:
    return Resemblyzer()


@pytest.fixture(scope="module")
def pocketsphinx() -> object:
    return load_asr("pocketsphinx")


def test_same_speaker_scores_above_another_speaker(verifier: Resemblyzer) -> None:
    ref_01 = verifier.embed(decode.load(REF_01))
    same = float(verifier.embed(decode.load(REF_02)) @ ref_01)  # en-gb+f2 against en-gb+f2
    other = float(verifier.embed(decode.load(SOURCE_WAV)) @ ref_01)  # en-us+m3 against en-gb+f2
    assert np.linalg.norm(ref_01) == pytest.approx(1.0)
    assert same == pytest.approx(0.880, abs=0.01) and other == pytest.approx(0.813, abs=0.01)
    assert same - other > 0.05


def test_evaluate_scores_real_voices(verifier: Resemblyzer, pocketsphinx: object, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    for ref in (REF_01, REF_03):
        (target / ref.name).write_bytes(ref.read_bytes())
    items = [Item(REF_02, target, text="a sentence"), Item(SOURCE_WAV, target, source=REF_02)]
    result = evaluate(items, verifier, pocketsphinx)  # type: ignore[arg-type]
    same, other = result.files
    assert same.speaker_similarity > other.speaker_similarity + 0.05
    assert other.source_similarity == pytest.approx(same.speaker_similarity)  # REF_02, scored as a source
    s = result.summary
    assert s["eer_trials"] == {"genuine": 1, "converted": 4}  # refs (01, 03); each against both files
    assert 0 <= s["eer_percent"] <= 100 and s["genuine_similarity"]["n"] == 1
    # the second file has no text: its reference is the ASR of its source
    assert other.reference_text == same.hypothesis and other.reference_from == "ASR of the source"
    assert same.reference_from == "transcript" and s["wer_reference"] == "ASR of the source and transcript"
    assert result.models["verifier"].startswith("resemblyzer") and result.models["asr"].startswith("pocketsphinx")
    assert s["wer_normaliser"].startswith("plain")  # pocketsphinx writes plain words: the plain normalisation
    written = write_report(result, tmp_path / "report")
    assert [p.name for p in written] == ["report.json", "report.md", "similarity_hist.png", "per_file.png"]
    report = json.loads(written[0].read_text())
    assert report["summary"]["speaker_similarity"]["n"] == 2 and len(report["files"]) == 2
    assert "| speaker similarity |" in written[1].read_text() and "text normalisation" in written[1].read_text()
    with Image.open(written[2]) as hist:
        assert hist.format == "PNG" and hist.size == (800, 500)
        assert len(hist.convert("L").getcolors(maxcolors=4096) or []) > 16  # drawn on, not blank
    with Image.open(written[3]) as bars:
        assert bars.format == "PNG" and bars.size[0] == 1000 and bars.size[1] >= 300


def test_pocketsphinx_transcribes_a_fixture_file(pocketsphinx: object) -> None:
    text = pocketsphinx.transcribe(decode.load(REF_02))  # type: ignore[attr-defined]
    words = text.split()
    assert len(words) >= 3 and all(w.replace("'", "").isalpha() for w in words)
    # espeak-ng is hard for it; its words need not be right, but they are scored like any hypothesis
    assert error_rates(["a journey of a thousand miles begins with a single step"], [text]).wer <= 1.5
    assert isinstance(pocketsphinx.transcribe(np.zeros(16_000, np.float32)), str)  # type: ignore[attr-defined]


def test_dnsmos_from_its_wheel() -> None:
    scorer, why = load_dnsmos()
    assert scorer is not None, why
    scores = scorer.score(decode.load(REF_01))
    assert set(scores) == {"ovrl", "sig", "bak", "p808"} and all(1.0 <= v <= 5.0 for v in scores.values())


def test_missing_models_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hf_cache(monkeypatch, tmp_path)  # an empty cache
    with pytest.raises(WeightsError, match="nor in the local Hugging Face cache.*verifier='resemblyzer'"):
        load_verifier("someone/not-cached-sv")
    with pytest.raises(WeightsError, match="nor in the local Hugging Face cache.*asr='pocketsphinx'"):
        load_asr("whisper")
    assert load_asr("auto").name.startswith("pocketsphinx")  # no Whisper cached: the in-wheel ASR
    assert load_verifier("auto").name.startswith("resemblyzer")
    monkeypatch.setitem(__import__("sys").modules, "resemblyzer", None)  # as if it were not installed
    with pytest.raises(ExtraError, match=r"speaker similarity needs the eval extra \(resemblyzer is not installed\)"):
        load_verifier("resemblyzer")


def test_a_stronger_local_verifier(tmp_path: Path) -> None:
    """A WavLMForXVector folder (here tiny and random) is used when named, and named in the report."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         tdnn_dim=[16] * 5, xvector_output_dim=24)  # fmt: skip
    WavLMForXVector(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000).save_pretrained(tmp_path)
    sv = load_verifier(str(tmp_path))
    assert isinstance(sv, XVector) and str(tmp_path) in sv.name
    emb = sv.embed(decode.load(REF_01))
    assert emb.shape == (24,) and np.linalg.norm(emb) == pytest.approx(1.0)


def _hf_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Point the Hugging Face hub's cache at ``folder`` and go offline (huggingface_hub reads its env at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _tiny_whisper(folder: Path) -> Path:
    """A random 1-layer Whisper with a byte-level tokenizer, saved as a Hugging Face folder (no download)."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|notimestamps|>"]  # fmt: skip
    vocab.update({s: len(vocab) + i for i, s in enumerate(specials)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=end,
                                 bos_token=end, eos_token=end)  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(folder)
    (folder / "normalizer.json").write_text(json.dumps({"colour": "color"}))  # as openai/whisper-* ship it
    ids = {"decoder_start_token_id": vocab["<|startoftranscript|>"], "eos_token_id": vocab[end],
           "pad_token_id": vocab[end], "bos_token_id": vocab[end]}  # fmt: skip
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_target_positions=32, **ids)  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        **ids, max_length=12, is_multilingual=True, lang_to_id={"<|en|>": vocab["<|en|>"]},
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"],
    )  # fmt: skip
    model.save_pretrained(folder)
    return folder


def test_whisper_from_the_local_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``auto`` takes Whisper-base when the HF cache holds it (here a tiny random stand-in under its name)."""
    from knnvc.eval.asr import Whisper

    repo = tmp_path / "models--openai--whisper-base"
    _tiny_whisper(repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    _hf_cache(monkeypatch, tmp_path)
    asr = load_asr("auto")
    assert isinstance(asr, Whisper) and "0123abc" in asr.name
    assert load_asr("whisper").name == asr.name
    long = np.tile(decode.load(SOURCE_WAV), 9)[: 35 * 16_000]  # 35 s: two 30-s windows
    text = asr.transcribe(long)
    assert isinstance(text, str) and text.strip()
    # its WER/CER normalise with Whisper's English normaliser, spellings from the folder's normalizer.json
    assert asr.normaliser("The COLOUR, twenty-five!") == "the color 25" and "1 British" in asr.normaliser.name
