"""knnvc.eval's arithmetic and inputs: EER on trial lists with known answers, WER/CER on known strings (and
Whisper's English normalisation on text pairs), transcript files, pairing converted files with sources,
manifests, and parsing ``--sweep``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from knnvc.errors import UsageError
from knnvc.eval.eer import equal_error_rate, target_trials
from knnvc.eval.inputs import pair, read_manifest
from knnvc.eval.sweep import parse_sweep, settings
from knnvc.eval.text import PLAIN, Normaliser, error_rates, normalise, read_transcripts, whisper_english
from knnvc.options import ConvertOptions
from tests.conftest import REF_DIR, SOURCE_WAV


def test_eer_known_answer() -> None:
    # genuine 0.9 0.8 0.7 0.4; others 0.6 0.5 0.3 0.2: at threshold 0.6 one genuine of four is rejected (0.4)
    # and one other of four accepted (0.6): both rates 25 %
    scores = [0.9, 0.8, 0.7, 0.4, 0.6, 0.5, 0.3, 0.2]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert equal_error_rate(scores, labels) == (0.25, 0.6)


def test_eer_extremes_and_interpolation() -> None:
    assert equal_error_rate([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])[0] == 0.0  # separable: never confused
    assert equal_error_rate([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0])[0] == 1.0  # inverted: always wrong
    assert equal_error_rate([0.5] * 6, [1, 1, 1, 0, 0, 0])[0] == 0.5  # indistinguishable
    # genuine 0.6 0.9; others 0.5 0.55 0.95. At 0.6: FRR 0, FAR 1/3; at 0.9: FRR 1/2, FAR 1/3. The curves
    # cross between: 0 + w/2 = 1/3 at w = 2/3, so EER 1/3 at threshold 0.6 + (2/3)(0.3) = 0.8
    rate, threshold = equal_error_rate([0.6, 0.9, 0.5, 0.55, 0.95], [1, 1, 0, 0, 0])
    assert rate == pytest.approx(1 / 3) and threshold == pytest.approx(0.8)
    # a large random list agrees with the brute-force definition to within one trial's step
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1.0, 1.0, 4000), rng.normal(0.0, 1.0, 4000)])
    labels = np.repeat([1, 0], 4000)
    rate, _ = equal_error_rate(scores, labels)
    grid = np.linspace(-3, 4, 7001)
    frr = np.array([(scores[:4000] < t).mean() for t in grid])
    far = np.array([(scores[4000:] >= t).mean() for t in grid])
    assert abs(rate - np.min(np.maximum(frr, far))) < 1e-3
    assert abs(rate - 0.3085) < 0.02  # two unit normals one apart: Phi(-0.5)


def test_eer_refuses_what_it_cannot_score() -> None:
    for scores, labels in (([0.1, 0.2], [1, 1]), ([0.1], [1, 0]), ([np.nan, 0.1], [1, 0]), ([0.1, 0.2], [1, 2])):
        with pytest.raises(UsageError):
            equal_error_rate(scores, labels)


def test_trials_of_one_target() -> None:
    refs = np.eye(3)  # three orthogonal unit embeddings
    conv = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    trials = target_trials(refs, conv)
    assert trials.genuine.tolist() == [0.0, 0.0, 0.0]  # pairs (0,1), (0,2), (1,2)
    assert sorted(trials.converted.tolist()) == [0.0, 0.0, 0.0, 0.6, 0.8, 1.0]


def test_wer_cer_known_strings() -> None:
    rates = error_rates(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert (rates.wer, rates.word_edits, rates.words) == (pytest.approx(1 / 6), 1, 6)
    assert (rates.char_edits, rates.chars) == (3, 22)  # "the" -> "a": 2 deletions and 1 substitution
    # corpus totals: all edits over all reference words, not a mean of per-file rates
    both = error_rates(["one two three four", "five"], ["one two three four", "six"])
    assert both.wer == pytest.approx(1 / 5)
    assert error_rates(["Hello, World!"], ["hello world"]).wer == 0.0  # case and punctuation do not count
    assert error_rates(["DON'T STOP"], ["don't stop"]).cer == 0.0
    assert error_rates(["a b"], [""]).wer == 1.0  # nothing heard: every word deleted
    assert error_rates(["a"], ["a b c"]).wer == 2.0  # insertions can take WER above 1
    assert normalise("  It's   a—TEST. ") == "it s a test"
    with pytest.raises(UsageError):
        error_rates(["..."], ["x"])  # a reference with no words


def test_whisper_english_normaliser_text_pairs() -> None:
    """Whisper's transcripts against LibriSpeech-style references: the same words, written another way, match."""
    spellings = {"colour": "color", "realised": "realized"}  # word for word, as Whisper's normalizer.json maps
    english = whisper_english(spellings)
    same = [
        ("TWENTY FIVE PAST TWO", "25 past 2."),  # numbers: spelled out in the reference, digits from Whisper
        ("IN TWO THOUSAND AND ONE", "In 2001,"),
        ("NINETY NINE PERCENT", "99%"),
        ("I WON'T GO", "I will not go."),  # contractions, either side
        ("IT IS FINE AND I AM HERE", "It's fine, and I'm here!"),
        ("DON'T", "do not"),
        ("THE COLOUR I REALISED", "The color I realized"),  # British and American spelling
        ("MISTER SMITH SAID HELLO WORLD", "Mr. Smith said: \"Hello, world!\""),  # titles and punctuation
        ("SO I SAID", "Um, so I said"),  # fillers
    ]
    for reference, hypothesis in same:
        assert english(reference) == english(hypothesis), (reference, hypothesis)
        assert error_rates([reference], [hypothesis], english).wer == 0.0
    assert english("TWENTY FIVE PAST TWO") == "25 past 2" and english("The COLOUR") == "the color"
    # other words still count: one number (one word after normalisation) wrong of three
    assert error_rates(["TWENTY FIVE PAST TWO"], ["26 past 2"], english).wer == pytest.approx(1 / 3)
    # the plain normalisation counts the numbers as three errors of four words: the inflated WER it replaces
    assert error_rates(["TWENTY FIVE PAST TWO"], ["25 past 2."]).wer == pytest.approx(3 / 4)
    assert "2 British-to-American spellings" in english.name and PLAIN.name.startswith("plain")
    bare = whisper_english(None)  # a Whisper folder without normalizer.json: spellings stay apart
    assert bare("The COLOUR") == "the colour" and "no spelling list" in bare.name
    with pytest.raises(UsageError, match="at least one word"):
        error_rates(["..."], ["x"], english)  # punctuation only: no words under either normalisation


