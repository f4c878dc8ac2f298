"""MKL-VC and LinearVC beside kNN-VC: the authors' answers reproduced through the API, pairs saved and loaded, and
the errors that keep a method from being given what it cannot use.

``fixtures/methods_outputs.pt`` was computed by each method's authors' own code on the tiny fixture models (see
``fixtures/README.md``): features within 1e-4 relative, W within 1e-4 (lasso: 1e-3), the vocoder's output for those
features within 1e-4. The CLI's side is in ``tests/test_methods_cli.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

import knnvc
from knnvc.errors import AudioError, UsageError, VoiceError
from knnvc.nn import linear, mkl
from knnvc.options import ConvertOptions, Models
from knnvc.pipeline import KnnVC
from knnvc.voice import Pair, Voice
from tests.conftest import FIXTURES, REF_DIR, SOURCE_WAV, SPEECH, TINY_VOCODER, TINY_WAVLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest

PAIR_SOURCE = SPEECH / "pair" / "source"
PAIR_TARGET = SPEECH / "pair" / "target"
TINY: dict[str, Any] = {"models": Models(str(TINY_WAVLM), str(TINY_VOCODER)), "device": "cpu"}
MKL_CASES = ("mkl_b2", "mkl_b16")


@pytest.fixture(scope="module")
def methods_outputs() -> dict[str, Any]:
    out: dict[str, Any] = torch.load(FIXTURES / "methods_outputs.pt", weights_only=True)
    return out


@pytest.fixture(scope="module")
def vc() -> KnnVC:
    return KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")


@pytest.fixture(scope="module")
def voice(vc: KnnVC) -> Voice:
    return vc.build_voice(REF_DIR, trim=False)


@pytest.fixture(scope="module")
def source(vc: KnnVC) -> torch.Tensor:
    return vc.encode(SOURCE_WAV)


def relative(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found.double() - expected.double()).norm() / expected.double().norm())


def check_wav(wav: np.ndarray, expected: torch.Tensor) -> None:
    assert len(wav) == len(sf.read(SOURCE_WAV)[0])  # as long as the source, as every knnvc conversion
    assert np.abs(wav[: expected.numel()] - expected.numpy()).max() <= 1e-4


# -- MKL-VC ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", MKL_CASES)
def test_mkl_fixture_cases_through_the_api(
    case: str, methods_outputs: dict, vc: KnnVC, voice: Voice, source: torch.Tensor
) -> None:
    expected = methods_outputs[case]
    assert voice.num_frames == expected["target_frames"]
    assert torch.equal(mkl.dimension_order(source), expected["order"])
    assert mkl.block_used(voice.num_frames, expected["block"]) == expected["block_used"]
    options = ConvertOptions(method="mkl", mkl_block=expected["block"], trim=False, loudness=None)
    assert relative(vc.match(source, voice, options), expected["features"]) <= 1e-4
    wav = knnvc.convert(SOURCE_WAV, REF_DIR, method="mkl", mkl_block=expected["block"], trim=False, loudness=None,
                        **TINY)  # fmt: skip
    check_wav(wav, expected["wav"])


def test_mkl_maps_a_lone_last_dimension_as_a_block_of_one(voice: Voice, source: torch.Tensor) -> None:
    """96 = 19 x 5 + 1: the authors copy the 96th ordered dimension unchanged; here it takes the target's mean and
    spread, as a 1-d optimal-transport map does."""
    out = mkl.mkl_transfer(source, voice.frames, 5)
    last = int(mkl.dimension_order(source)[-1])
    assert not torch.allclose(out[:, last], source[:, last])
    assert abs(float(out[:, last].mean() - voice.frames[:, last].mean())) <= 1e-4
    assert abs(float(out[:, last].std() - voice.frames[:, last].std())) <= 1e-3 * float(voice.frames[:, last].std())


def test_mkl_strength_blends_with_the_source(vc: KnnVC, voice: Voice, source: torch.Tensor) -> None:
    full = vc.match(source, voice, ConvertOptions(method="mkl"))
    assert torch.allclose(vc.match(source, voice, ConvertOptions(method="mkl", strength=0.0)), source, atol=1e-6)
    half = vc.match(source, voice, ConvertOptions(method="mkl", strength=0.5))
    assert torch.allclose(half, 0.5 * full + 0.5 * source, atol=1e-5)


def test_mkl_converts_from_two_seconds_and_refuses_a_third_of_one(vc: KnnVC, tmp_path: Path) -> None:
    speech, rate = sf.read(REF_DIR / "ref_01.wav", dtype="float32")
    two, short = tmp_path / "two.wav", tmp_path / "short.wav"
    sf.write(two, speech[rate // 2 : rate // 2 + 2 * rate], rate)  # 2 s from inside the sentence
    sf.write(short, speech[rate // 2 : rate // 2 + int(0.3 * rate)], rate)
    wav = vc.convert(SOURCE_WAV, two, ConvertOptions(method="mkl", trim=False))
    assert len(wav) == len(sf.read(SOURCE_WAV)[0]) and np.isfinite(wav).all() and np.abs(wav).max() > 0
    with pytest.raises(UsageError, match=r"has 0\.\d+ s of speech; MKL-VC needs at least 1 s") as err:
        vc.convert(SOURCE_WAV, short, ConvertOptions(method="mkl", trim=False))
    assert "\n" not in str(err.value)


def test_mkl_refuses_a_compact_voice(vc: KnnVC, voice: Voice) -> None:
    compact, _ = voice.compact(100)
    with pytest.raises(UsageError, match="compact"):
        vc.convert(SOURCE_WAV, compact, ConvertOptions(method="mkl"))


# -- LinearVC ----------------------------------------------------------------------------------------------------
def check_pair_case(vc: KnnVC, pair: Pair, expected: dict, w_tolerance: float, source: torch.Tensor) -> None:
    assert [Path(s.path).name for s in pair.sources] == expected["source_files"]
    assert [Path(s.path).name for s in pair.targets] == expected["target_files"]
    assert relative(pair.matrix, expected["W"]) <= w_tolerance
    assert relative(vc.match(source, pair, ConvertOptions()), expected["features"]) <= 1e-4
    check_wav(knnvc.convert(SOURCE_WAV, pair, trim=False, loudness=None, **TINY), expected["wav"])


def test_linear_nonparallel_fixture_case(methods_outputs: dict, vc: KnnVC, source: torch.Tensor) -> None:
    expected = methods_outputs["linear_nonparallel"]
    pair = vc.build_pair(PAIR_SOURCE, REF_DIR, trim=False)
    assert (pair.method, pair.parallel, pair.lasso) == ("linear", False, None)
    check_pair_case(vc, pair, expected, 1e-4, source)


def test_linear_parallel_fixture_case(methods_outputs: dict, vc: KnnVC, source: torch.Tensor, tmp_path: Path) -> None:
    expected = methods_outputs["linear_parallel"]
    pair = vc.build_pair(PAIR_SOURCE, PAIR_TARGET, parallel=True, trim=False)
    assert (pair.parallel, pair.lasso) == (True, expected["lasso"])
    check_pair_case(vc, pair, expected, 1e-3, source)
    # saved and loaded: the same map, its provenance, and the same conversion
    loaded = Pair.load(pair.save(tmp_path / "m3_to_f2.pair"))
    assert torch.equal(loaded.matrix, pair.matrix) and loaded.bias is None
    assert loaded.metadata() == pair.metadata()
    assert all(len(s.sha256) == 64 for s in (*loaded.sources, *loaded.targets))
    assert loaded.source_frames == sum(int(f.shape[0]) for f in [vc.encode(p) for p in sorted(PAIR_SOURCE.iterdir())])
    path_wav = knnvc.convert(SOURCE_WAV, tmp_path / "m3_to_f2.pair", loudness=None, **TINY)
    check_wav(path_wav, expected["wav"])


def test_a_pair_can_target_a_saved_voice_and_keeps_8192_frames(vc: KnnVC, voice: Voice, tmp_path: Path) -> None:
    saved = voice.save(tmp_path / "f2.voice")
    pair = vc.build_pair(PAIR_SOURCE, saved, trim=False)
    assert pair.target_voice == str(saved) and pair.target_frames == voice.num_frames
    many = torch.randn(9000, 96)
    assert torch.equal(linear.fit_nonparallel(many, many[:100]), linear.fit_nonparallel(many[:8192], many[:100]))


def test_an_mkl_pair_is_the_speaker_level_map(vc: KnnVC, voice: Voice) -> None:
    pair = vc.build_pair(PAIR_SOURCE, REF_DIR, method="mkl", trim=False)
    frames = torch.cat([vc.encode(p) for p in sorted(PAIR_SOURCE.iterdir())])
    expected = mkl.fit_mkl(frames, voice.frames)(frames)
    assert torch.allclose(pair.apply(frames), expected, atol=1e-5)
    assert pair.bias is not None and pair.mkl_block == 2 and pair.lasso is None


def test_a_pair_needs_enough_of_the_source_speaker_and_a_voice_or_references(
    vc: KnnVC, voice: Voice, tmp_path: Path
) -> None:
    speech, rate = sf.read(PAIR_SOURCE / "s01.wav", dtype="float32")
    short = tmp_path / "short"
    short.mkdir()
    sf.write(short / "a.wav", speech[rate // 2 : rate // 2 + int(0.8 * rate)], rate)
    with pytest.raises(UsageError, match=r"source speaker has 0\.\d+ s of speech; MKL-VC needs at least 1 s"):
        vc.build_pair(short, REF_DIR, method="mkl", trim=False)
    with pytest.raises(UsageError, match=r"LinearVC fits a 96x96 W and needs at least 96 frames \(1\.9 s\)"):
        vc.build_pair(short, REF_DIR, trim=False)
    pair_file = vc.build_pair(PAIR_SOURCE, voice, trim=False).save(tmp_path / "p.pair")
    with pytest.raises(UsageError, match="not onto another pair"):
        vc.build_pair(PAIR_SOURCE, pair_file)
    with pytest.raises(UsageError, match="MKL block size must be a whole number"):
        vc.build_pair(PAIR_SOURCE, voice, method="mkl", mkl_block=0)


def test_a_pair_file_with_a_damaged_bias_or_width_is_refused(vc: KnnVC, voice: Voice, tmp_path: Path) -> None:
    pair = vc.build_pair(PAIR_SOURCE, voice, method="mkl", trim=False)
    bad_bias = replace(pair, bias=torch.full_like(pair.map.bias, float("nan"))).save(tmp_path / "nan.pair")
    with pytest.raises(VoiceError, match="damaged pair"):
        Pair.load(bad_bias)
    assert Pair.load(pair.save(tmp_path / "ok.pair")).method == "mkl"


def test_parallel_pairs_need_namesakes_and_files(vc: KnnVC, voice: Voice, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no file names in common"):
        vc.build_pair(PAIR_SOURCE, REF_DIR, parallel=True, trim=False)
    with pytest.raises(UsageError, match="not a voice"):
        vc.build_pair(PAIR_SOURCE, voice, parallel=True)


# -- what each method refuses ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "mkl", "match_layer": 8}, "a match layer is a control of kNN matching"),
        ({"method": "linear", "knn_weighting": "inverse-distance"}, "kNN weighting is a control of kNN matching"),
        ({"method": "mkl", "k": 8}, "k=8 is a control of kNN matching"),
        ({"method": "vits"}, "method must be knn, mkl, linear"),
        ({"mkl_block": 0}, "MKL block size must be a whole number"),
    ],
)
def test_options_refuse_what_a_method_does_not_use(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ConvertOptions(**options)


def test_a_method_and_a_target_must_fit(vc: KnnVC, voice: Voice, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="LinearVC converts with a pair"):
        vc.convert(SOURCE_WAV, voice, ConvertOptions(method="linear"))
    pair = Pair(torch.eye(96), None, "linear", voice.encoder, voice.encoder_fingerprint, 6)
    with pytest.raises(UsageError, match="holds a fixed map"):
        vc.convert(SOURCE_WAV, pair, ConvertOptions(method="mkl"))
    with pytest.raises(UsageError, match="k=8 is a control of kNN matching; pair"):
        vc.convert(SOURCE_WAV, pair, ConvertOptions(k=8))
    speaker_mkl = Pair(torch.eye(96), torch.zeros(96), "mkl", voice.encoder, voice.encoder_fingerprint, 6)
    with pytest.raises(UsageError, match="holds a fixed map, a speaker-level MKL-VC map, not method linear"):
        vc.convert(SOURCE_WAV, speaker_mkl, ConvertOptions(method="linear"))
    other = Pair(torch.eye(96), None, "linear", "elsewhere", "0" * 16, 6)
    with pytest.raises(VoiceError, match="was fitted with encoder elsewhere"):
        vc.convert(SOURCE_WAV, other)
    with pytest.raises(AudioError, match="too short for MKL-VC"):
        vc.match(torch.randn(1, 96), voice, ConvertOptions(method="mkl"))


def test_damaged_or_foreign_pair_files_are_one_line_errors(voice: Voice, tmp_path: Path) -> None:
    (tmp_path / "text.pair").write_text("not a pair")
    voice_file = voice.save(tmp_path / "v.voice")
    (tmp_path / "voice.pair").write_bytes(voice_file.read_bytes())
    for path, message in [
        (tmp_path / "text.pair", "not a knnvc pair file, or a damaged one"),
        (tmp_path / "voice.pair", "not a knnvc pair file"),
        (tmp_path / "missing.pair", "no such pair file"),
        (tmp_path, "is a folder"),
    ]:
        with pytest.raises(VoiceError, match=message) as err:
            Pair.load(path)
        assert "\n" not in str(err.value)
