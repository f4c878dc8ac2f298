"""``knnvc eval`` through typer's CliRunner: a folder of conversions, a sweep over k with the tiny models, and
one-line usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from knnvc.cli import app
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM, help_probe

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
    assert "WER/CER text normalisation: plain" in result.output  # pocketsphinx's words: the plain normalisation
    data = json.loads((report / "report.json").read_text())
    s = data["summary"]
    assert s["files"] == 1 and s["eer_trials"] == {"genuine": 3, "converted": 3}
    # the "conversion" is the source itself: it scores exactly as the source does
    assert s["speaker_similarity"]["mean"] == pytest.approx(s["source_similarity"]["mean"])
    assert s["wer_percent"] is not None and data["models"]["asr"].startswith("pocketsphinx")
    assert s["wer_normaliser"].startswith("plain")
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
        (["--sweep", "strenght=0.5", "--source", SOURCE_WAV, "--target", REF_DIR], "unknown setting 'strenght'"),
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


def test_librispeech_layout(tmp_path: Path) -> None:
    """A LibriSpeech-shaped tree of three speakers: sources, targets and a manifest that ``knnvc eval`` reads."""
    from knnvc.eval.inputs import read_manifest

    root = tmp_path / "test-clean"
    wavs = [SOURCE_WAV, *sorted(REF_DIR.glob("*.wav"))]
    for speaker in ("61", "121", "237"):
        chapter = root / speaker / "100"
        chapter.mkdir(parents=True)
        lines = []
        for n, wav in enumerate(wavs):
            utt = f"{speaker}-100-{n:04d}"
            (chapter / f"{utt}.flac").write_bytes(_flac(wav))
            lines.append(f"{utt} WORDS OF {utt}")
        (chapter / f"{speaker}-100.trans.txt").write_text("\n".join(lines) + "\n")
    work = tmp_path / "work"
    result = knnvc("eval-librispeech", root, work, "--sources-per-speaker", 2)
    assert result.exit_code == 0, result.output
    assert "6 conversions into 3 target speakers" in result.output and "knnvc eval --manifest" in result.output
    items = read_manifest(work / "manifest.tsv")
    assert len(items) == 6
    for item in items:
        source_speaker, target = item.source.name.split("-")[0], item.target.name  # type: ignore[union-attr]
        assert source_speaker != target and item.text == f"WORDS OF {item.source.stem}"  # type: ignore[union-attr]
        assert item.source.resolve().is_file() and item.converted.parent.name == target  # type: ignore[union-attr]
        references = {p.name for p in item.target.iterdir()}
        assert len(references) == 2 and not references & {i.source.name for i in items}  # type: ignore[union-attr]
    assert sorted(i.target.name for i in items) == ["121", "121", "237", "237", "61", "61"]


def _flac(wav: Path) -> bytes:
    import io

    import soundfile as sf

    data, rate = sf.read(wav, dtype="int16")
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format="FLAC")
    return buffer.getvalue()


def test_progress_bars_per_stage() -> None:
    from knnvc.cli.eval import StageBar
    from knnvc.progress import Progress

    with StageBar(show=True) as view:
        assert view.bar is not None
        view.update(Progress("embedding references", 1, 3))
        view.update(Progress("scoring", 2, 40))
        refs, scoring = view.bar.tasks
        assert (refs.description, refs.completed, refs.total) == ("embedding references", 1, 3)
        assert (scoring.completed, scoring.total) == (2, 40)
    with StageBar(show=False) as quiet:
        quiet.update(Progress("scoring", 1, 1))
        assert quiet.bar is None


def test_help_loads_no_metric_model() -> None:
    heavy = ("torch", "numpy", "resemblyzer", "jiwer", "pocketsphinx", "matplotlib", "knnvc.eval")
    proc = help_probe([["eval", "--help"], ["eval-librispeech", "--help"]], heavy, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--sweep" in proc.stdout and "--sources-per-speaker" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"
