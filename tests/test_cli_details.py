"""Rough edges of the command line (issue 10): one-line failures, failing fast and once, exit codes that agree
across commands, help that renders, progress that names the right file, one progress type, the architecture.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import torch

from knnvc import progress
from knnvc.batch import plan, runner
from knnvc.errors import EXIT_CODES, DeviceError, InputError, OutputError, UsageError
from knnvc.options import Models, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.progress import Job, Progress
from tests.conftest import REF_DIR, SOURCE_WAV, on_a_terminal
from tests.fault_tools import FAST, MODELS, bar_rows, cli, last_frame, no_model_loaded, write_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lines(text: str) -> list[str]:
    return text.splitlines()


# -- 2. a one-file failure is one line -------------------------------------------------------------------------


def test_one_file_failure_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all" * 100)
    result = cli("convert", bad, REF_DIR, "-o", tmp_path / "out.wav", *FAST)
    assert result.exit_code == InputError.exit_code
    assert lines(result.stderr) == [lines(result.stderr)[0]] and result.stderr.startswith("error: ")
    assert result.stderr.count("broken.wav") == 1, result.stderr  # the path is named once
    assert result.stdout == ""


def test_one_file_success_is_one_line(tmp_path: Path) -> None:
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "out.wav", *FAST)
    assert result.exit_code == 0
    assert len(lines(result.stderr)) <= 1 and "knnvc convert" not in result.stderr  # no summary table
    again = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "out.wav", *FAST)
    assert lines(again.stderr) == ["skipped out.wav: it exists; --overwrite replaces it"] or "skipped" in again.stderr


def test_folder_failure_names_the_file_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_audio(src / "good.wav", 0.5)
    (src / "bad.wav").write_bytes(b"junk" * 500)
    result = cli("convert", src, REF_DIR, "-o", tmp_path / "out", *FAST, "-q")
    assert result.exit_code == 1
    (line,) = lines(result.stderr)
    assert line.startswith("failed: ") and line.count("bad.wav") == 1, line


# -- 4. fail fast, once ----------------------------------------------------------------------------------------


def test_unreadable_reference_fails_before_models_load(tmp_path: Path, unloadable: list[str]) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(REF_DIR / "ref_01.wav", refs / "a.wav")
    (refs / "b.wav").write_bytes(b"\x00not audio" * 50)
    result = cli("convert", SOURCE_WAV, refs, "-o", tmp_path / "out.wav", *unloadable)
    assert result.exit_code == InputError.exit_code and "b.wav" in result.stderr
    assert len(lines(result.stderr)) == 1
    missing = cli("convert", SOURCE_WAV, tmp_path / "nobody", "-o", tmp_path / "out.wav", *unloadable)
    assert missing.exit_code == InputError.exit_code and "nobody" in missing.stderr
    build = cli("voice", "build", refs, "-o", tmp_path / "v.voice", *unloadable[:2], "--device", "cpu")
    assert build.exit_code == InputError.exit_code and "b.wav" in build.stderr
    for each in (result, missing, build):
        no_model_loaded(each)


def test_unwritable_output_folder_fails_before_models_load(tmp_path: Path, unloadable: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    src = tmp_path / "src"
    for i in range(3):
        write_audio(src / f"{i}.wav", 0.3)
    result = cli("convert", src, REF_DIR, "-o", blocker / "out", *unloadable)
    assert result.exit_code == OutputError.exit_code
    assert len(lines(result.stderr)) == 1 and "a-file" in result.stderr  # once, not once per file
    no_model_loaded(result)


def test_read_only_output_folder_fails_before_models_load(
    tmp_path: Path, unloadable: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated (root ignores chmod): every file created in the folder is refused."""
    import builtins
    import errno
    import os

    from knnvc import files

    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = builtins.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+") and Path(os.fsdecode(file)).parent == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", guarded_open, raising=False)
    src = tmp_path / "src"
    for i in range(3):
        write_audio(src / f"{i}.wav", 0.3)
    result = cli("convert", src, REF_DIR, "-o", locked, *unloadable)
    assert result.exit_code == OutputError.exit_code and "permission denied" in result.stderr
    assert len(lines(result.stderr)) == 1
    assert list(locked.iterdir()) == []
    no_model_loaded(result)


