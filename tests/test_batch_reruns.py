"""Rough edges of folder conversion (issue 10: 1, 5, 6 and "one plan"), through real conversions (tiny models).

Per-file time is measured, reruns say what they skipped and why and never keep outputs made with other settings
(the output folder's ``knnvc-manifest.json``), the input is never overwritten, and there is one ``plan``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from knnvc import progress
from knnvc.batch import plan, runner
from knnvc.batch.identity import Settings, batch_settings
from knnvc.batch.manifest import MANIFEST_NAME, Ledger, StaleOutputsError
from knnvc.errors import UsageError
from knnvc.options import ConvertOptions, Models, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.runtime import windows
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM
from tests.fault_tools import FAST, cli, json_summary, one_line, write_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_audio(root / ("sub" if i % 2 else "") / f"f{i}.wav", 0.3 + 0.1 * i)
    return root


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / MANIFEST_NAME).read_text())
    return data


def stamps(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.wav")}


# -- 1. per-file time -------------------------------------------------------------------------------------


def test_each_file_reports_the_time_it_took(tmp_path: Path) -> None:
    vc = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER, PipelineSettings("cpu", batch_size=2)))
    voice = vc.build_voice(REF_DIR, trim=False)
    jobs = plan.plan(folder(tmp_path / "src"), tmp_path / "out", voice.name)
    events: list[progress.Progress] = []
    report = runner.run(vc, jobs, voice, progress=events.append)
    done = [e for e in events if e.stage == "done"]
    assert len(done) == 3 and all(e.seconds > 0 for e in done)
    assert sum(e.seconds for e in done) <= report.wall_seconds  # shares of the compute, not the group's time each
    # The CLI prints the real figure, not "0.00 s".
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "one.wav", *FAST)
    line = next(ln for ln in result.stderr.splitlines() if "of audio in" in ln)
    assert float(re.search(r"in ([0-9.]+) s", line).group(1)) > 0  # type: ignore[union-attr]


# -- 5. honest reruns -------------------------------------------------------------------------------------


def test_the_manifest_records_the_settings_and_each_file(tmp_path: Path) -> None:
    src, out = folder(tmp_path / "src"), tmp_path / "out"
    summary = json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--k", "3", "--json"))
    assert summary["converted"] == 3
    record = manifest(out)
    assert record["format"] == "knnvc-manifest/1"
    ((key, settings),) = record["settings"].items()
    audio = settings["audio"]
    assert audio["options"] == {"k": 3, "loudness": -16.0, "trim": False, "output_sample_rate": None,
                                "strength": 1.0, "match_layer": 6, "knn_weighting": "uniform", "morph": None,
                                "morph_weight": 0.5}  # fmt: skip
    assert audio["voice"]["name"] == "ref" and len(audio["voice"]["references"]) == 3
    assert set(audio["weights"]) == {"wavlm", "layer", "vocoder"} and audio["output"] == {
        "format": ".wav", "sample_rate": 16_000}  # fmt: skip
    assert audio["compute"] == {"precision": "float32"} and settings["knnvc"] and settings["device"] == "cpu"
    assert sorted(record["files"]) == ["f0.wav", "f2.wav", "sub/f1.wav"]
    for entry in record["files"].values():
        assert entry["settings"] == key and entry["status"] == "converted" and entry["seconds"] > 0


def test_a_rerun_says_what_it_skipped_and_why(tmp_path: Path) -> None:
    src, out = folder(tmp_path / "src"), tmp_path / "out"
    json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--json"))
    (out / "sub" / "f1.wav").unlink()
    write_audio(out / "f2.wav", 0.2)  # replaced by hand: the record no longer describes this file
    record = manifest(out)
    del record["files"]["f2.wav"]
    (out / MANIFEST_NAME).write_text(json.dumps(record))
    result = cli("convert", src, REF_DIR, "-o", out, *FAST)
    assert result.exit_code == 0
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("skipped:"))
    assert "2 existing output(s)" in line and "1 already converted with these settings" in line
    assert "1 with no settings record" in line and "--overwrite" in line
    summary = json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--json"))
    assert summary["skipped"] == 3 and summary["skip_reasons"] == {"done": 2, "unrecorded": 1}


@pytest.mark.parametrize("change", [["--k", "2"], ["--loudness", "-20"], ["--sample-rate", "22050"]])
def test_other_settings_stop_before_anything_is_replaced(tmp_path: Path, change: list[str]) -> None:
    src, out = folder(tmp_path / "src"), tmp_path / "out"
    json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--json"))
    (out / "f0.wav").unlink()  # one missing output: still nothing is converted while others are stale
    before = stamps(out)
    result = cli("convert", src, REF_DIR, "-o", out, *FAST, *change)
    assert result.exit_code == UsageError.exit_code
    line = one_line(result)
    assert "2 existing output(s)" in line and "other settings" in line and "--overwrite" in line
    assert "f2.wav" in line and "sub/f1.wav" in line
    assert stamps(out) == before and not (out / "f0.wav").exists()
    summary = json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, *change, "--overwrite", "--json"))
    assert summary["converted"] == 3
    record = manifest(out)
    assert len(record["settings"]) == 2  # both settings kept on record; every file points at the new one
    assert len({e["settings"] for e in record["files"].values()}) == 1
    assert json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, *change, "--json"))["skipped"] == 3


def test_another_voice_is_other_settings(tmp_path: Path, voice: Path) -> None:
    src, out = folder(tmp_path / "src", 1), tmp_path / "out"
    json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--json"))
    one_ref = tmp_path / "refs"
    one_ref.mkdir()
    shutil.copy(REF_DIR / "ref_01.wav", one_ref / "ref_01.wav")
    for other in (one_ref, voice):
        result = cli("convert", src, other, "-o", out, *FAST)
        assert result.exit_code == UsageError.exit_code and "voice." in one_line(result)


def test_an_interrupted_overwrite_is_not_taken_for_done(tmp_path: Path) -> None:
    """An overwrite with other settings stopped part-way: outputs it replaced and recorded count as done; those it
    did not reach, a failed one (its old file stays), and one written but not yet recorded (a run killed outright)
    stay stale, so a rerun never keeps audio made with the old settings."""
    vc = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")
    src, out = folder(tmp_path / "src", 4), tmp_path / "out"
    jobs = plan.plan(src, out, "ref")
    old = batch_settings(vc, REF_DIR, ConvertOptions(k=4), vocoder=str(TINY_VOCODER), extension=".wav")
    new = batch_settings(vc, REF_DIR, ConvertOptions(k=2), vocoder=str(TINY_VOCODER), extension=".wav")
    first = Ledger(out, old)
    for job in jobs:
        write_audio(job.output, 0.1)
        first.record(progress.Progress("done", 0, 4, job, seconds=0.1, audio_seconds=0.1))
    first.flush(force=True)
    ledger = Ledger(out, new)
    assert len(ledger.check(jobs, overwrite=True).todo) == 4
    write_audio(jobs[0].output, 0.1)  # re-converted and recorded
    ledger.record(progress.Progress("done", 0, 4, jobs[0], seconds=0.1, audio_seconds=0.1))
    ledger.record(progress.Progress("fail", 1, 4, jobs[1], error=UsageError("no")))  # the old file is kept
    ledger.flush(force=True)
    write_audio(jobs[2].output, 0.1)  # re-converted, then the run was killed before its next manifest write
    with pytest.raises(StaleOutputsError) as caught:
        Ledger(out, new).check(jobs)
    assert caught.value.stale == [j.output for j in jobs[1:]] and "options.k: 4 -> 2" in str(caught.value)
    assert manifest(out)["files"][jobs[1].output.relative_to(out).as_posix()]["settings"] == old.key


def test_an_earlier_versions_queued_entries_read_as_stale(tmp_path: Path) -> None:
    """Records written before this version may hold ``queued`` entries (a run that stopped before recording a
    file): whether the file there was replaced cannot be told, so a rerun stops on it instead of keeping it."""
    src, out = folder(tmp_path / "src", 1), tmp_path / "out"
    json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--json"))
    record = manifest(out)
    record["files"]["f0.wav"].update(status="queued", queued_ns=1, was=[1, 2])
    (out / MANIFEST_NAME).write_text(json.dumps(record))
    result = cli("convert", src, REF_DIR, "-o", out, *FAST)
    assert result.exit_code == UsageError.exit_code and "not fully re-converted" in one_line(result)
    assert json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--overwrite", "--json"))["converted"] == 1
    assert manifest(out)["files"]["f0.wav"]["status"] == "converted"


def test_runs_sharing_a_folder_keep_each_others_records(tmp_path: Path) -> None:
    """Four runs recording into one folder at once (each merging on every write): none loses another's records,
    and the manifest stays whole JSON with no temporary file left."""
    settings = Settings({"voice": {"name": "a"}})
    out = tmp_path / "out"

    def one_run(n: int) -> None:
        ledger = Ledger(out, settings)
        for i in range(15):
            job = progress.Job(tmp_path / f"s{n}-{i}.wav", out / f"o{n}-{i:02d}.wav")
            ledger.record(progress.Progress("done", i, 15, job, seconds=0.1, audio_seconds=0.1))
            ledger.flush(force=True)

    runs = [threading.Thread(target=one_run, args=(n,)) for n in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert sorted(manifest(out)["files"]) == [f"o{n}-{i:02d}.wav" for n in range(4) for i in range(15)]
    assert [p.name for p in out.iterdir()] == [MANIFEST_NAME]


def test_the_manifest_is_written_atomically_and_merged(tmp_path: Path) -> None:
    vc = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")
    settings = batch_settings(vc, REF_DIR, ConvertOptions(), vocoder=str(TINY_VOCODER), extension=".wav")
    jobs = [progress.Job(tmp_path / f"s{i}.wav", tmp_path / "out" / f"o{i}.wav") for i in range(2)]
    for job in jobs:  # two writers sharing a folder (two single-file runs): neither loses the other's record
        write_audio(job.output, 0.1)
        ledger = Ledger(tmp_path / "out", settings)
        ledger.record(progress.Progress("done", 0, 1, job, seconds=0.2, audio_seconds=0.1))
        ledger.flush(force=True)
    assert sorted(manifest(tmp_path / "out")["files"]) == ["o0.wav", "o1.wav"]
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []
    (tmp_path / "out" / MANIFEST_NAME).write_text("{broken")
    with pytest.raises(Exception, match="cannot read this settings record"):
        Ledger(tmp_path / "out", settings)


# -- 6. never overwrite the input -------------------------------------------------------------------------


def test_the_source_file_is_never_the_output(tmp_path: Path) -> None:
    source = write_audio(tmp_path / "a.wav", 0.3)
    original = source.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = cli("convert", source, REF_DIR, "-o", source, *FAST, *extra)
        assert result.exit_code == UsageError.exit_code and "replace the source" in one_line(result)
    os.symlink(source, tmp_path / "link.wav")  # the same file under another name
    result = cli("convert", source, REF_DIR, "-o", tmp_path / "link.wav", *FAST, "--overwrite")
    assert result.exit_code == UsageError.exit_code
    assert source.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "link.wav"]


def test_an_output_folder_the_batch_would_read_back_is_refused(tmp_path: Path) -> None:
    src = folder(tmp_path / "src")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    result = cli("convert", src, REF_DIR, "-o", src / "converted", *FAST, "--overwrite")
    assert result.exit_code == UsageError.exit_code and "inside the source folder" in one_line(result)
    # -o a parent of the source: an output would land on a source file (src/src/f0.wav -> src/f0.wav)
    write_audio(src / "src" / "f0.wav", 0.3)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    result = cli("convert", src, REF_DIR, "-o", tmp_path, *FAST, "--overwrite")
    assert result.exit_code == UsageError.exit_code and "replace the source" in one_line(result)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


# -- one plan ---------------------------------------------------------------------------------------------


def test_one_plan() -> None:
    """``plan.plan`` plans outputs; the windows of long audio are ``windows.split`` (no second ``plan``)."""
    assert not hasattr(windows, "plan")
    assert [(w.keep_start, w.keep_stop) for w in windows.split(30, core=10, context=2)] == [(0, 10), (10, 20),
                                                                                             (20, 30)]  # fmt: skip
