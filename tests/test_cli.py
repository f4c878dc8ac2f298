"""Every ``knnvc`` command and option, in process (typer's CliRunner) and as real subprocesses, on tiny models.

The tiny fixture WavLM and vocoder load in a second; ``knnvc.weights.loaded`` caches them, so in-process invocations
after the first cost only their conversions. The subprocess tests run concurrently to keep the suite fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from typer.testing import CliRunner, Result

from knnvc.audio import loudness
from knnvc.batch.manifest import MANIFEST_NAME
from knnvc.cli import app
from knnvc.errors import AudioError, DeviceError, UsageError, VoiceError, WeightsError
from knnvc.progress import Job, Progress
from knnvc.voice import Voice
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM, help_probe
from tests.fault_tools import bar_rows

MODELS = ["--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER), "--device", "cpu"]
FAST = [*MODELS, "--no-trim"]
SOURCE_SECONDS = sf.info(str(SOURCE_WAV)).duration
NO_GPU = not torch.cuda.is_available()


def cli(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run ``knnvc ARGS`` in process; stdout and stderr are captured apart."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"KNNVC_OFFLINE": "1", **(env or {})})


def ok(*args: object) -> Result:
    result = cli(*args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result


def convert_json(*args: object) -> dict[str, Any]:
    """``knnvc convert ARGS --json`` (fast settings); stdout must be exactly one JSON document."""
    summary: dict[str, Any] = json.loads(ok("convert", *args, *FAST, "--json").stdout)
    return summary


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def speech(rate: int) -> np.ndarray:
    wav, sr = sf.read(SOURCE_WAV, dtype="float32")
    return np.asarray(soxr.resample(wav, sr, rate), dtype=np.float32)


def make_inputs(root: Path) -> dict[str, Path]:
    """The source in several formats, nested: stereo 44.1 kHz FLAC, MP3, 24-bit 48 kHz WAV, 16 kHz WAV."""
    paths = {
        "wav16": root / "a.wav",
        "flac_stereo": root / "a.flac",  # same stem as a.wav: its output keeps the extension (a.flac.wav)
        "mp3": root / "deep" / "er" / "b.mp3",
        "wav24": root / "deep" / "c.Wav",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE_WAV, paths["wav16"])
    left = speech(44_100)
    sf.write(paths["flac_stereo"], np.stack([left, 0.5 * left], axis=1), 44_100, subtype="PCM_16")
    sf.write(paths["mp3"], speech(22_050), 22_050, format="MP3")
    sf.write(paths["wav24"], speech(48_000), 48_000, subtype="PCM_24")
    (root / "notes.txt").write_text("not audio")
    return paths


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_inputs(tmp_path_factory.mktemp("src"))


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Record (and refuse) every attempt to open a connection or resolve a name."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], "the command tried to reach the network"


# -- help and import cost -------------------------------------------------------------------------------------


def test_help_imports_no_torch() -> None:
    """Help is printed without importing torch, transformers or the pipeline (how fast that makes it is a
    benchmark figure: ``python -m bench.startup``)."""
    script = Path(sys.executable).parent / "knnvc"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "knnvc"]
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "convert" in proc.stdout, proc.stderr
    helps = [["--help"], ["convert", "--help"], ["voice", "build", "--help"], ["voice", "info", "--help"],
             ["info", "--help"], ["download", "--help"], ["train", "--help"], ["train", "prematch", "--help"],
             ["train", "vocoder", "--help"]]  # fmt: skip
    heavy = ("torch", "transformers", "numpy", "soundfile", "knnvc.pipeline", "knnvc.nn.encoder")
    proc = help_probe(helps, heavy, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"


def test_every_command_explains_itself() -> None:
    top = ok("--help").stdout
    for command in ("convert", "voice", "info", "download", "train"):
        assert command in top
    options = ok("convert", "--help").stdout
    for option in ("--output", "--wavlm", "--vocoder", "--device", "--precision", "--k", "--trim", "--no-trim",
                   "--loudness", "--sample-rate", "--format", "--batch-size", "--overwrite", "--offline", "--json",
                   "--quiet", "--verbose"):  # fmt: skip
        assert option in options, option
    assert "--output" in ok("voice", "build", "--help").stdout
    assert "--json" in ok("voice", "info", "--help").stdout
    assert "prematch" in ok("train", "--help").stdout and "vocoder" in ok("train", "--help").stdout


# -- bad values: one line, the error's exit code, a traceback only with --verbose -------------------------------


BAD_VALUES = [
    (["--precision", "fp16"], UsageError, "needs a GPU"),
    (["--loudness", "abc"], UsageError, "--loudness"),
    (["--k", "0"], UsageError, "k must be at least 1"),
    (["-o", "{tmp}/out.mp3"], UsageError, ".wav, .flac, .ogg"),
    (["--sample-rate", "100"], UsageError, "sample rate"),
    (["--batch-size", "0"], UsageError, "--batch-size"),
    (["--format", "mp3"], UsageError, "output format"),
    (["--device", "tpu9"], UsageError, "--device tpu9 is not a device"),
    (["--precision", "fp8"], UsageError, "--precision fp8 is not a precision"),
]


@pytest.mark.parametrize(("extra", "error", "fragment"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_values_give_one_line(tmp_path: Path, extra: list[str], error: type, fragment: str) -> None:
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "x.wav", *MODELS, *extra)
    assert result.exit_code == error.exit_code
    line = one_line(result)
    assert line.startswith("error:") and fragment in line, line
    assert result.stdout == ""
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU message")
def test_cuda_without_gpu(tmp_path: Path) -> None:
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "x.wav", *MODELS, "--device", "cuda")
    assert result.exit_code == DeviceError.exit_code
    assert "no CUDA GPU" in one_line(result)
    assert cli("info", "--device", "cuda").exit_code == DeviceError.exit_code


def test_missing_inputs(tmp_path: Path) -> None:
    result = cli("convert", tmp_path / "nope.wav", REF_DIR, *MODELS)
    assert result.exit_code == AudioError.exit_code and "no such file" in one_line(result)
    result = cli("convert", SOURCE_WAV, tmp_path / "nope.voice", *MODELS)
    assert result.exit_code == AudioError.exit_code and "no such file" in one_line(result)  # 3: a missing input
    result = cli("voice", "build", REF_DIR, "-o", tmp_path / "v.safetensors", *MODELS[:2])
    assert result.exit_code == UsageError.exit_code and ".voice" in one_line(result)


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = cli("convert", SOURCE_WAV, REF_DIR, *MODELS, "--loudness", "abc", "--verbose")
    assert result.exit_code == UsageError.exit_code
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error:")


def test_offline_registry_weights_not_cached(tmp_path: Path, no_network: list[object]) -> None:
    env = {"KNNVC_CACHE": str(tmp_path / "knnvc"), "HF_HOME": str(tmp_path / "hf"), "KNNVC_OFFLINE": ""}
    base = ["convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "x.wav", "--device", "cpu", "--offline"]
    result = cli(*base, env=env)  # microsoft/wavlm-large
    assert result.exit_code == WeightsError.exit_code
    assert "offline" in one_line(result) and "wavlm-large" in result.stderr
    result = cli(*base, "--wavlm", TINY_WAVLM, "--vocoder", "prematched", env=env)
    assert result.exit_code == WeightsError.exit_code
    assert "prematched weights are not cached" in one_line(result)


NO_LOCAL_DEFAULTS: dict[str, str] = {"KNNVC_WAVLM": "", "KNNVC_VOCODER": ""}


def test_no_weights_offline_names_every_way_out(tmp_path: Path, no_network: list[object]) -> None:
    """Weights that are not cached while offline: the error names the README's three fixes, in the CLI's words."""
    env = {"KNNVC_CACHE": str(tmp_path / "knnvc"), "HF_HOME": str(tmp_path / "hf"), "KNNVC_OFFLINE": "1",
           **NO_LOCAL_DEFAULTS}  # fmt: skip
    base = ["convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "x.wav", "--device", "cpu"]
    wavlm = cli(*base, env=env)  # the default WavLM, microsoft/wavlm-large
    assert wavlm.exit_code == WeightsError.exit_code
    line = one_line(wavlm)
    assert "`knnvc download microsoft/wavlm-large`" in line, line
    assert "KNNVC_WAVLM" in line and "--wavlm PATH" in line, line
    vocoder = cli(*base, "--wavlm", TINY_WAVLM, env=env)  # the default vocoder, prematched
    assert vocoder.exit_code == WeightsError.exit_code
    line = one_line(vocoder)
    assert "`knnvc download prematched`" in line, line
    assert "KNNVC_VOCODER" in line and "--vocoder PATH" in line, line
    assert not (tmp_path / "x.wav").exists()


def test_a_download_that_cannot_happen_names_the_local_ways_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    """Online, but the weights cannot be fetched: set the variable or pass a path (not "run knnvc download",
    which is what just failed)."""
    import huggingface_hub

    from knnvc.weights import hub

    def unreachable(repo_id: str, **kwargs: object) -> str:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.setattr(hub, "RETRY_WAITS_S", ())
    env = {"KNNVC_CACHE": str(tmp_path / "knnvc"), "HF_HOME": str(tmp_path / "hf"), "KNNVC_OFFLINE": "",
           "HF_HUB_OFFLINE": "", **NO_LOCAL_DEFAULTS}  # fmt: skip
    base = ["convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "x.wav", "--device", "cpu"]
    wavlm = cli(*base, env=env)
    assert wavlm.exit_code == WeightsError.exit_code
    line = one_line(wavlm)
    assert "KNNVC_WAVLM" in line and "--wavlm PATH" in line and "knnvc download" not in line, line
    no_network.clear()  # the vocoder's download is refused by the test's socket guard: that is the point here
    vocoder = cli(*base, "--wavlm", TINY_WAVLM, env=env)
    assert vocoder.exit_code == WeightsError.exit_code
    line = one_line(vocoder)
    assert "KNNVC_VOCODER" in line and "--vocoder PATH" in line and "knnvc download" not in line, line
    no_network.clear()


# -- conversions ------------------------------------------------------------------------------------------------


def test_single_file_default_name_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = ok("convert", SOURCE_WAV, REF_DIR, *FAST)
    out = tmp_path / "source_ref.wav"
    wav, rate = sf.read(out, dtype="float32")
    assert rate == 16_000 and len(wav) == round(SOURCE_SECONDS * 16_000)
    assert result.stderr.startswith("source_ref.wav: 3.9 s of audio in ") and len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    again = ok("convert", SOURCE_WAV, REF_DIR, *FAST, "--json")  # exists: skipped without loading anything
    assert json.loads(again.stdout)["skipped"] == 1


def test_options_reach_the_conversion(tmp_path: Path) -> None:
    def run(name: str, *extra: object) -> np.ndarray:
        ok("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / f"{name}.flac", *FAST, *extra, "--quiet")
        return np.asarray(sf.read(tmp_path / f"{name}.flac", dtype="float32")[0])

    base = run("base")
    assert np.array_equal(run("k4", "--k", "4", "--precision", "auto", "--offline"), base)
    # Batching pads the references; each one's features match encoding it alone to float rounding.
    assert np.allclose(run("batch1", "--batch-size", "1"), base, atol=1e-4)
    assert not np.array_equal(run("k1", "--k", "1"), base)
    assert loudness.loudness_lufs(run("quiet", "--loudness", "-30")) == pytest.approx(-30, abs=0.1)
    # -16 LUFS by default, even for the tiny vocoder's peaky output: DC removed, peaks held by the limiter.
    assert np.abs(base).max() <= loudness.PEAK_CEILING + 1e-4
    assert loudness.loudness_lufs(base) == pytest.approx(-16, abs=0.5)
    raw = run("raw", "--loudness", "none")
    assert not np.allclose(raw, base) and np.abs(raw).max() <= 1.0
    ok("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "auto.flac", *FAST[:4], "--device", "auto", "-q")


def test_sample_rate_and_formats(tmp_path: Path) -> None:
    summary = convert_json(SOURCE_WAV, REF_DIR, "-o", tmp_path / "out.ogg", "--sample-rate", "24000")
    assert summary["converted"] == 1 and summary["outputs"] == [str(tmp_path / "out.ogg")]
    info = sf.info(str(tmp_path / "out.ogg"))
    assert (info.format, info.samplerate) == ("OGG", 24_000)
    assert info.frames == pytest.approx(SOURCE_SECONDS * 24_000, abs=2)
    convert_json(SOURCE_WAV, REF_DIR, "-o", tmp_path / "out.flac")
    assert sf.info(str(tmp_path / "out.flac")).format == "FLAC"
    (tmp_path / "into").mkdir()
    convert_json(SOURCE_WAV, REF_DIR, "-o", tmp_path / "into", "--format", "flac")
    assert (tmp_path / "into" / "source_ref.flac").is_file()


def test_folder_is_mirrored_and_resumes(tmp_path: Path, inputs: dict[str, Path]) -> None:
    src, out = inputs["wav16"].parent, tmp_path / "out"
    summary = convert_json(src, REF_DIR, "-o", out)
    expected = {"a.wav", "a.flac.wav", "deep/er/b.wav", "deep/c.wav"}
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    assert written == expected and summary["converted"] == 4 and summary["failed"] == 0
    for rel in expected:  # every input format converted to a full-length 16 kHz file
        wav, rate = sf.read(out / rel, dtype="float32")
        assert rate == 16_000 and abs(len(wav) / rate - SOURCE_SECONDS) < 0.1 and np.abs(wav).max() > 0.01
    stamps = {rel: (out / rel).stat().st_mtime_ns for rel in expected}
    (out / "deep" / "c.wav").unlink()
    summary = convert_json(src, REF_DIR, "-o", out)
    assert (summary["converted"], summary["skipped"]) == (1, 3)
    assert summary["outputs"] == [str(out / "deep" / "c.wav")]
    assert all((out / rel).stat().st_mtime_ns == stamps[rel] for rel in expected - {"deep/c.wav"})
    summary = convert_json(src, REF_DIR, "-o", out, "--overwrite")
    assert (summary["converted"], summary["skipped"]) == (4, 0)


def test_folder_default_output_and_format(
    tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    src = inputs["wav16"].parent
    convert_json(src, REF_DIR, "--format", "ogg")
    root = tmp_path / f"{src.name}_ref"
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    assert written == {"a.wav.ogg", "a.flac.ogg", "deep/er/b.ogg", "deep/c.ogg"}  # a.wav and a.flac clash


def test_failures_are_listed_and_set_the_status(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(SOURCE_WAV, src / "good.wav")
    (src / "sub" / "bad.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    result = cli("convert", src, REF_DIR, "-o", tmp_path / "out", *FAST, "--quiet")
    assert result.exit_code == 1
    line = one_line(result)
    assert line.startswith("failed:") and "bad.wav" in line and "cannot decode" in line
    assert (tmp_path / "out" / "good.wav").is_file() and not (tmp_path / "out" / "sub" / "bad.wav").exists()
    verbose = cli("convert", src, REF_DIR, "-o", tmp_path / "out", *FAST, "--verbose")
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr
    assert [ln for ln in verbose.stderr.splitlines() if ln.startswith("failed:")] == [line]
    summary = json.loads(cli("convert", src, REF_DIR, "-o", tmp_path / "out", *FAST, "--json").stdout)
    assert summary["failed"] == 1 and "bad.wav" in summary["failures"][0]["file"]
    single = cli("convert", src / "sub" / "bad.wav", REF_DIR, "-o", tmp_path / "one.wav", *FAST, "-q")
    assert single.exit_code == AudioError.exit_code and "bad.wav" in one_line(single)


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    result = ok("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "q.wav", *FAST, "--quiet")
    assert (result.stdout, result.stderr) == ("", "")
    result = ok("voice", "build", REF_DIR, "-o", tmp_path / "q.voice", *MODELS[:2], "--device", "cpu", "-q")
    assert (result.stdout, result.stderr) == ("", "")


# -- voices -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("voice") / "ref.voice"
    result = ok("voice", "build", REF_DIR, "-o", path, "--wavlm", TINY_WAVLM, "--device", "cpu")
    assert "wrote" in result.stderr
    return path


def test_voice_info(saved_voice: Path) -> None:
    meta = json.loads(ok("voice", "info", saved_voice, "--json").stdout)
    assert meta["encoder"] == str(TINY_WAVLM) and meta["layer"] == 6 and meta["name"] == "ref"
    assert meta["frames"] > 0 and meta["speech_seconds"] == pytest.approx(meta["frames"] / 50)
    assert meta["created"] and len(meta["encoder_fingerprint"]) >= 16
    refs = sorted(REF_DIR.glob("*.wav"))
    assert [s["path"] for s in meta["sources"]] == [str(p) for p in refs]
    assert [s["sha256"] for s in meta["sources"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in refs]
    table = ok("voice", "info", saved_voice).stdout
    for key in ("encoder_fingerprint", "speech_seconds", "ref_01.wav", "created"):
        assert key in table


def test_saved_voice_converts_like_its_references(tmp_path: Path, saved_voice: Path) -> None:
    ok("convert", SOURCE_WAV, saved_voice, "-o", tmp_path / "voice.wav", *MODELS, "-q")  # trim: the default
    ok("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "folder.wav", *MODELS, "-q")
    a, b = (sf.read(tmp_path / n, dtype="float32")[0] for n in ("voice.wav", "folder.wav"))
    assert np.array_equal(a, b)
    ok("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "untrimmed.wav", *FAST, "-q")
    assert not np.array_equal(a, sf.read(tmp_path / "untrimmed.wav", dtype="float32")[0])


def test_voice_from_other_encoder_is_refused(tmp_path: Path, saved_voice: Path) -> None:
    ckpt = torch.load(TINY_WAVLM, map_location="cpu", weights_only=True)
    ckpt["model"]["feature_extractor.conv_layers.0.0.weight"] += 1e-3
    other = tmp_path / "WavLM-other.pt"
    torch.save(ckpt, other)
    ok("voice", "build", REF_DIR, "-o", tmp_path / "other.voice", "--wavlm", other, "--device", "cpu", "--no-trim")
    result = cli("convert", SOURCE_WAV, tmp_path / "other.voice", "-o", tmp_path / "x.wav", *MODELS)
    assert result.exit_code == VoiceError.exit_code
    line = one_line(result)
    assert "was built with encoder" in line and str(other) in line and "rebuild" in line
    assert not (tmp_path / "x.wav").exists()
    tampered = replace(Voice.load(saved_voice), encoder_fingerprint="0" * 16)
    tampered.save(tmp_path / "tampered.voice")
    result = cli("convert", SOURCE_WAV, tmp_path / "tampered.voice", "-o", tmp_path / "y.wav", *MODELS)
    assert result.exit_code == VoiceError.exit_code and "weights 0000000000000000" in one_line(result)


# -- info and download ------------------------------------------------------------------------------------------


def test_info(tmp_path: Path, no_network: list[object]) -> None:
    env = {"KNNVC_CACHE": str(tmp_path / "knnvc"), "HF_HOME": str(tmp_path / "hf")}
    data = json.loads(cli("info", "--json", "--device", "cpu", env=env).stdout)
    assert data["device"] == "cpu" and data["knnvc_cache"] == str(tmp_path / "knnvc")
    assert {row["name"] for row in data["weights"]} >= {"microsoft/wavlm-large", "prematched", "regular"}
    assert not any(row["cached"] for row in data["weights"])
    table = cli("info", env=env)
    assert table.exit_code == 0 and "torch" in table.stdout and "prematched" in table.stdout


def test_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: list[object]) -> None:
    from knnvc.weights import hub

    def fake(names: list[str] | None = None, progress: Any = None) -> dict[str, Path]:
        entries = [hub.get_entry(n) for n in names] if names else list(hub.REGISTRY.values())
        for entry in entries:
            progress(Progress("download", 1 << 20, 2 << 20, name=entry.filename or entry.name))
        return {e.name: tmp_path / e.name for e in entries}

    monkeypatch.setattr(hub, "download_all", fake)
    result = ok("download", "prematched")
    assert result.stdout.strip() == f"prematched: {tmp_path / 'prematched'}"
    assert len(ok("download").stdout.strip().splitlines()) == len(hub.REGISTRY)
    monkeypatch.undo()
    result = cli("download", "no-such-weights")
    assert result.exit_code == WeightsError.exit_code and "unknown weights" in one_line(result)


# -- real subprocesses ------------------------------------------------------------------------------------------


@pytest.mark.slow  # four interpreters that each import torch: ~7 s on 2 cores
def test_subprocesses(tmp_path: Path, saved_voice: Path) -> None:
    """The main paths as a user runs them, `python -m knnvc ...`, several at once (the tiny models load fast)."""
    make_inputs(tmp_path / "src")
    env = {**os.environ, "KNNVC_OFFLINE": "1", "OMP_NUM_THREADS": "1", "KNNVC_CACHE": str(tmp_path / "cache")}
    knnvc = [sys.executable, "-m", "knnvc"]
    commands = {
        "folder": [*knnvc, "convert", tmp_path / "src", REF_DIR, "-o", tmp_path / "out", *FAST, "--json"],
        "voice": [*knnvc, "voice", "build", REF_DIR, "-o", tmp_path / "v.voice", *MODELS[:2], "--device", "cpu"],
        "voice info": [*knnvc, "voice", "info", saved_voice, "--json"],
        "bad": [*knnvc, "convert", SOURCE_WAV, REF_DIR, "--loudness", "abc"],
    }
    pipe = subprocess.PIPE
    procs = {n: subprocess.Popen([str(c) for c in cmd], stdout=pipe, stderr=pipe, text=True, env=env)
             for n, cmd in commands.items()}  # fmt: skip
    done = {name: (*p.communicate(timeout=300), p.returncode) for name, p in procs.items()}
    for name in ("folder", "voice", "voice info"):
        assert done[name][2] == 0, (name, done[name][1])
    summary = json.loads(done["folder"][0])  # stdout is the JSON document and nothing else
    assert (summary["files"], summary["converted"]) == (4, 4) and (tmp_path / "out" / "deep" / "er" / "b.wav").is_file()
    assert "wrote" in done["voice"][1]
    built_there, built_here = Voice.load(tmp_path / "v.voice").frames, Voice.load(saved_voice).frames
    assert built_there.shape == built_here.shape and torch.allclose(built_there, built_here, rtol=0, atol=1e-4)
    assert json.loads(done["voice info"][0])["name"] == "ref"
    stdout, stderr, code = done["bad"]
    assert code == UsageError.exit_code and stdout == ""
    assert stderr.splitlines() == ["error: --loudness takes a LUFS value such as -16, or 'none'; got 'abc'"]


@pytest.mark.usefixtures("terminal")
def test_progress_view_tracks_files_and_windows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the bar shows on a terminal: the file being converted, a long file's windows on a row of their own
    (gone once it is written), files done, and the time left by audio seconds; with show=False, nothing."""
    from knnvc.cli.view import BatchView

    jobs = [Job(SOURCE_WAV, tmp_path / "a.wav"), Job(REF_DIR / "ref_01.wav", tmp_path / "b.wav")]
    other_seconds = sf.info(str(REF_DIR / "ref_01.wav")).duration

    def shown(*steps: tuple[float, Progress]) -> list[str]:
        return bar_rows(capsys, jobs, list(steps))

    start, encode = (0.0, Progress("start", 0, 2, jobs[0])), (4.0, Progress("encode", 1, 3, jobs[0]))
    top, windows = shown(start, encode)  # a long file: its windows get their own row
    assert top.startswith("converting source.wav ") and "0/2 files" in top
    assert windows.startswith("encode windows") and " 1/3 " in windows, windows
    # written after 10 s: its windows' row is gone, and the other file, by its audio seconds, takes other/source
    # times as long
    done = (10.0, Progress("done", 0, 2, jobs[0], seconds=10.0, audio_seconds=SOURCE_SECONDS))
    (top,) = shown(start, encode, done)
    assert "1/2 files" in top
    h, m, s = (int(x) for x in top.split()[-1].split(":"))
    assert abs(h * 3600 + m * 60 + s - 10.0 * other_seconds / SOURCE_SECONDS) <= 1.0, top
    capsys.readouterr()
    with BatchView(jobs, show=False, verbose=False) as quiet:
        for event in (start[1], Progress("vocode", 1, 2, jobs[0]), done[1]):
            quiet.on_event(event)
    assert capsys.readouterr() == ("", "")
