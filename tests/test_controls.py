"""Conversion controls: strength, match layer, kNN weighting, morphing, compact voices.

The two cases of ``fixtures/controls_outputs.pt`` (the original kNN-VC code: match on layer L, average the same
frames' layer-6 features, blend with the source by lambda) are reproduced through the API, the CLI flags and a
batch: the audio within 1e-5 (24-bit files: within 1e-5 and their quantisation); through the pipeline's stages,
the neighbour indices exactly and the features it vocodes within 1e-5.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import knnvc
from knnvc.batch import plan, runner
from knnvc.cli import app
from knnvc.errors import UsageError, VoiceError
from knnvc.nn import matcher
from knnvc.nn.encoder import split_layers
from knnvc.options import ConvertOptions, Models
from knnvc.pipeline import KnnVC
from knnvc.voice import Voice
from tests.conftest import FIXTURES, REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest

CASES = {"L8k4s1.0": (8, 4, 1.0), "L6k4s0.5": (6, 4, 0.5)}
TINY: dict[str, Any] = {"models": Models(str(TINY_WAVLM), str(TINY_VOCODER)), "device": "cpu"}
EXACT_ARGS = ["--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER), "--device", "cpu", "--no-trim",
              "--loudness", "none"]  # fmt: skip


@pytest.fixture(scope="module")
def controls_outputs() -> dict[str, Any]:
    out: dict[str, Any] = torch.load(FIXTURES / "controls_outputs.pt", weights_only=True)
    return out


@pytest.fixture(scope="module")
def vc8() -> KnnVC:
    """The tiny pipeline with WavLM run to layer 8 (the tiny model's last)."""
    return KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu", match_layer=8)


@pytest.fixture(scope="module")
def voice8(vc8: KnnVC) -> Voice:
    return vc8.build_voice(REF_DIR, trim=False, match_layer=8)


def check_wav(wav: np.ndarray, expected: torch.Tensor, atol: float) -> None:
    assert len(wav) == len(sf.read(SOURCE_WAV)[0])  # as long as the source; the original stops 256 samples short
    assert np.abs(wav[: expected.numel()] - expected.numpy()).max() <= atol


# -- the original's answers ------------------------------------------------------------------------------------
FLAC_STEP = 2.0**-23  # 24-bit files


@pytest.mark.parametrize("case", CASES)
def test_fixture_cases_through_the_api(case: str, controls_outputs: dict, vc8: KnnVC, voice8: Voice) -> None:
    layer, k, strength = CASES[case]
    expected = controls_outputs[case]
    wav = knnvc.convert(SOURCE_WAV, REF_DIR, k=k, match_layer=layer, strength=strength, trim=False, loudness=None,
                        **TINY)  # fmt: skip
    check_wav(wav, expected["wav"], atol=1e-5)
    # the stages: the neighbours chosen on layer L, and the matched layer-6 features the vocoder is given
    feats = split_layers(vc8.encode_many([vc8.load_audio(SOURCE_WAV)], layers=(6, 8))[0], (6, 8))
    assert torch.equal(matcher.knn_indices(feats[layer], voice8.keys(layer), k), expected["knn_indices"])
    matched = vc8.match(feats, voice8, ConvertOptions(k=k, match_layer=layer, strength=strength))
    assert (matched - expected["features"]).abs().max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_fixture_cases_through_the_cli(case: str, controls_outputs: dict, tmp_path: Path) -> None:
    layer, k, strength = CASES[case]
    out = tmp_path / "out.flac"
    args = ["convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(out), *EXACT_ARGS, "--k", str(k),
            "--match-layer", str(layer), "--strength", str(strength)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    check_wav(sf.read(out, dtype="float32")[0], controls_outputs[case]["wav"], atol=1e-5 + FLAC_STEP)


def test_fixture_case_through_a_saved_voice_and_batch(
    controls_outputs: dict, vc8: KnnVC, voice8: Voice, tmp_path: Path
) -> None:
    """ConvertOptions carries the controls through ``runner.run``; the voice keeps its layer-8 frames on disk."""
    loaded = Voice.load(voice8.save(tmp_path / "ref.voice"))
    assert loaded.layers == (6, 8) and torch.equal(loaded.keys(8), voice8.keys(8))
    jobs = plan.plan(SOURCE_WAV, tmp_path / "out.flac", loaded.name)
    report = runner.run(vc8, jobs, loaded, ConvertOptions(match_layer=8, loudness=None, trim=False))
    assert report.ok and len(report.converted) == 1
    wav = sf.read(tmp_path / "out.flac", dtype="float32")[0]
    check_wav(wav, controls_outputs["L8k4s1.0"]["wav"], atol=1e-5 + FLAC_STEP)


# -- validation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"strength": -0.1}, {"strength": 2.01}, {"strength": float("nan")}, {"match_layer": 0},
        {"match_layer": 25}, {"match_layer": 6.0}, {"knn_weighting": "distance"}, {"morph_weight": 1.5},
        {"morph_weight": -0.01},
    ],
)  # fmt: skip
def test_out_of_range_controls_are_usage_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        ConvertOptions(**bad)