def test_k_above_a_saved_voice_fails_before_models_load(tmp_path: Path, voice: Path, unloadable: list[str]) -> None:
    frames = int(sf.info(str(REF_DIR / "ref_01.wav")).duration * 200)  # far more than the voice holds
    result = cli("convert", SOURCE_WAV, voice, "-o", tmp_path / "out.wav", *unloadable, "--k", frames)
    assert result.exit_code == UsageError.exit_code
    (line,) = lines(result.stderr)
    assert f"--k {frames}" in line and "frames" in line, line
    no_model_loaded(result)


def test_k_above_the_references_fails_once_before_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for i in range(3):
        write_audio(src / f"{i}.wav", 0.3)
    args = ["convert", src, REF_DIR / "ref_01.wav", "-o", tmp_path / "out", *FAST]
    result = cli(*args, "--k", 100_000)
    assert result.exit_code == UsageError.exit_code
    assert len(lines(result.stderr)) == 1 and "--k 100000" in result.stderr
    assert not list((tmp_path / "out").rglob("*.wav"))
    # On the terminal: the error comes before the progress bar over the files is ever drawn (no file was started);
    # with a k the references allow, the same command draws it.
    on_a_terminal(monkeypatch)
    shown = cli(*args, "--k", 100_000)
    assert shown.exit_code == UsageError.exit_code and "--k 100000" in shown.stderr
    assert "loading models" in shown.stderr and last_frame(shown.stderr, "converting") == [], shown.stderr
    converted = cli(*args, "--k", 4)
    assert converted.exit_code == 0 and last_frame(converted.stderr, "converting"), converted.stderr
    assert len(list((tmp_path / "out").rglob("*.wav"))) == 3


def test_bad_device_fails_before_models_load(tmp_path: Path, unloadable: list[str]) -> None:
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "out.wav", *unloadable, "--device", "nonsense:3")
    assert result.exit_code == UsageError.exit_code and "--device nonsense:3" in result.stderr
    no_model_loaded(result)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_missing_device_is_echoed(tmp_path: Path, unloadable: list[str]) -> None:
    for command in (
        ["convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "out.wav", *unloadable[:4]],
        ["voice", "build", REF_DIR, "-o", tmp_path / "v.voice", *unloadable[:2]],
        ["info"],
    ):
        result = cli(*command, "--device", "cuda:1")
        assert result.exit_code == DeviceError.exit_code
        assert lines(result.stderr) == [
            "error: --device cuda:1 was asked for, but torch sees no CUDA GPU; use --device cpu"
        ], result.stderr


# -- 10. exit codes agree across commands ----------------------------------------------------------------------


def test_a_missing_input_exits_3_in_every_command(tmp_path: Path, unloadable: list[str]) -> None:
    nope = tmp_path / "nope"
    features = tmp_path / "features"
    features.mkdir()
    wavlm, init = unloadable[:2], ["--init", unloadable[3]]
    commands = [
        ["convert", nope / "a.wav", REF_DIR, *unloadable],
        ["convert", SOURCE_WAV, nope / "ref.wav", *unloadable],
        ["convert", SOURCE_WAV, nope / "alice.voice", *unloadable],
        ["voice", "build", nope, "-o", tmp_path / "v.voice", *wavlm],
        ["voice", "build", REF_DIR, nope / "b.wav", "-o", tmp_path / "v.voice", *wavlm],
        ["voice", "info", nope / "alice.voice"],
        ["train", "prematch", nope, tmp_path / "out", *wavlm, "--device", "cpu"],
        ["train", "prematch", REF_DIR, tmp_path / "out", "--manifest", nope / "m.csv", *wavlm, "--device", "cpu"],
        ["train", "vocoder", nope, "--out", tmp_path / "run", *init, "--device", "cpu"],
        ["train", "vocoder", features, "--out", tmp_path / "run", "--config", nope / "c.json", *init,
         "--device", "cpu"],
    ]
    for command in commands:
        result = cli(*command)
        assert result.exit_code == InputError.exit_code == 3, (command, result.exit_code, result.stderr)
        (line,) = lines(result.stderr)
        assert line.startswith("error: ") and "nope" in line and "no such file or folder" in line, line
        no_model_loaded(result)


def test_typer_usage_errors_are_knnvc_usage_errors() -> None:
    for args in (["convert"], ["convert", "a", "b", "--k", "many"], ["voice", "build", "--bogus"], ["nope"]):
        result = cli(*args)
        assert result.exit_code == UsageError.exit_code == 2, args
        (line,) = lines(result.stderr)
        assert line.startswith("error: ") and "--help" in line, line
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 130}