class _Says:
    """A stand-in ASR that always hears the same words, written as Whisper would write them."""

    name = "says"

    def __init__(self, normaliser: Normaliser) -> None:
        self.normaliser = normaliser

    def transcribe(self, wav: np.ndarray) -> str:
        return "It's 25 past 2."


def test_evaluate_normalises_with_the_asrs_normaliser(tmp_path: Path) -> None:
    from knnvc.eval.core import evaluate
    from knnvc.eval.inputs import Item
    from knnvc.eval.report import markdown, write_report

    item = Item(SOURCE_WAV, REF_DIR, text="IT IS TWENTY FIVE PAST TWO")
    english = evaluate([item], _Level(), _Says(whisper_english({})))
    plain = evaluate([item], _Level(), _Says(PLAIN))
    assert english.summary["wer_percent"] == 0.0 and english.files[0].wer == 0.0
    # plain: "it s 25 past 2" against "it is twenty five past two": 3 substitutions and a deletion in 6 words
    assert plain.summary["wer_percent"] == pytest.approx(100 * 4 / 6, abs=0.01)
    assert english.summary["wer_normaliser"].startswith("Whisper English")
    assert plain.summary["wer_normaliser"] == PLAIN.name
    assert f"WER/CER text normalisation (references and hypotheses alike): {PLAIN.name}." in markdown(plain)
    assert json.loads(write_report(english, tmp_path)[0].read_text())["summary"]["wer_normaliser"].startswith(
        "Whisper English"
    )