def test_cli_refuses_bad_controls_before_loading_models(tmp_path: Path) -> None:
    missing = ["--wavlm", str(tmp_path / "nope.pt"), "--vocoder", str(tmp_path / "nope.pt")]  # never reached
    base = ["convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(tmp_path / "o.wav"), *missing]
    for flags, words in (
        (["--strength", "3"], "strength"),
        (["--match-layer", "30"], "match layer"),
        (["--knn-weighting", "cosine"], "weighting"),
        (["--morph", str(REF_DIR), "--morph-weight", "2"], "morph weight"),
        (["--morph-weight", "0.3"], "--morph"),
    ):
        result = CliRunner().invoke(app, [*base, *flags])
        assert result.exit_code == 2 and words in result.output, (flags, result.output)


def test_match_layer_beyond_the_encoder(tmp_path: Path, vc8: KnnVC, voice8: Voice) -> None:
    args = ["convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(tmp_path / "o.wav"), *EXACT_ARGS, "--match-layer", "9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "has 8 layers" in result.output
    shallow = KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER), device="cpu")  # runs 6 layers
    assert (shallow.encoder.depth, vc8.encoder.depth) == (6, 8)
    assert shallow.encoder.fingerprint == vc8.encoder.fingerprint  # a voice fits both
    with pytest.raises(UsageError, match="match_layer=8"):
        shallow.convert(SOURCE_WAV, voice8, ConvertOptions(match_layer=8))


def test_several_layers_in_a_padded_batch_equal_each_alone(vc8: KnnVC) -> None:
    wav = torch.from_numpy(vc8.load_audio(SOURCE_WAV))
    wavs = [wav, wav[: 16_000 + 123]]
    together = vc8.encoder.encode_batch(wavs, (6, 8))
    for item, feats in zip(wavs, together, strict=True):
        alone = vc8.encoder.encode(item, (6, 8))
        assert feats.shape == alone.shape and torch.allclose(feats, alone, atol=1e-4)
        assert torch.allclose(split_layers(alone, (6, 8))[6], vc8.encoder.encode(item, (6,)), atol=1e-5)