# -- 11. help and details ----------------------------------------------------------------------------------------

COMMANDS = [["convert"], ["voice", "build"], ["voice", "info"], ["info"], ["download"], ["train", "prematch"],
            ["train", "vocoder"], ["serve"], ["stream"], ["live"], ["eval"], ["eval-librispeech"], ["voice"],
            ["train"], []]  # fmt: skip


def test_version() -> None:
    from knnvc import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"knnvc {__version__}\n"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "knnvc")
def test_help_renders_plainly(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert not re.search(r"<\w[\w\[\] ]*>", text), text  # no <bool>, <int>, <path>, <list[Path]>
    assert not re.search(r"\{\w+\}", text), text  # usage reads SOURCE, not {source}
    usage = re.sub(r"^Usage: \S+", "Usage: knnvc", text.splitlines()[0])  # CliRunner calls the program "root"
    assert usage.startswith("Usage: knnvc") and usage == usage.rstrip()
    if command == ["convert"]:
        assert usage == "Usage: knnvc convert [OPTIONS] SOURCE REFERENCE"
        flat = " ".join(text.split())
        assert "Output rate in Hz (soxr). [default: the vocoder's, 16000]" in flat  # brackets survive
        assert "--k INTEGER" in text and "--trim / --no-trim" in text
    if command == ["voice", "build"]:
        assert usage == "Usage: knnvc voice build [OPTIONS] REFERENCES..."


def test_no_blank_line_before_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for command in (
        ["train", "prematch", tmp_path / "empty", tmp_path / "out", "--device", "cpu"],
        ["train", "vocoder", tmp_path / "empty", "--out", tmp_path / "run", "--device", "cpu"],
        ["convert", tmp_path / "empty", REF_DIR, *FAST],
    ):
        result = cli(*command)
        assert result.exit_code != 0
        assert result.stderr.startswith("error: ") and "\n\n" not in result.stderr, repr(result.stderr)


def _plain(line: str) -> str:
    """A source line without `knnvc ...` commands quoted in backticks (a whole command is advice for both
    audiences) and without command fragments being assembled (a string that starts with " --")."""
    return re.sub(r"`[^`]*`?", "", re.sub(r"""f?["'] --[^"']*["']""", "", line))


def test_library_errors_speak_python() -> None:
    """Python callers read keyword arguments; only the CLI translates them to its flags."""
    from knnvc.errors import KnnvcError
    from knnvc.runtime.devices import resolve_device, resolve_precision

    failures: list[str] = []
    for call in (lambda: resolve_device("nonsense:1"), lambda: resolve_precision("fp16", torch.device("cpu"))):
        with pytest.raises(KnnvcError) as info:
            call()
        failures.append(str(info.value))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError) as info:
            resolve_device("cuda:1")
        failures.append(str(info.value))
        assert "device='cuda:1'" in failures[-1]
    assert all("--" not in message for message in failures), failures
    root = Path(__file__).parents[1]
    flags = re.compile(r"""^[^#]*["'](?:[^"']*\s)?--[a-z]""")  # a string naming a flag, outside comments
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for package in ("knnvc", "vocoder")
        for path in (root / package).rglob("*.py")
        if not {"cli", "web", "__main__.py"} & set(path.relative_to(root).parts)  # front ends speak flags
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if flags.search(_plain(line)) and '"""' not in line and "``" not in line and "notes.append(" not in line
    ]
    assert offenders == [], offenders


