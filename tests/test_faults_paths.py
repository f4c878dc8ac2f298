"""Faults in paths: missing, empty folders, non-audio files, spaces/unicode/undecodable names, escaping outputs.

Each bad input gives one line on stderr that names the file and says what to do, and its documented exit code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from knnvc.batch import plan
from knnvc.batch.manifest import MANIFEST_NAME
from knnvc.errors import AudioError, OutputError, UsageError
from tests.conftest import REF_DIR, SOURCE_WAV
from tests.fault_tools import (
    FAST,
    check_clean,
    cli,
    json_summary,
    one_line,
    temp_files,
    tone,
    write_audio,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_missing_source_and_reference(tmp_path: Path) -> None:
    missing = tmp_path / "no such dir" / "nope.wav"
    result = cli("convert", missing, REF_DIR, "-o", tmp_path / "o.wav", *FAST)
    assert result.exit_code == AudioError.exit_code
    line = one_line(result)
    assert str(missing) in line and "no such file" in line
    result = cli("convert", SOURCE_WAV, tmp_path / "ghost.wav", "-o", tmp_path / "o.wav", *FAST)
    assert result.exit_code == AudioError.exit_code and "ghost.wav" in one_line(result)
    result = cli("convert", SOURCE_WAV, tmp_path / "ghost.voice", "-o", tmp_path / "o.wav", *FAST)
    assert result.exit_code == AudioError.exit_code and "ghost.voice" in one_line(result)  # a missing input: 3
    assert not (tmp_path / "o.wav").exists()


def test_folders_without_audio(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no audio here")
    (empty / "sub" / "README").write_text("nor here")
    result = cli("convert", empty, REF_DIR, "-o", tmp_path / "out", *FAST)
    assert result.exit_code == AudioError.exit_code
    line = one_line(result)
    assert str(empty) in line and "no audio files" in line and ".wav" in line  # says what it looks for
    result = cli("convert", SOURCE_WAV, empty, "-o", tmp_path / "o.wav", *FAST)  # as the reference
    assert result.exit_code == AudioError.exit_code and "no audio files" in one_line(result)
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("text.wav", b"this is a text file, not audio\n" * 40),
        ("zeros.flac", bytes(4096)),
        ("random.ogg", os.urandom(8192)),
        ("empty.wav", b""),
        ("noextension", b"plain text without any extension\n" * 10),
    ],
)
def test_non_audio_file_as_source(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = cli("convert", path, REF_DIR, "-o", tmp_path / "o.wav", *FAST)
    assert result.exit_code == AudioError.exit_code
    line = one_line(result)
    assert name in line and "WAV or FLAC" in line, line
    assert not (tmp_path / "o.wav").exists() and temp_files(tmp_path) == []


def test_audio_without_extension_converts_when_named_directly(tmp_path: Path) -> None:
    path = tmp_path / "recording"
    sf.write(path, tone(0.5), 16_000, format="WAV")
    out = tmp_path / "o.flac"
    assert json_summary(cli("convert", path, REF_DIR, "-o", out, *FAST, "--json"))["converted"] == 1
    assert sf.info(out).frames == 8_000


def test_non_audio_in_a_folder_is_listed_or_ignored(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_audio(src / "good.wav", 0.5)
    (src / "fake.wav").write_text("text with an audio extension")
    (src / "notes.txt").write_text("not audio, and not called audio: ignored")
    (src / "noext").write_bytes(os.urandom(2000))  # no audio extension: not a source
    result = cli("convert", src, REF_DIR, "-o", tmp_path / "out", *FAST, "--json")
    summary = json_summary(result)
    assert result.exit_code == 1
    assert (summary["files"], summary["converted"], summary["failed"]) == (2, 1, 1)
    assert summary["failures"][0]["file"] == str(src / "fake.wav")
    assert "cannot decode" in summary["failures"][0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.wav", MANIFEST_NAME]


def test_spaces_and_unicode_everywhere(tmp_path: Path) -> None:
    src = tmp_path / "my sources"
    names = ["my voice/ßpeaker ñ 声.wav", "Ünïcödé – dash/😀 emoji.flac", "plain.wav"]
    for name in names:
        write_audio(src / name, 0.4)
    ref = tmp_path / "réf ünïcode"
    shutil.copytree(REF_DIR, ref)
    out = tmp_path / "out put"
    summary = json_summary(cli("convert", src, ref, "-o", out, *FAST, "--json"))
    assert summary["converted"] == 3 and summary["failed"] == 0
    expected = {str(Path(n).with_suffix(".wav")) for n in names}
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME} == expected
    single = tmp_path / "ünï cödé.wav"
    one = json_summary(cli("convert", src / names[0], ref, "-o", single, *FAST, "--json"))
    assert one["outputs"] == [str(single)] and sf.info(single).frames == round(0.4 * 16_000)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    bad = src / os.fsdecode(b"caf\xe9 latin-1.wav")  # a Latin-1 name: not valid UTF-8
    sf.write(os.fsencode(bad), tone(0.4), 16_000, format="WAV")
    out = tmp_path / "out"
    summary = json_summary(cli("convert", src, REF_DIR, "-o", out, *FAST, "--json"))
    assert summary["converted"] == 1
    assert sf.info(os.fsencode(out / bad.name)).frames == round(0.4 * 16_000)


def test_output_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    src, out, elsewhere = tmp_path / "src", tmp_path / "out", tmp_path / "elsewhere"
    write_audio(src / "deep" / "a.wav", 0.3)
    elsewhere.mkdir()
    out.mkdir()
    (out / "deep").symlink_to(elsewhere, target_is_directory=True)  # out/deep/a.wav would land in elsewhere/
    with pytest.raises(OutputError, match="escape"):
        plan.plan(src, out, "ref")
    result = cli("convert", src, REF_DIR, "-o", out, *FAST)
    assert result.exit_code == OutputError.exit_code
    line = one_line(result)
    assert "a.wav" in line and "escape" in line
    assert list(elsewhere.iterdir()) == []


def test_output_inside_the_source_and_bad_output_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_audio(src / "a.wav", 0.3)
    result = cli("convert", src, REF_DIR, "-o", src, *FAST)  # the output folder is the source folder
    assert result.exit_code == UsageError.exit_code and "differ" in one_line(result)
    result = cli("convert", src, REF_DIR, "-o", tmp_path / "out.wav", *FAST)  # a folder into one file
    assert result.exit_code == UsageError.exit_code and "output folder" in one_line(result)
    result = cli("convert", src / "a.wav", REF_DIR, "-o", tmp_path / "out.mp3", *FAST)
    assert result.exit_code == UsageError.exit_code and ".wav" in one_line(result)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    result = cli("convert", src / "a.wav", REF_DIR, "-o", blocker / "o.wav", *FAST)
    check_clean(result)
    assert result.exit_code == OutputError.exit_code
    assert "o.wav" in result.stderr and "folder" in result.stderr
