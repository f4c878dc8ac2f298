"""The first hour (issue "nothing lost, nothing silent", points 1-4), through the real command line (tiny models).

1. No command writes over one of its inputs (a source, a reference, a voice, a morph reference, training data),
   whatever the name it is reached by (a symlink, a hard link), even with ``--overwrite``: one line, exit 2, before
   any model loads.
2. A one-file conversion leaves no settings record beside its output: the record is inside the output itself, so
   a rerun stays honest (skipped with the same settings, refused with others).
3. A bad input (a source file, a reference, a morph reference) fails before any model loads, with the line and the
   exit code the late check gives; a bad file in a folder of sources still fails alone.
4. Something is shown on a terminal before the slow imports, the stages are named, and a one-file result line
   says how long the start took.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import Result

from knnvc import files
from knnvc.audio import decode
from knnvc.batch import plan
from knnvc.batch.manifest import MANIFEST_NAME
from knnvc.errors import AudioError, UsageError, WeightsError
from knnvc.options import RECEPTIVE_FIELD
from tests.conftest import REF_DIR, SOURCE_WAV, on_a_terminal
from tests.fault_tools import (
    FAST,
    check_clean,
    cli,
    json_summary,
    no_model_loaded,
    one_line,
    tiny_voice_file,
    write_audio,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): files.sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def bob(tmp_path: Path) -> Path:
    """A reference folder of our own (three recordings), to be kept whole."""
    shutil.copytree(REF_DIR, tmp_path / "bob")
    return tmp_path / "bob"


def refused(result: Result, output: str, replaced: str) -> str:
    """The one line of a refusal to write ``output`` over the input ``replaced``: exit 2, both named."""
    assert result.exit_code == UsageError.exit_code, (result.exit_code, result.stderr)
    line = one_line(result)
    assert output in line and replaced in line and "--overwrite" in line, line
    return line


# -- 1. no command writes over one of its inputs ----------------------------------------------------------------


def test_convert_never_writes_over_a_reference(tmp_path: Path, bob: Path, unloadable: list[str]) -> None:
    before = digests(bob)
    for extra in ([], ["--overwrite"]):
        result = cli("convert", SOURCE_WAV, bob, "-o", bob / "ref_01.wav", *unloadable, *extra)  # the case
        line = refused(result, "ref_01.wav", "reference")
        no_model_loaded(result)
    assert "bob" in line
    # The same file by other names: a symlink, a hard link; and a reference given as a file.
    (tmp_path / "link.wav").symlink_to(bob / "ref_02.wav")
    os.link(bob / "ref_03.wav", tmp_path / "hard.wav")
    for reference, output in ((bob, "link.wav"), (bob, "hard.wav"), (bob / "ref_03.wav", "hard.wav")):
        result = cli("convert", SOURCE_WAV, reference, "-o", tmp_path / output, *unloadable, "--overwrite")
        refused(result, output, "ref_0")
        no_model_loaded(result)
    assert digests(bob) == before and sorted(p.name for p in bob.iterdir()) == sorted(before)
    assert not (bob / MANIFEST_NAME).exists()


def test_convert_never_writes_over_a_voice_or_a_morph_reference(
    tmp_path: Path, bob: Path, unloadable: list[str]
) -> None:
    voice = tiny_voice_file(tmp_path)
    os.link(voice, tmp_path / "voice.wav")  # the voice, under an output's name
    kept = files.sha256(voice)
    result = cli("convert", SOURCE_WAV, voice, "-o", tmp_path / "voice.wav", *unloadable, "--overwrite")
    refused(result, "voice.wav", "ref.voice")
    no_model_loaded(result)
    before = digests(bob)
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", bob / "ref_02.wav", "--morph", bob, *unloadable, "--overwrite")
    refused(result, "ref_02.wav", "morph")
    no_model_loaded(result)
    assert files.sha256(voice) == kept and digests(bob) == before


def test_a_batch_never_writes_over_a_reference(tmp_path: Path, bob: Path, unloadable: list[str]) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    write_audio(src / "a.wav", 0.3)
    write_audio(src / "ref_01.wav", 0.3)
    out.mkdir()
    os.link(bob / "ref_01.wav", out / "ref_01.wav")  # src/ref_01.wav's output is the reference (a hard link)
    before = digests(bob)
    result = cli("convert", src, bob, "-o", out, *unloadable, "--overwrite")
    refused(result, "ref_01.wav", "reference")
    no_model_loaded(result)
    assert digests(bob) == before and sorted(p.name for p in out.iterdir()) == ["ref_01.wav"]
    # The library refuses too: ``plan`` with the references among the inputs.
    with pytest.raises(UsageError, match="reference"):
        plan.plan(src, out, "bob", inputs={"reference": decode.audio_files(bob)})
    (tmp_path / "a-link.wav").symlink_to(src / "a.wav")
    with pytest.raises(UsageError, match="source"):
        plan.plan(src / "a.wav", tmp_path / "a-link.wav", "bob")


def test_voice_build_never_writes_over_a_reference(tmp_path: Path, bob: Path, unloadable: list[str]) -> None:
    os.link(bob / "ref_01.wav", tmp_path / "bob.voice")
    before = digests(bob)
    result = cli("voice", "build", bob, "-o", tmp_path / "bob.voice", *unloadable[:2], "--device", "cpu",
                 "--overwrite")  # fmt: skip
    refused(result, "bob.voice", "ref_01.wav")
    no_model_loaded(result)
    assert digests(bob) == before


def test_training_never_writes_into_its_data(tmp_path: Path, bob: Path, unloadable: list[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(bob, data / "spk" / "ch")
    before = digests(data)
    (tmp_path / "same").symlink_to(data, target_is_directory=True)
    for out in (data, tmp_path / "same"):  # the data folder by any name
        result = cli("train", "prematch", data, out, *unloadable[:2], "--device", "cpu")
        refused(result, str(out), "data")
        no_model_loaded(result)
    features = tmp_path / "features"
    features.mkdir()
    result = cli("train", "vocoder", features, "-o", features, "--device", "cpu")
    refused(result, "features", "features")
    assert digests(data) == before and list(features.iterdir()) == []


def test_check_not_inputs(tmp_path: Path) -> None:
    """The one check every command uses: by resolved path, symlink or hard link; output folders by nesting."""
    a = write_audio(tmp_path / "in" / "a.wav", 0.1)
    (tmp_path / "sym.wav").symlink_to(a)
    os.link(a, tmp_path / "hard.wav")
    for output in (a, tmp_path / "in" / ".." / "in" / "a.wav", tmp_path / "sym.wav", tmp_path / "hard.wav"):
        with pytest.raises(UsageError, match=r"would replace the source .*a\.wav"):
            files.check_not_inputs([output], {"source": [a]})
    files.check_not_inputs([tmp_path / "new.wav", tmp_path / "in" / "b.wav"], {"source": [a, None]})
    with pytest.raises(UsageError, match="data"):
        files.check_not_inputs([], {"data": [tmp_path / "in"]}, folders=[tmp_path / "in" / "sub" / ".."])
    files.check_not_inputs([], {"data": [tmp_path / "in"]}, folders=[tmp_path / "elsewhere", tmp_path / "in" / "run"])


# -- 2. one file in, one file out ------------------------------------------------------------------------------


def test_one_file_leaves_no_settings_record_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("convert", SOURCE_WAV, REF_DIR, *FAST, "-q").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source_ref.wav"]
    out = tmp_path / "sub" / "x.flac"
    assert cli("convert", SOURCE_WAV, REF_DIR, "-o", out, *FAST, "-q").exit_code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.flac"]


def test_a_one_file_rerun_is_honest(tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    assert cli("convert", SOURCE_WAV, REF_DIR, "-o", out, *FAST, "-q").exit_code == 0
    made = files.sha256(out)
    same = cli("convert", SOURCE_WAV, REF_DIR, "-o", out, *FAST)
    assert same.exit_code == 0 and "already converted with these settings" in same.stderr, same.stderr
    other = cli("convert", SOURCE_WAV, REF_DIR, "-o", out, *FAST, "--k", "2")
    assert other.exit_code == UsageError.exit_code
    line = one_line(other)
    assert "other settings" in line and "options.k: 4 -> 2" in line and "--overwrite" in line, line
    assert files.sha256(out) == made and sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
    replaced = json_summary(cli("convert", SOURCE_WAV, REF_DIR, "-o", out, *FAST, "--k", "2", "--overwrite",
                                "--json"))  # fmt: skip
    assert replaced["converted"] == 1 and files.sha256(out) != made
    assert cli("convert", SOURCE_WAV, REF_DIR, "-o", out, *FAST, "--k", "2", "-q").exit_code == 0  # now done
    by_hand = write_audio(tmp_path / "mine.wav", 0.2)  # no record: kept as it is
    mine = files.sha256(by_hand)
    kept = cli("convert", SOURCE_WAV, REF_DIR, "-o", by_hand, *FAST)
    assert kept.exit_code == 0 and "no settings record" in kept.stderr and files.sha256(by_hand) == mine
    help_text = " ".join(cli("convert", "--help").stdout.split())
    assert "A one-file output keeps its settings in its own metadata" in help_text, help_text


# -- 3. fail fast on bad input ---------------------------------------------------------------------------------


def test_a_bad_source_file_fails_before_models_load(tmp_path: Path, unloadable: list[str]) -> None:
    fake = tmp_path / "fake.wav"
    fake.write_text("a text file named like audio\n" * 50)
    early = cli("convert", fake, REF_DIR, "-o", tmp_path / "o.wav", *unloadable)
    no_model_loaded(early)
    with pytest.raises(AudioError) as late:  # what the conversion itself would say
        decode.load(fake, min_samples=RECEPTIVE_FIELD)
    assert early.exit_code == late.value.exit_code == AudioError.exit_code
    assert one_line(early) == f"error: {late.value}" and "fake.wav" in one_line(early)


def nan_wav(path: Path) -> Path:
    """A file with a sound header whose samples are not numbers: only decoding finds out."""
    data = np.full(16_000, np.nan, dtype=np.float32)
    sf.write(path, data, 16_000, subtype="FLOAT")
    return path


def test_bad_references_fail_before_models_load(tmp_path: Path, bob: Path, unloadable: list[str]) -> None:
    nan_wav(bob / "ref_04.wav")
    result = cli("convert", SOURCE_WAV, bob, "-o", tmp_path / "o.wav", *unloadable)
    assert result.exit_code == AudioError.exit_code and "NaN" in one_line(result) and "ref_04.wav" in result.stderr
    no_model_loaded(result)
    build = cli("voice", "build", bob, "-o", tmp_path / "v.voice", *unloadable[:2], "--device", "cpu")
    assert build.exit_code == AudioError.exit_code and "ref_04.wav" in one_line(build)
    no_model_loaded(build)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, np.float32), 16_000)
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "o.wav", "--morph", short, *unloadable)
    assert result.exit_code == AudioError.exit_code and "too short" in one_line(result)
    no_model_loaded(result)
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "v.voice").exists()


def test_probe_says_what_load_says(tmp_path: Path) -> None:
    good = write_audio(tmp_path / "good.wav", 0.2)
    decode.probe(good, min_samples=RECEPTIVE_FIELD)
    nan, text = nan_wav(tmp_path / "nan.wav"), tmp_path / "text.flac"
    text.write_text("not audio")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, np.float32), 16_000)
    for bad in (nan, text, short, tmp_path / "missing.wav", tmp_path):
        with pytest.raises(AudioError) as late:
            decode.load(bad, min_samples=RECEPTIVE_FIELD)
        with pytest.raises(AudioError) as early:
            decode.probe(bad, min_samples=RECEPTIVE_FIELD)
        assert str(early.value) == str(late.value)


def test_a_bad_file_in_a_folder_still_fails_alone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_audio(src / "good.wav", 0.4)
    nan_wav(src / "bad.wav")
    result = cli("convert", src, REF_DIR, "-o", tmp_path / "out", *FAST, "--json")
    summary = json_summary(result)
    assert result.exit_code == 1 and (summary["converted"], summary["failed"]) == (1, 1)


# -- 4. never silent -------------------------------------------------------------------------------------------


def test_the_stages_are_shown_in_order_then_the_start_up_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_a_terminal(monkeypatch)
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "out.wav", *FAST)
    check_clean(result)
    assert result.exit_code == 0, result.stderr
    shown = result.stderr
    marks = ["checking the inputs", "loading torch", "loading models: WavLM-tiny.pt", "loading models: the vocoder",
             "building the voice", "converting", "out.wav: 3.9 s of audio in"]  # fmt: skip (the bar, then the line)
    where = [shown.find(mark) for mark in marks]
    assert -1 not in where and where == sorted(where), list(zip(marks, where, strict=True))
    assert re.search(r"out\.wav: 3\.9 s of audio in \d+\.\d\d s \(started in \d+\.\d s\)", shown), shown
    quiet = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "q.wav", *FAST, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_status_is_shown_before_torch_is_imported(tmp_path: Path) -> None:
    """In a fresh process whose stderr counts as a terminal: the first status line comes before ``import torch``
    (order only; the benchmark ``python -m bench.startup`` has the seconds)."""
    spy = (
        "import sys, importlib.abc\n"
        "class Spy(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name in ('torch', 'transformers'):\n"
        "            sys.stderr.write(f'<<import {name}>>\\n'); sys.stderr.flush()\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from knnvc.cli import app\n"
        "app(sys.argv[1:], prog_name='knnvc')\n"
    )
    missing = tmp_path / "never-loaded" / "wavlm.pt"
    args = ["convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(tmp_path / "o.wav"), "--wavlm", str(missing),
            "--device", "cpu", "--offline"]  # fmt: skip
    env = {**os.environ, "FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "120", "KNNVC_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", spy, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == WeightsError.exit_code, proc.stderr
    err = proc.stderr
    assert "<<import torch>>" in err and "checking the inputs" in err, err
    assert err.index("checking the inputs") < err.index("<<import torch>>"), err


def test_every_default_is_shown_once() -> None:
    """``train vocoder`` shows TrainConfig's defaults (without importing it for --help), and takes -o/--output."""
    from knnvc.cli import train
    from vocoder.train import TrainConfig

    config = TrainConfig()
    shown_defaults = (train.DEFAULT_STEPS, train.DEFAULT_SEGMENTS, train.DEFAULT_CHECKPOINT_EVERY)
    assert shown_defaults == (config.max_steps, config.batch_size, config.checkpoint_every)
    shown = " ".join(cli("train", "vocoder", "--help").stdout.split())
    assert "-o, --output PATH" in shown and "[default: 2500000 or the --config file's; x>=1]" in shown, shown
    controls = ("--strength", "--match-layer", "--knn-weighting", "--morph")  # knnvc/cli/controls.py's own words
    for command in (["convert"], ["voice", "build"], ["train", "vocoder"], ["train", "prematch"]):
        text = " ".join(cli(*command, "--help").stdout.split())
        for option in re.split(r"(?= --?[a-z])", text.split("Options:")[1]):
            if not option.strip().startswith(controls):
                assert len(re.findall(r"[\[(]default\b|\bdefault \d", option)) <= 1, option
