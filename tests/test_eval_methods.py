"""``knnvc eval --sweep method=knn,mkl,linear`` and ``--sweep reference_seconds=...`` with the tiny models on the
fixture speech: one entry per method with its metrics, a plot, LinearVC pairs fitted apart from the converted
utterance; references cut to exactly the speech asked, and a point with too little speech skipped, not scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from knnvc.errors import UsageError
from knnvc.eval.sweep import cut_speech, fit_files, parse_sweep, parse_sweeps
from knnvc.options import SAMPLE_RATE, Models
from knnvc.pipeline import KnnVC
from tests.conftest import REF_DIR, SOURCE_WAV, SPEECH, TINY_VOCODER, TINY_WAVLM
from tests.test_eval_cli import FAST, knnvc

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on a busy 2-core machine

PAIR_SOURCE = SPEECH / "pair" / "source"  # s01-s04: the source speaker (en-us+m3), as source.wav
TINY = ["--wavlm", TINY_WAVLM, "--vocoder", TINY_VOCODER]


def test_method_sweep_writes_one_entry_per_method_and_a_plot(tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = knnvc("eval", "--sweep", "method=knn,mkl,linear", "--source", SOURCE_WAV, "--source-speakers",
                   PAIR_SOURCE, "--target", REF_DIR, "--report", report, *TINY, "--json", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"] == ["method"] and data["values"] == ["knn", "mkl", "linear"]
    assert [p["method"] for p in data["points"]] == ["knn", "mkl", "linear"]
    for point in data["points"]:
        assert point["skipped"] is None
        summary = point["summary"]
        assert summary["files"] == 1
        for key in ("speaker_similarity", "eer_percent", "wer_percent", "cer_percent"):
            assert summary[key] is not None, (point["method"], key)
        assert (report / "converted" / f"method={point['method']}" / "source.wav").is_file()
        assert json.loads((report / f"method={point['method']}" / "report.json").read_text())["summary"] == summary
    similarities = [p["summary"]["speaker_similarity"]["mean"] for p in data["points"]]
    assert len(set(similarities)) == 3  # three different conversions
    # LinearVC: one pair for the source speaker, fitted on its own recordings, never on the converted utterance
    (pair,) = data["points"][2]["pairs"]
    assert pair["fitted_on"] == ["s01.wav", "s02.wav", "s03.wav", "s04.wav"] and pair["converted"] == ["source.wav"]
    assert pair["source_frames"] > 0 and data["points"][2]["notes"] == []
    assert data["points"][0]["pairs"] == [] and data["points"][0]["reference_speech_seconds"] > 5
    with Image.open(report / "sweep.png") as png:
        png.verify()
        assert png.format == "PNG" and png.size[0] >= 800
    assert json.loads((report / "sweep.json").read_text()) == data
    table = (report / "sweep.md").read_text()
    assert all(f"| {m} |" in table for m in ("knn", "mkl", "linear"))


def test_reference_seconds_by_method_cut_and_skip(tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = knnvc("eval", "--sweep", "reference_seconds=2,4,60", "--sweep", "method=knn,mkl", "--source",
                   SOURCE_WAV, "--target", REF_DIR, "--report", report, *TINY, "--json", "--asr", "none",
                   "--no-dnsmos", "--verifier", "resemblyzer", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"] == ["reference_seconds", "method"] and "values" not in data
    points = {(p["reference_seconds"], p["method"]): p for p in data["points"]}
    assert list(points) == [(2, "knn"), (2, "mkl"), (4, "knn"), (4, "mkl"), (60, "knn"), (60, "mkl")]
    for seconds in (2, 4):
        for method in ("knn", "mkl"):
            point = points[(seconds, method)]
            assert point["skipped"] is None and point["reference_speech_seconds"] == seconds
            assert point["summary"]["speaker_similarity"] is not None
    # a 2 s matching set is not a 4 s one: the conversions differ
    assert points[(2, "knn")]["summary"]["speaker_similarity"] != points[(4, "knn")]["summary"]["speaker_similarity"]
    for method in ("knn", "mkl"):  # 10.5 s of references: 60 s is marked skipped, with how much there is
        point = points[(60, method)]
        assert point["summary"] is None and "less than the 60 s asked" in point["skipped"]
        assert not (report / f"reference_seconds=60,method={method}").exists()
    assert "skipped: the references hold" in (report / "sweep.md").read_text()
    with Image.open(report / "sweep.png") as png:
        png.verify()


def test_references_are_cut_to_the_speech_asked() -> None:
    """The cut is the first N s of the references after trimming silence from each one's ends, and the voice built
    from it holds N s of frames."""
    from knnvc.audio import vad
    from knnvc.eval.sweep import _References

    vc = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")
    refs = _References(vc, REF_DIR)
    raw = [vc.load_audio(f) for f in sorted(REF_DIR.glob("*.wav"))]
    trimmed = [vad.trim_silence(w) for w in raw]
    assert all(0 < len(t) < len(w) for t, w in zip(trimmed, raw, strict=True))  # silence was cut from each
    first = len(trimmed[0])
    assert 2 * SAMPLE_RATE < first < 4 * SAMPLE_RATE  # so 4 s spans two files
    for seconds in (2, 4):
        voice = refs.voice(seconds, trim=True)
        assert sum(s.seconds for s in voice.sources) == seconds
        assert abs(voice.seconds - seconds) <= 0.03  # WavLM's frames: 50 a second, the last one partial
        cut = cut_speech(trimmed, seconds)
        assert len(cut) == seconds * SAMPLE_RATE
        np.testing.assert_array_equal(cut[: min(first, len(cut))], trimmed[0][: len(cut)])
    np.testing.assert_array_equal(cut_speech(trimmed, 4)[first:], trimmed[1][: 4 * SAMPLE_RATE - first])
    held = sum(len(t) for t in trimmed) / SAMPLE_RATE
    with pytest.raises(UsageError, match=f"hold {held:.2f} s of speech, less than the 60 s asked"):
        refs.voice(60, trim=True)


def test_fit_files_hold_out_the_converted_utterance(tmp_path: Path) -> None:
    def wav(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SOURCE_WAV, path)
        return path

    src = tmp_path / "src"
    a1, a2, b1 = wav(src / "alice" / "a1.wav"), wav(src / "alice" / "a2.wav"), wav(src / "bob" / "b1.wav")
    assert fit_files(a1, src) == ("alice", [a2])  # a speaker's other recordings under --source
    assert fit_files(b1, src) == ("bob", [])  # none: the caller fits on b1 itself and says so
    flat = tmp_path / "flat"
    x, y = wav(flat / "x.wav"), wav(flat / "y.wav")
    assert fit_files(x, flat) == ("flat", [y])
    assert fit_files(SOURCE_WAV, SOURCE_WAV) == ("source", [])
    # --source-speakers: one speaker's folder, or a folder per speaker (LibriSpeech's SPEAKER-CHAPTER-UTT names)
    assert fit_files(SOURCE_WAV, SOURCE_WAV, PAIR_SOURCE) == ("source", sorted(PAIR_SOURCE.glob("*.wav")))
    speakers = tmp_path / "targets"
    own = wav(speakers / "1089" / "1089-2-0001.wav")
    wav(speakers / "121" / "121-3-0001.wav")
    libri = wav(tmp_path / "sources" / "1089-134686-0000.wav")
    assert fit_files(libri, libri.parent, speakers) == ("1089", [own])
    converted_too = wav(speakers / "1089" / "1089-134686-0000.wav")  # the converted file is there too: left out
    assert converted_too.exists() and fit_files(converted_too, speakers / "1089", speakers) == ("1089", [own])
    with pytest.raises(UsageError, match="no folder of the source speakers"):
        fit_files(a1, src, speakers)


def test_sweep_specs() -> None:
    assert parse_sweep("reference_seconds=5,10,30,60,300").values == (5, 10, 30, 60, 300)
    assert parse_sweep("reference-seconds=2.5").values == (2.5,)
    assert parse_sweep("method=knn,mkl,linear").values == ("knn", "mkl", "linear")
    assert [g.name for g in parse_sweeps(["reference_seconds=5,10", "method=knn,mkl"])] == ["reference_seconds",
                                                                                          "method"]  # fmt: skip
    for specs, message in ((["reference_seconds=0,5"], "above 0"), (["reference_seconds=five"], "float"),
                           (["method=knn,nearest"], "method must be"), (["k=1", "k=2"], "given twice"),
                           (["k=1", "trim=on", "method=knn"], "one or two")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            parse_sweeps(specs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([SOURCE_WAV, "--target", REF_DIR, "--source-speakers", PAIR_SOURCE], "give --sweep"),
        (
            ["--sweep", "method=linear", "--source", SOURCE_WAV, "--target", REF_DIR, "--source-speakers", "/no/such"],
            "no such file or folder",
        ),
        (["--sweep", "reference_seconds=-1", "--source", SOURCE_WAV, "--target", REF_DIR], "above 0"),
    ],
)
def test_usage_errors_are_one_line(args: list[object], message: str, tmp_path: Path) -> None:
    result = knnvc("eval", *args, "--report", tmp_path, *FAST)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