# -- 12. progress ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("terminal")
def test_the_bar_names_the_files_being_converted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A group of files is vocoded together while the bar names the group (its first file, and how many more)."""
    vc = KnnVC.from_pretrained(Models(MODELS[1], MODELS[3], PipelineSettings("cpu", batch_size=3)))  # cached
    voice = vc.build_voice(REF_DIR, trim=False)
    src = tmp_path / "src"
    for name, seconds in {"a.wav": 0.4, "b.wav": 0.8, "c.wav": 1.2}.items():
        write_audio(src / name, seconds)
    jobs = plan.plan(src, tmp_path / "out", voice.name)
    events: list[Progress] = []
    assert runner.run(vc, jobs, voice, progress=events.append).ok  # as `knnvc convert SRC REF --batch-size 3`
    stages = [e.stage for e in events]
    vocoding = stages.index("vocode")
    # the three files start, their windows are encoded and vocoded as one group, then the three are written
    assert stages[:vocoding] == ["start"] * 3 + ["encode"] * (vocoding - 3) and "vocode" not in stages[-3:]
    assert stages[-3:] == ["done"] * 3 and all(e.job is None for e in events[3:-3])
    while_vocoding = bar_rows(capsys, jobs, [(0.0, e) for e in events[: vocoding + 1]])
    assert while_vocoding[0].startswith("converting a.wav (+2) "), while_vocoding
    after_the_first = bar_rows(capsys, jobs, [(0.0, e) for e in events[:-2]])
    assert after_the_first[0].startswith("converting b.wav (+1) ") and "1/3 files" in after_the_first[0]


@pytest.mark.usefixtures("terminal")
def test_eta_holds_for_mixed_lengths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Files of 1 s to 20 s, converted in groups whose files are written together (a burst of 'done' events).

    Compute takes 0.5 s per audio second; after each group the ETA the bar shows must be close to the truth.
    """
    lengths = [1.0, 20.0, 2.0, 1.0, 8.0, 1.0, 3.0, 12.0]
    jobs = [Job(write_audio(tmp_path / f"{i}.wav", s, 8000), tmp_path / f"out{i}.wav") for i, s in enumerate(lengths)]
    steps: list[tuple[float, Progress]] = []
    now, done = 0.0, 0.0
    for group in (range(0, 3), range(3, 6), range(6, 8)):
        for i in group:
            steps.append((now, Progress("start", i, len(jobs), jobs[i])))
            now += 0.5 * lengths[i]  # its turn: matched and vocoded
        for i in group:  # written together after the group
            steps.append((now, Progress("done", i, len(jobs), jobs[i], audio_seconds=lengths[i])))
        done += sum(lengths[i] for i in group)
        truth = 0.5 * (sum(lengths) - done)
        row = bar_rows(capsys, jobs, steps)[0]
        eta = re.search(r"(\d+):(\d\d):(\d\d)$", row)
        assert eta is not None, row
        h, m, s = (int(x) for x in eta.groups())
        assert abs(h * 3600 + m * 60 + s - truth) <= 1.0, (row, truth)


def test_one_progress_type() -> None:
    """Batch, windows and downloads report the same ``knnvc.progress.Progress`` events: no other type is defined,
    and outside the command line (which draws rich's bars) every module that names a Progress imports this one."""
    sources = Path(__file__).parents[1] / "knnvc"
    defined = [
        str(path.relative_to(sources))
        for path in sources.rglob("*.py")
        if re.search(r"^(class Progress\b|\s*Progress\s*=)", path.read_text(), re.M)
    ]
    assert defined == ["progress.py"], defined
    imported = re.compile(r"^\s*from\s+(\S+)\s+import\s+[^#\n]*\bProgress\b(?!\s+as\b)", re.M)
    elsewhere = [
        f"{path.relative_to(sources)}: {module}"
        for path in sources.rglob("*.py")
        if "cli" not in path.relative_to(sources).parts
        for module in imported.findall(path.read_text())
        if module != "knnvc.progress"
    ]
    assert elsewhere == [], elsewhere
    for events_from in ("knnvc/pipeline.py", "knnvc/weights/hub.py", "knnvc/batch/runner.py"):  # windows, downloads
        assert re.search(r"from knnvc\.progress import [^\n]*\bProgress\b", (sources.parent / events_from).read_text())


def test_window_events_reach_the_batch_progress(tmp_path: Path) -> None:
    """A long file's windows arrive as Progress events carrying its job."""
    vc = KnnVC.from_pretrained(Models(MODELS[1], MODELS[3], PipelineSettings("cpu", batch_size=2)))  # cached
    vc.window, vc.context = 50, 10  # 1 s windows: a 3 s file has several
    voice = vc.build_voice(REF_DIR, trim=False)
    job = progress.Job(write_audio(tmp_path / "long.wav", 3.0), tmp_path / "out.wav")
    events: list[Progress] = []
    report = runner.run(vc, [job], voice, progress=events.append)
    assert report.ok
    stages = [e.stage for e in events]
    assert stages[0] == "start" and stages[-1] == "done" and "encode" in stages
    assert all(isinstance(e, Progress) and e.job == job for e in events)


# -- the architecture ------------------------------------------------------------------------------------------


def test_import_contracts_hold() -> None:
    """Layers, a standalone vocoder and no import cycles (pyproject.toml [tool.importlinter])."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    root = Path(__file__).parents[1]
    proc = subprocess.run([lint], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout
