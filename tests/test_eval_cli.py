"""``knnvc eval`` through typer's CliRunner: a folder of conversions, a sweep over k with the tiny models, and
one-line usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from knnvc.cli import app
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models on a busy 2-core machine

FAST = ["--asr", "pocketsphinx", "--no-dnsmos", "--verifier", "resemblyzer", "--device", "cpu"]


def knnvc(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={"KNNVC_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})


def test_eval_a_folder(tmp_path: Path) -> None:
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "source_alice.wav").write_bytes(SOURCE_WAV.read_bytes())  # named as knnvc convert names it
    (tmp_path / "said.txt").write_text("source a sentence spoken by the source voice\n")
    report = tmp_path / "report"
    result = knnvc("eval", converted, "--target", REF_DIR, "--source", SOURCE_WAV.parent, "--transcripts",
                   tmp_path / "said.txt", "--report", report, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "speaker similarity" in result.output and "EER %" in result.output and "WER %" in result.output
    data = json.loads((report / "report.json").read_text())
    s = data["summary"]
    assert s["files"] == 1 and s["eer_trials"] == {"genuine": 3, "converted": 3}
    # the "conversion" is the source itself: it scores exactly as the source does
    assert s["speaker_similarity"]["mean"] == pytest.approx(s["source_similarity"]["mean"])
    assert s["wer_percent"] is not None and data["models"]["asr"].startswith("pocketsphinx")
    with Image.open(report / "similarity_hist.png") as png:
        assert png.size == (800, 500)


def test_sweep_k(tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = knnvc("eval", "--sweep", "k=1,4", "--source", SOURCE_WAV, "--target", REF_DIR, "--report", report,
                   "--wavlm", TINY_WAVLM, "--vocoder", TINY_VOCODER, "--json", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["setting"] == "k" and data["values"] == [1, 4] and len(data["summaries"]) == 2
    for k in (1, 4):
        assert (report / "converted" / f"k={k}" / "source.wav").is_file()
        assert json.loads((report / f"k={k}" / "report.json").read_text())["summary"]["files"] == 1
    # k changes the conversion, so it changes the scores
    assert data["summaries"][0]["speaker_similarity"] != data["summaries"][1]["speaker_similarity"]
    with Image.open(report / "sweep.png") as png:
        assert png.size[0] >= 800
    assert json.loads((report / "sweep.json").read_text()) == data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "strength=0.5", "--source", SOURCE_WAV, "--target", REF_DIR], "unknown setting 'strength'"),
        (["--sweep", "k=1,4", "--target", REF_DIR], "give --source"),
        ([SOURCE_WAV], "give --target"),
        (["--target", REF_DIR], "give CONVERTED"),
        ([SOURCE_WAV, "--target", REF_DIR, "--transcripts", "/no/such/file"], "no such file"),
    ],
)
def test_usage_errors_are_one_line(args: list[object], message: str, tmp_path: Path) -> None:
    result = knnvc("eval", *args, "--report", tmp_path, *FAST)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_metric_model(tmp_path: Path) -> None:
    result = knnvc("eval", SOURCE_WAV, "--target", REF_DIR, "--report", tmp_path, "--verifier", "nobody/no-such-sv",
                   "--asr", "none", "--no-dnsmos")  # fmt: skip
    assert result.exit_code == 4
    assert "nor in the local Hugging Face cache" in result.output and "--verifier resemblyzer" in result.output
