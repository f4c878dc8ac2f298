"""MKL-VC and LinearVC through the command line: ``knnvc convert --method mkl``, ``knnvc pair build``, ``knnvc pair
info``, a ``.pair`` as the target, folder batches and their settings record, and the one-line errors.

The four cases of ``fixtures/methods_outputs.pt`` (each method's authors' own code on the tiny models, references
untrimmed, no loudness normalisation) are reproduced through the CLI: W within 1e-4 relative (lasso: 1e-3), the
audio within 1e-4 (24-bit FLAC files: and their quantisation). The API's side is in ``tests/test_methods.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from knnvc.batch.manifest import MANIFEST_NAME, read_tag
from knnvc.errors import OutputError, UsageError, VoiceError
from knnvc.options import ConvertOptions, Models
from knnvc.pipeline import KnnVC
from knnvc.voice import Pair
from tests.conftest import FIXTURES, REF_DIR, SOURCE_WAV, SPEECH, TINY_VOCODER, TINY_WAVLM
from tests.fault_tools import cli, json_summary, no_model_loaded, one_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest

PAIR_SOURCE = SPEECH / "pair" / "source"
PAIR_TARGET = SPEECH / "pair" / "target"
ENCODER = ["--wavlm", str(TINY_WAVLM), "--device", "cpu"]  # what `pair build` loads (no vocoder)
EXACT = [*ENCODER, "--vocoder", str(TINY_VOCODER), "--no-trim", "--loudness", "none"]  # as the fixtures were made
FLAC_STEP = 2.0**-23  # 24-bit files
AUDIO_TOLERANCE = 1e-4 + FLAC_STEP
LINEAR_CASES = {"linear_nonparallel": ([PAIR_SOURCE, REF_DIR], 1e-4), "linear_parallel": ([PAIR_SOURCE, PAIR_TARGET,
                "--parallel"], 1e-3)}  # fmt: skip


@pytest.fixture(scope="module")
def methods_outputs() -> dict[str, Any]:
    out: dict[str, Any] = torch.load(FIXTURES / "methods_outputs.pt", weights_only=True)
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two LinearVC fixture pairs, each built once by ``knnvc pair build`` (untrimmed, as the fixtures)."""
    folder = tmp_path_factory.mktemp("pairs")
    built = {}
    for case, (args, _) in LINEAR_CASES.items():
        out = folder / f"{case}.pair"
        result = cli("pair", "build", *args, "-o", out, *ENCODER, "--no-trim")
        assert result.exit_code == 0, result.output
        assert result.stderr.startswith("wrote") and str(out) in result.stderr
        built[case] = out
    return built


@pytest.fixture(scope="module")
def vc() -> KnnVC:
    return KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")


def relative(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found.double() - expected.double()).norm() / expected.double().norm())


def check_wav(path: Path, expected: torch.Tensor) -> None:
    wav = sf.read(path, dtype="float32")[0]
    assert len(wav) == len(sf.read(SOURCE_WAV)[0])  # as long as the source, as every knnvc conversion
    assert np.abs(wav[: expected.numel()] - expected.numpy()).max() <= AUDIO_TOLERANCE