def test_controls_in_a_cross_file_batch_equal_each_file_alone(
    vc8: KnnVC, voice8: Voice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Match layer 8, weighting and strength inside the pipeline's cross-file batches (padded: any slack)."""
    wav = vc8.load_audio(SOURCE_WAV)
    wavs = [wav, wav[: 16_000 + 123], wav[5_000:]]
    options = ConvertOptions(match_layer=8, strength=0.7, knn_weighting="inverse-distance", loudness=None)
    monkeypatch.setattr(vc8, "slack", 1.0)  # every window shares one padded batch
    together = vc8.convert_batch(wavs, voice8, options)
    for item, out in zip(wavs, together, strict=True):
        alone = vc8.convert_batch([item], voice8, options)[0]
        assert out.shape == alone.shape and np.abs(out - alone).max() <= 1e-4


# -- matcher ------------------------------------------------------------------------------------------------------
def test_matcher_controls_are_the_formulas() -> None:
    gen = torch.Generator().manual_seed(0)
    query, keys, synth = (torch.randn(n, 8, generator=gen) for n in (30, 50, 50))
    idx = matcher.knn_indices(query, keys, 3)
    assert torch.allclose(matcher.knn_regression(query, keys, 3, synth=synth), synth[idx].mean(1))
    assert torch.allclose(matcher.knn_regression(query, keys, 3), keys[idx].mean(1))
    dist = matcher.cosine_distance(query, keys).gather(1, idx)
    w = dist.pow(-2) / dist.pow(-2).sum(1, keepdim=True)
    weighted = matcher.knn_regression(query, keys, 3, synth=synth, weighting="inverse-distance")
    assert torch.allclose(weighted, (w[..., None] * synth[idx]).sum(1), atol=1e-5)
    assert bool((w[:, 0] >= w[:, 2]).all())  # the nearest counts most
    a, b = synth[:30], keys[:30]
    assert torch.equal(matcher.blend(a, b, 0.0), b) and torch.equal(matcher.blend(a, b, 1.0), a)
    assert torch.allclose(matcher.blend(a, b, 1.5), 1.5 * a - 0.5 * b)
    assert torch.allclose(matcher.morph(a, b, 0.25), 0.75 * a + 0.25 * b)
    # an exact match gets (nearly) all the weight instead of dividing by zero
    exact = matcher.knn_regression(keys[:5], keys, 3, weighting="inverse-distance")
    assert torch.allclose(exact, keys[:5], atol=1e-4)


# -- morphing -----------------------------------------------------------------------------------------------------
def test_morph_between_two_voices(vc8: KnnVC, voice8: Voice) -> None:
    refs = sorted(REF_DIR.glob("*.wav"))
    other = vc8.build_voice(refs[:1], trim=False, match_layer=8)
    feats = split_layers(vc8.encode_many([vc8.load_audio(SOURCE_WAV)], layers=(6, 8))[0], (6, 8))
    base = ConvertOptions(match_layer=8, knn_weighting="inverse-distance", strength=0.8)
    a = vc8.match(feats, voice8, base)
    b = vc8.match(feats, other, base)
    for w in (0.0, 0.3, 1.0):
        morphed = vc8.match(feats, voice8, replace(base, morph=other, morph_weight=w))
        assert torch.allclose(morphed, (1 - w) * a + w * b, atol=1e-5)


def test_morph_through_the_api_and_the_cli(tmp_path: Path, vc8: KnnVC) -> None:
    refs = sorted(REF_DIR.glob("*.wav"))
    second = vc8.build_voice(refs[1:], trim=False).save(tmp_path / "second.voice")
    common: dict[str, Any] = {"trim": False, "loudness": None, **TINY}
    halfway = knnvc.convert(SOURCE_WAV, REF_DIR, morph=second, morph_weight=0.5, **common)
    assert not np.array_equal(halfway, knnvc.convert(SOURCE_WAV, REF_DIR, **common))
    assert np.array_equal(knnvc.convert(SOURCE_WAV, REF_DIR, morph=REF_DIR, morph_weight=1.0, **common),
                          knnvc.convert(SOURCE_WAV, REF_DIR, **common))  # fmt: skip
    out = tmp_path / "morph.wav"
    args = ["convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(out), *EXACT_ARGS, "--morph", str(second),
            "--morph-weight", "0.5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert np.abs(sf.read(out, dtype="float32")[0] - halfway).max() <= 1 / 32768 + 1e-6


# -- saved voices and layers --------------------------------------------------------------------------------------
def test_voice_without_the_layer_is_rebuilt_from_its_sources(tmp_path: Path, vc8: KnnVC, voice8: Voice) -> None:
    six = vc8.build_voice(sorted(REF_DIR.glob("*.wav")), trim=False).save(tmp_path / "six.voice")
    loaded = Voice.load(six)
    assert loaded.layers == (6,)
    rebuilt = vc8.with_layer(loaded, 8)
    assert rebuilt.layers == (6, 8)
    assert torch.allclose(rebuilt.keys(8), voice8.keys(8), atol=1e-5)


def test_voice_without_the_layer_is_refused_when_it_cannot_be_rebuilt(tmp_path: Path, vc8: KnnVC) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    for ref in sorted(REF_DIR.glob("*.wav")):
        (refs / ref.name).write_bytes(ref.read_bytes())
    saved = vc8.build_voice(refs, trim=False).save(tmp_path / "gone.voice")
    (refs / "ref_02.wav").unlink()
    with pytest.raises(VoiceError, match="--match-layer 8"):
        vc8.with_layer(Voice.load(saved), 8)
    args = ["convert", str(SOURCE_WAV), str(saved), "-o", str(tmp_path / "o.wav"), *EXACT_ARGS, "--match-layer", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 5 and "knnvc voice build" in result.output and "--match-layer 8" in result.output


# -- compact voices -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["torch", "faiss"])
def test_compact_voice_is_cluster_means_with_sizes(method: str, voice8: Voice, tmp_path: Path) -> None:
    if method == "faiss":
        pytest.importorskip("faiss")
    compact, clustering = voice8.compact(64, method=method)
    assert compact.num_frames == clustering.clusters <= 64 and clustering.method == method
    assert compact.counts is not None and int(compact.counts.sum()) == voice8.num_frames
    members = clustering.assignment == 3
    assert torch.allclose(compact.frames[3], voice8.frames[members].mean(0), atol=1e-5)
    assert torch.allclose(compact.keys(8)[3], voice8.keys(8)[members].mean(0), atol=1e-5)
    loaded = Voice.load(compact.save(tmp_path / "compact.voice"))
    assert loaded.layers == (6, 8) and loaded.counts is not None and torch.equal(loaded.counts, compact.counts)
    assert loaded.metadata()["compact"] and loaded.seconds == voice8.seconds
    with pytest.raises(VoiceError, match="--max-frames"):
        loaded.keys(7)


def test_voice_build_max_frames_and_convert(tmp_path: Path) -> None:
    out = tmp_path / "small.voice"
    args = ["voice", "build", str(REF_DIR), "-o", str(out), "--wavlm", str(TINY_WAVLM), "--device", "cpu",
            "--no-trim", "--max-frames", "100"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "compacted" in result.output and Voice.load(out).num_frames <= 100
    wav = tmp_path / "o.wav"
    result = CliRunner().invoke(app, ["convert", str(SOURCE_WAV), str(out), "-o", str(wav), *EXACT_ARGS])
    assert result.exit_code == 0, result.output
    assert np.isfinite(sf.read(wav)[0]).all()


def test_the_settings_record_names_the_morph_voice(voice8: Voice) -> None:
    """A batch's settings record (knnvc.batch.manifest) holds every control, the morph voice by identity (JSON-able)."""
    import json

    from knnvc.batch import identity

    options = ConvertOptions(strength=0.7, match_layer=8, morph=voice8, morph_weight=0.25)
    settings = identity.settings_for({"name": "a"}, options, encoder=("tiny", "f", 6), vocoder=str(TINY_VOCODER),
                                     precision="fp32", extension=".wav", sample_rate=16_000)  # fmt: skip
    recorded = json.loads(json.dumps(settings.audio))["options"]
    assert recorded["strength"] == 0.7 and recorded["match_layer"] == 8 and recorded["morph_weight"] == 0.25
    assert recorded["morph"] == identity.voice_identity(voice8)