def test_transcripts(tmp_path: Path) -> None:
    libri = tmp_path / "19" / "198"
    libri.mkdir(parents=True)
    (libri / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 CHAPTER ONE\n")
    (tmp_path / "list.tsv").write_text("clip.wav\tHello there\n")
    found = read_transcripts(tmp_path)
    assert found == {"19-198-0000": "NORTHANGER ABBEY", "19-198-0001": "CHAPTER ONE", "clip": "Hello there"}
    (tmp_path / "bad.txt").write_text("19-198-0000 SOMETHING ELSE\n")
    with pytest.raises(UsageError, match="two different"):
        read_transcripts(tmp_path)
    with pytest.raises(UsageError, match="no such"):
        read_transcripts(tmp_path / "missing")


def test_pair_converted_with_sources_and_texts(tmp_path: Path) -> None:
    sources, converted = tmp_path / "src", tmp_path / "out"
    for folder in (sources / "a", converted / "a"):
        folder.mkdir(parents=True)
    for name in ("x.wav", "a/y.flac"):
        (sources / name).write_bytes(SOURCE_WAV.read_bytes())
    (converted / "x_alice.wav").write_bytes(SOURCE_WAV.read_bytes())  # knnvc convert's file naming
    (converted / "a" / "y.wav").write_bytes(SOURCE_WAV.read_bytes())  # a mirrored folder
    (tmp_path / "t.txt").write_text("x first words\ny second words\n")
    items = pair(converted, REF_DIR, sources, tmp_path / "t.txt")
    got = {i.converted.name: (i.source.name if i.source else None, i.text) for i in items}
    assert got == {"y.wav": ("y.flac", "second words"), "x_alice.wav": ("x.wav", "first words")}
    (converted / "z.wav").write_bytes(SOURCE_WAV.read_bytes())
    with pytest.raises(UsageError, match="no source"):
        pair(converted, REF_DIR, sources)
    with pytest.raises(UsageError, match="no transcript"):
        pair(converted / "z.wav", REF_DIR, None, tmp_path / "t.txt")


def test_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text(f"converted\ttarget\tsource\ttext\nc.wav\t{REF_DIR}\t{SOURCE_WAV}\thi there\n")
    (item,) = read_manifest(tmp_path / "m.tsv")
    expected = (tmp_path / "c.wav", REF_DIR, SOURCE_WAV, "hi there")
    assert (item.converted, item.target, item.source, item.text) == expected
    (tmp_path / "m2.tsv").write_text(f"converted\ttarget\tsource\nc.wav\t{REF_DIR}\tsrc/u1.flac\n")
    (tmp_path / "t.txt").write_text("u1 what the source said\n")
    assert read_manifest(tmp_path / "m2.tsv", tmp_path / "t.txt")[0].text == "what the source said"
    (tmp_path / "bad.tsv").write_text("file\tspeaker\nc.wav\tx\n")
    with pytest.raises(UsageError, match="header"):
        read_manifest(tmp_path / "bad.tsv")


def test_sweep_reads_settings_from_convert_options() -> None:
    assert parse_sweep("k=1,4,8").values == (1, 4, 8)
    assert settings() == [f for f in ConvertOptions.__dataclass_fields__]  # every field, no hand-kept list
    assert parse_sweep("loudness=-23,none").values == (-23.0, None)
    assert parse_sweep("trim=on,off").values == (True, False)
    grid = parse_sweep("output-sample-rate=16000,24000")
    assert [o.output_sample_rate for o in grid.options(ConvertOptions())] == [16000, 24000]
    from typing import Literal

    from knnvc.eval.sweep import _typed

    mode = Literal["mean", "median"] | None  # a control with named choices, as a later field might have
    assert [_typed(v, mode, "mode") for v in ("median", "none")] == ["median", None]
    with pytest.raises(UsageError, match="mode takes"):
        _typed("mode", mode, "mode")
    assert parse_sweep("strength=0.5,1").values == (0.5, 1.0)  # the controls (issue 12) sweep too
    for spec, message in (("colour=red", "unknown setting 'colour'"), ("k", "NAME=V1"), ("k=1,,2", "distinct"),
                          ("k=1,1", "distinct"), ("k=two", "int"), ("k=0,4", "k must be at least 1")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            parse_sweep(spec)


class _Level:
    """A stand-in verifier whose 'speaker' is the signal's level: enough to drive ``evaluate``'s bookkeeping."""

    name = "level"

    def embed(self, wav: np.ndarray) -> np.ndarray:
        v = np.array([wav.std(), np.abs(wav).mean(), 0.01])
        return v / np.linalg.norm(v)


def test_evaluate_says_what_it_skipped() -> None:
    from knnvc.eval.core import evaluate
    from knnvc.eval.inputs import Item

    ref_01 = sorted(REF_DIR.glob("*.wav"))[0]
    events: list[tuple[str, int, int | None]] = []
    result = evaluate([Item(SOURCE_WAV, ref_01)], _Level(),
                      progress=lambda e: events.append((e.stage, e.index, e.total)))
    s = result.summary
    assert s["eer_percent"] is None and s["wer_percent"] is None and s["source_similarity"] is None
    assert any("EER skipped" in n and "two reference files" in n for n in result.notes)
    assert any("WER/CER skipped: no ASR model" in n for n in result.notes)
    assert events == [("embedding references", 1, 1), ("scoring", 1, 1)]
    assert result.models == {"verifier": "level", "asr": "none", "dnsmos": "none"}
    with pytest.raises(UsageError, match="nothing to evaluate"):
        evaluate([], _Level())


def test_dnsmos_missing_is_a_one_line_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from knnvc.eval import quality

    real = importlib.util.find_spec
    monkeypatch.setattr(quality.importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    scorer, why = quality.load_dnsmos()
    assert scorer is None and why == "DNSMOS skipped: onnxruntime is not installed (pip install 'knnvc[eval]')"
    monkeypatch.setattr(quality, "MODELS", ("dnsmos_models/gone.onnx",))
    monkeypatch.setattr(quality.importlib.util, "find_spec", real)
    scorer, why = quality.load_dnsmos()
    assert scorer is None and "lacks its model files (dnsmos_models/gone.onnx)" in why