# -- the authors' answers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["mkl_b2", "mkl_b16"])
def test_mkl_fixture_cases_through_the_cli(case: str, methods_outputs: dict, tmp_path: Path) -> None:
    expected = methods_outputs[case]
    out = tmp_path / "out.flac"
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", out, *EXACT, "--method", "mkl", "--mkl-block",
                 expected["block"])  # fmt: skip
    assert result.exit_code == 0, result.output
    check_wav(out, expected["wav"])


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_fixture_cases_through_pair_build_and_convert(
    case: str, methods_outputs: dict, pairs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, tolerance = methods_outputs[case], LINEAR_CASES[case][1]
    pair = Pair.load(pairs[case])
    assert relative(pair.matrix, expected["W"]) <= tolerance
    assert [Path(s.path).name for s in pair.sources] == expected["source_files"]
    assert [Path(s.path).name for s in pair.targets] == expected["target_files"]
    assert (pair.name, pair.parallel, pair.trim) == (case, case.endswith("_parallel"), False)
    monkeypatch.chdir(tmp_path)  # no -o: the output is named after the pair, as after a voice
    result = cli("convert", SOURCE_WAV, pairs[case], *EXACT, "--format", "flac")
    assert result.exit_code == 0, result.output
    check_wav(tmp_path / f"source_{case}.flac", expected["wav"])


def test_pair_info_shows_the_method_frames_files_and_encoder(pairs: dict[str, Path]) -> None:
    path = pairs["linear_parallel"]
    result = cli("pair", "info", path)
    assert result.exit_code == 0, result.output
    for word in ("linear", "0.3", "parallel", str(TINY_WAVLM), "layer", "source_frames", "target_frames"):
        assert word in result.stdout
    pair = Pair.load(path)
    for src in (*pair.sources, *pair.targets):
        assert Path(src.path).name in result.stdout and src.sha256[:16] in result.stdout
    meta = json.loads(cli("pair", "info", path, "--json").stdout)
    assert meta == pair.metadata()
    assert (meta["method"], meta["lasso"], meta["layer"]) == ("linear", 0.3, 6)


def test_an_mkl_pair_and_a_pair_onto_a_saved_voice(voice: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pair"
    result = cli("pair", "build", PAIR_SOURCE, voice, "-o", out, *ENCODER, "--no-trim", "--method", "mkl",
                 "--mkl-block", "4")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "MKL-VC map (blocks of 4)" in result.stderr
    pair = Pair.load(out)
    assert (pair.method, pair.mkl_block, pair.target_voice, pair.bias is not None) == ("mkl", 4, str(voice), True)


# -- folders -------------------------------------------------------------------------------------------------------
def sources(root: Path) -> Path:
    """Two utterances of different lengths (one of the pair's source speaker's) in a tree."""
    (root / "deep").mkdir(parents=True)
    shutil.copy(SOURCE_WAV, root / "a.wav")
    shutil.copy(PAIR_SOURCE / "s01.wav", root / "deep" / "b.wav")
    return root


@pytest.mark.parametrize("target", ["mkl", "pair"])
def test_a_folder_batch_equals_one_file_conversions(
    target: str, pairs: dict[str, Path], vc: KnnVC, tmp_path: Path
) -> None:
    """Each utterance is mapped on its own (MKL-VC's statistics are its own) inside the batch's shared windows."""
    src, out = sources(tmp_path / "src"), tmp_path / "out"
    given = ["--method", "mkl", "--mkl-block", "16"] if target == "mkl" else []
    reference = REF_DIR if target == "mkl" else pairs["linear_nonparallel"]
    summary = json_summary(cli("convert", src, reference, "-o", out, *EXACT, *given, "--format", "flac",
                               "--batch-size", "2", "--json"))  # fmt: skip
    assert summary["converted"] == 2
    options = ConvertOptions(method="mkl", mkl_block=16, trim=False, loudness=None) if target == "mkl" else (
        ConvertOptions(trim=False, loudness=None))  # fmt: skip
    for name in ("a", "deep/b"):
        alone = vc.convert(src / f"{name}.wav", reference, options)
        batched = sf.read(out / f"{name}.flac", dtype="float32")[0]
        assert batched.shape == alone.shape and np.abs(batched - alone).max() <= AUDIO_TOLERANCE
    audio = json.loads((out / MANIFEST_NAME).read_text())["settings"].popitem()[1]["audio"]
    if target == "mkl":
        assert audio["options"]["method"] == "mkl" and audio["options"]["mkl_block"] == 16
        assert "k" not in audio["options"]  # kNN's controls play no part
    else:
        assert audio["options"]["method"] == "linear" and "mkl_block" not in audio["options"]
        assert audio["voice"]["name"] == "linear_nonparallel" and audio["voice"]["pair"] == "linear"


def test_another_method_or_block_is_other_settings(pairs: dict[str, Path], tmp_path: Path) -> None:
    """A rerun with another method, block size or pair is refused as any other change of settings is."""
    src, out = sources(tmp_path / "src"), tmp_path / "out"
    (src / "deep" / "b.wav").unlink()
    json_summary(cli("convert", src, REF_DIR, "-o", out, *EXACT, "--json"))  # kNN
    for change in (["--method", "mkl"], ["--method", "mkl", "--mkl-block", "16"]):
        result = cli("convert", src, REF_DIR, "-o", out, *EXACT, *change)
        assert result.exit_code == UsageError.exit_code
        assert "other settings" in one_line(result) and 'options.method: null -> "mkl"' in one_line(result)
    json_summary(cli("convert", src, REF_DIR, "-o", out, *EXACT, "--method", "mkl", "--overwrite", "--json"))
    result = cli("convert", src, REF_DIR, "-o", out, *EXACT, "--method", "mkl", "--mkl-block", "16")
    assert result.exit_code == UsageError.exit_code and "options.mkl_block: 2 -> 16" in one_line(result)
    result = cli("convert", src, pairs["linear_parallel"], "-o", out, *EXACT)
    assert result.exit_code == UsageError.exit_code and "voice." in one_line(result)
    # one file: its own tag holds the method, and the same rule applies
    one = tmp_path / "one.wav"
    json_summary(cli("convert", SOURCE_WAV, REF_DIR, "-o", one, *EXACT, "--method", "mkl", "--json"))
    assert read_tag(one)["audio"]["options"]["method"] == "mkl"  # type: ignore[index]
    again = json_summary(cli("convert", SOURCE_WAV, REF_DIR, "-o", one, *EXACT, "--method", "mkl", "--json"))
    assert again["skip_reasons"] == {"done": 1}
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", one, *EXACT)
    assert result.exit_code == UsageError.exit_code and "options.method" in one_line(result)


# -- errors: one line, the right exit code -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "linear"], "--method linear converts with a pair"),
        (["--method", "mkl", "--match-layer", "8"], "a match layer is a control of kNN matching"),
        (["--method", "mkl", "--k", "8"], "--k 8 is a control of kNN matching"),
        (["--mkl-block", "4"], "--mkl-block is MKL-VC's block size: it needs --method mkl"),
        (["--method", "vits"], "method must be knn, mkl, linear"),
    ],
)
def test_convert_refuses_a_method_that_cannot_work_before_loading_models(
    args: list[str], message: str, unloadable: list[str], tmp_path: Path
) -> None:
    result = cli("convert", SOURCE_WAV, REF_DIR, "-o", tmp_path / "o.wav", *unloadable, *args)
    assert result.exit_code == UsageError.exit_code and message in one_line(result)
    no_model_loaded(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "mkl"], "a pair converts with its own map; --method mkl fits one per utterance"),
        (["--k", "8"], "--k is a control of kNN matching"),
        (["--match-layer", "8"], "--match-layer is a control of kNN matching"),
        (["--morph", str(REF_DIR)], "--morph is a control of kNN matching"),
    ],
)
def test_a_pair_target_takes_no_other_method_or_knn_control(
    args: list[str], message: str, pairs: dict[str, Path], unloadable: list[str], tmp_path: Path
) -> None:
    result = cli("convert", SOURCE_WAV, pairs["linear_nonparallel"], "-o", tmp_path / "o.wav", *unloadable, *args)
    assert result.exit_code == UsageError.exit_code and message in one_line(result)
    no_model_loaded(result)


def test_mkl_from_a_third_of_a_second_is_one_line_and_two_seconds_convert(tmp_path: Path) -> None:
    speech, rate = sf.read(REF_DIR / "ref_01.wav", dtype="float32")
    two, short = tmp_path / "two.wav", tmp_path / "short.wav"
    sf.write(two, speech[rate // 2 : rate // 2 + 2 * rate], rate)  # 2 s from inside the sentence
    sf.write(short, speech[rate // 2 : rate // 2 + int(0.3 * rate)], rate)
    result = cli("convert", SOURCE_WAV, short, "-o", tmp_path / "o.wav", *EXACT, "--method", "mkl")
    assert result.exit_code == UsageError.exit_code
    assert re.search(r"has 0\.\d+ s of speech; MKL-VC needs at least 1 s", one_line(result))
    assert not (tmp_path / "o.wav").exists()
    json_summary(cli("convert", SOURCE_WAV, two, "-o", tmp_path / "o.wav", *EXACT, "--method", "mkl", "--json"))
    assert np.abs(sf.read(tmp_path / "o.wav")[0]).max() > 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([PAIR_SOURCE, REF_DIR, "-o", "x.voice"], UsageError, "pair files end in .pair"),
        ([PAIR_SOURCE, REF_DIR, "-o", "x.pair", "--method", "knn"], UsageError, "--method must be linear or mkl"),
        ([PAIR_SOURCE, REF_DIR, "-o", "x.pair", "--method", "mkl", "--lasso", "0.1"], UsageError,
         "--lasso is LinearVC's"),
        ([PAIR_SOURCE, REF_DIR, "-o", "x.pair", "--method", "mkl", "--parallel"], UsageError,
         "--parallel is LinearVC's"),
        ([PAIR_SOURCE, REF_DIR, "-o", "x.pair", "--mkl-block", "4"], UsageError, "it needs --method mkl"),
        ([PAIR_SOURCE, REF_DIR, "-o", "x.pair", "--lasso", "-1"], UsageError, "an alpha of 0 or more"),
        ([PAIR_SOURCE, "VOICE", "-o", "x.pair", "--parallel"], UsageError, "pairs files by name"),
        ([PAIR_SOURCE, "PAIR", "-o", "x.pair"], UsageError, "not onto another pair"),
        ([PAIR_SOURCE, REF_DIR, "-o", REF_DIR / "ref_01.wav"], UsageError, "pair files end in .pair"),
        ([PAIR_SOURCE, REF_DIR, "-o", "PAIR"], OutputError, "already exists; pass --overwrite"),
        ([PAIR_SOURCE, "missing", "-o", "x.pair"], None, "no such file or folder"),
    ],
)  # fmt: skip
def test_pair_build_refuses_before_loading_the_model(
    args: list[Any], code: type | None, message: str, voice: Path, pairs: dict[str, Path], tmp_path: Path
) -> None:
    named = {"VOICE": voice, "PAIR": pairs["linear_nonparallel"], "x.pair": tmp_path / "x.pair",
             "x.voice": tmp_path / "x.voice", "missing": tmp_path / "missing"}  # fmt: skip
    given = [named.get(str(a), a) for a in args]
    missing = tmp_path / "never-loaded" / "wavlm.pt"
    before = pairs["linear_nonparallel"].read_bytes()
    result = cli("pair", "build", *given, "--wavlm", missing, "--device", "cpu", "--no-trim")
    assert message in one_line(result) and "never-loaded" not in result.output
    assert result.exit_code == (code.exit_code if code else 3)  # type: ignore[attr-defined]
    assert pairs["linear_nonparallel"].read_bytes() == before  # never overwritten


def test_pair_build_never_writes_over_an_input(tmp_path: Path) -> None:
    """Not even with --overwrite, and not by another name (a link to a source speaker's file)."""
    source = tmp_path / "source"
    shutil.copytree(PAIR_SOURCE, source)
    link = tmp_path / "same.pair"
    link.hardlink_to(source / "s01.wav")
    before = link.read_bytes()
    result = cli("pair", "build", source, REF_DIR, "-o", link, "--overwrite", *ENCODER, "--no-trim")
    assert result.exit_code == UsageError.exit_code and "s01.wav" in one_line(result)
    assert link.read_bytes() == before


def test_pair_info_of_something_else_is_one_line(voice: Path, tmp_path: Path) -> None:
    result = cli("pair", "info", voice)
    assert result.exit_code == VoiceError.exit_code and "not a knnvc pair file" in one_line(result)
    result = cli("pair", "info", tmp_path / "missing.pair")
    assert result.exit_code == 3 and "no such file" in one_line(result)
