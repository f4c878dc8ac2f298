"""The standalone HiFi-GAN vocoder: exactness against the original, checkpoint layouts, config, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import LAYOUTS, TINY_VOCODER, TINY_VOCODER_CONFIG

from vocoder import Generator, HifiganConfig, VocoderLoadError, load_generator, save_generator


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tiny_config() -> HifiganConfig:
    return HifiganConfig.from_dict(json.loads(TINY_VOCODER_CONFIG.read_text()))


def rename_legacy(key: str) -> str:
    """Test-side key renaming (legacy weight norm -> parametrization), independent of the library's."""
    key = key.replace(".weight_g", ".parametrizations.weight.original0")
    return key.replace(".weight_v", ".parametrizations.weight.original1")


def legacy_to_parametrized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {rename_legacy(k): v for k, v in state.items()}


@pytest.fixture(scope="module")
def tiny() -> Generator:
    return load_generator(TINY_VOCODER)


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    """The tiny checkpoint alone in a folder (no config.json beside it)."""
    dst = tmp_path / "alone" / "g.pt"
    dst.parent.mkdir()
    shutil.copy(TINY_VOCODER, dst)
    return dst


# --- exactness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "wav"),
    [("vocoder_probe_features", "vocoder_probe_wav"), ("converted_features", "converted_wav")],
)
def test_tiny_reproduces_reference(
    tiny: Generator, reference_outputs: dict[str, Any], features: str, wav: str
) -> None:
    expected = reference_outputs[wav]
    out = tiny.synthesise(reference_outputs[features]).reshape(-1)
    assert out.shape == expected.shape
    assert rel_err(out, expected) < 1e-4


def test_loaded_model_is_folded_eval_with_resolved_config(tiny: Generator) -> None:
    assert tiny.is_folded and not tiny.training
    assert tiny.config == tiny_config()
    assert "conv_pre.weight" in tiny.state_dict()


@pytest.mark.parametrize("layout", ["parametrized", "folded"])
def test_resaved_layouts_give_same_output(
    tmp_path: Path, reference_outputs: dict[str, Any], layout: str
) -> None:
    model = Generator(tiny_config())
    ckpt = torch.load(TINY_VOCODER, weights_only=True)
    model.load_state_dict(legacy_to_parametrized(ckpt["generator"]), strict=True)
    if layout == "folded":
        model.fold_weight_norm()
    path = tmp_path / f"{layout}.pt"
    save_generator(model, path, extra={"step": 7})
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 7 and saved["config"] == tiny_config().to_dict()
    assert ("conv_pre.weight" in saved["generator"]) == (layout == "folded")
    assert ("conv_pre.parametrizations.weight.original0" in saved["generator"]) == (layout != "folded")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = load_generator(path)  # no config.json in tmp_path: the config comes from the file
    out = loaded.synthesise(reference_outputs["converted_features"])
    assert rel_err(out, reference_outputs["converted_wav"]) < 1e-4


def test_save_generator_rejects_reserved_extra_keys(tmp_path: Path, tiny: Generator) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_generator(tiny, tmp_path / "x.pt", extra={"config": {}})


# --- config resolution: explicit > inside the checkpoint > config.json > defaults --------------------------


def test_config_json_beats_defaults(tiny_copy: Path) -> None:
    with pytest.raises(VocoderLoadError, match=r"lin_pre\.weight.*config\.json"):
        load_generator(tiny_copy)  # defaults are the full-size model
    shutil.copy(TINY_VOCODER_CONFIG, tiny_copy.parent / "config.json")
    assert load_generator(tiny_copy).config == tiny_config()


def test_explicit_config_beats_config_json(tiny_copy: Path) -> None:
    assert load_generator(tiny_copy, config=tiny_config()).config == tiny_config()
    assert load_generator(tiny_copy, config=tiny_config().to_dict()).config == tiny_config()
    shutil.copy(TINY_VOCODER_CONFIG, tiny_copy.parent / "config.json")
    with pytest.raises(VocoderLoadError, match="config argument"):
        load_generator(tiny_copy, config=HifiganConfig())


def test_checkpoint_config_beats_config_json_and_explicit_beats_it(tmp_path: Path, tiny: Generator) -> None:
    path = tmp_path / "g.pt"
    save_generator(tiny, path)
    wrong = tiny_config().to_dict() | {"hidden_dim": 32}
    (tmp_path / "config.json").write_text(json.dumps(wrong))
    assert load_generator(path).config == tiny_config()
    with pytest.raises(VocoderLoadError, match=r"lin_pre\.weight"):
        load_generator(path, config=HifiganConfig.from_dict(wrong))


def test_invalid_config_json_names_file(tiny_copy: Path) -> None:
    (tiny_copy.parent / "config.json").write_text("{not json")
    with pytest.raises(VocoderLoadError, match="config.json"):
        load_generator(tiny_copy)


# --- the published layout at full size -----------------------------------------------------------------


def test_published_layout_loads_with_default_config(tmp_path: Path) -> None:
    layout = json.loads(LAYOUTS.read_text())["prematch_g_02500000.pt"]
    assert HifiganConfig.from_dict(layout["config"]) == HifiganConfig()
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in layout["generator"].items()}
    assert any(k.endswith(".weight_g") for k in state)
    path = tmp_path / "prematch_g_02500000.pt"
    torch.save({"generator": state}, path)
    model = load_generator(path)
    assert model.config == HifiganConfig() and model.config.hop == 320
    wav = model.synthesise(torch.randn(1, 50, 1024, generator=gen))
    assert wav.shape == (1, 16000)
    assert torch.isfinite(wav).all()


def test_generator_keys_match_published_layout() -> None:
    layout = json.loads(LAYOUTS.read_text())["prematch_g_02500000.pt"]["generator"]
    ours = {k: list(v.shape) for k, v in Generator().state_dict().items()}
    assert ours == {rename_legacy(k): shape for k, shape in layout.items()}


# --- refusals ------------------------------------------------------------------------------------------


class Payload:
    """A custom class: pickling it needs code, which weights_only refuses."""


def test_pickled_object_is_refused(tmp_path: Path, tiny: Generator) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"generator": tiny.state_dict(), "payload": Payload()}, path)
    with pytest.raises(VocoderLoadError, match="not a plain-tensor checkpoint") as exc:
        load_generator(path)
    assert str(path) in str(exc.value)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    data = TINY_VOCODER.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VocoderLoadError, match="cut.pt"):
        load_generator(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (torch.zeros(3), "not a checkpoint dict"), ({"model": {}}, "no 'generator'")],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "bad.pt"
    if content is not None:
        torch.save(content, path)
    with pytest.raises(VocoderLoadError, match=message):
        load_generator(path)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, tiny: Generator) -> None:
    state = dict(tiny.state_dict())
    state["extra.weight"] = state.pop("conv_post.weight")
    path = tmp_path / "keys.pt"
    torch.save({"generator": state, "config": tiny.config.to_dict()}, path)
    with pytest.raises(VocoderLoadError, match=r"missing: \['conv_post\.weight'\].*extra\.weight"):
        load_generator(path)


# --- config --------------------------------------------------------------------------------------------


def test_config_round_trip_and_aliases() -> None:
    cfg = tiny_config()
    assert (cfg.input_dim, cfg.hidden_dim, cfg.upsample_initial_channel) == (96, 48, 64)
    assert HifiganConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert hash(cfg) == hash(HifiganConfig.from_dict(cfg.to_dict()))
    assert HifiganConfig().hop == 320 and HifiganConfig().frame_rate == 50.0
    with pytest.raises(ValueError, match="conflicting"):
        HifiganConfig.from_dict({"hubert_dim": 96, "input_dim": 1024})


def test_config_values_take_their_field_types() -> None:
    """JSON's numbers and lists become the declared ints, strings and tuples (hashable), whatever wrote them."""
    cfg = HifiganConfig.from_dict({"hubert_dim": 96.0, "resblock": 2, "upsample_rates": [10, 8, 2, 2],
                                   "resblock_dilation_sizes": [[1, 3], [1, 3], [1, 3]]})  # fmt: skip
    assert cfg.input_dim == 96 and type(cfg.input_dim) is int and cfg.resblock == "2"
    assert cfg.upsample_rates == (10, 8, 2, 2) and cfg.resblock_dilation_sizes == ((1, 3), (1, 3), (1, 3))
    assert HifiganConfig(upsample_rates=[10, 8, 2, 2]) == HifiganConfig()  # type: ignore[arg-type]
    assert cfg.to_dict()["resblock_dilation_sizes"] == [[1, 3], [1, 3], [1, 3]]


def test_train_config_round_trips_with_its_types() -> None:
    """``TrainConfig.from_dict`` reads back ``asdict`` through JSON (run.json), and the original config.json's
    training keys, with each value as its declared type."""
    from dataclasses import asdict

    from vocoder.train import TrainConfig, TrainingError

    cfg = TrainConfig(n_fft=2048, fmax_for_loss=7600.0, batch_size=8)
    assert TrainConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    loaded = TrainConfig.from_dict({"segment_size": 7040.0, "fmin": 0, "n_fft": None, "fmax_for_loss": None})
    assert (loaded.segment_size, loaded.fmin, loaded.n_fft) == (7040, 0.0, None)
    assert type(loaded.segment_size) is int and type(loaded.fmin) is float
    for bad, message in (
        ({"batch_size": "16"}, "training setting batch_size: expected an integer, got '16'"),
        ({"n_fft": 1024.5}, "training setting n_fft: expected an integer or null, got 1024.5"),
        ({"fmin": None}, "training setting fmin: expected a number, got None"),
        ({"seed": True}, "training setting seed: expected an integer, got True"),
        ({"learning_rat": 1e-4}, "unknown training setting 'learning_rat'"),
    ):
        with pytest.raises(TrainingError) as caught:
            TrainConfig.from_dict(bad)
        assert str(caught.value) == message


@pytest.mark.parametrize(
    "bad",
    [
        {"resblock": "3"},
        {"upsample_initial_channel": 100},
        {"upsample_rates": [10, 8], "upsample_kernel_sizes": [20, 16, 4]},
        {"upsample_kernel_sizes": [21, 16, 4, 4]},
        {"resblock_kernel_sizes": [3, 8, 11]},
        {"hifi_dim": "wide"},
        {"hubert_dim": True},
        {"hubert_dim": 96.5},
        {"upsample_rates": "10822"},
        {"resblock_dilation_sizes": [[1, 3, "5"], [1, 3, 5], [1, 3, 5]]},
        {"resblock": 1.0},
    ],
)
def test_config_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="HifiganConfig") as caught:
        HifiganConfig.from_dict(bad)
    assert "\n" not in str(caught.value)  # one line


def test_config_type_errors_say_what_was_expected() -> None:
    with pytest.raises(ValueError) as caught:
        HifiganConfig.from_dict({"resblock_dilation_sizes": [[1, 3, "5"]]})
    assert str(caught.value) == (
        "HifiganConfig.resblock_dilation_sizes: expected a list of lists of integers, got [[1, 3, '5']]"
    )


# --- training loss ---------------------------------------------------------------------------------------


def test_loss_mel_basis_is_hifigans_slaney_mel() -> None:
    """The loss spectrogram's filterbank at HiFi-GAN's settings (16 kHz, n_fft 1024, 80 mels, 0-8000 Hz) is the
    Slaney mel of ``librosa.filters.mel``: (n_mels, n_fft // 2 + 1), rows are mel bands over the STFT bins."""
    from vocoder.train.losses import LogMelSpectrogram

    basis = LogMelSpectrogram(16000, 1024, 320, 1024, 80, 0.0, 8000.0).basis.numpy()
    assert basis.shape == (80, 513) and basis.dtype == np.float32
    # values of the hand-written Slaney filterbank the loss used before transformers' (area-normalised triangles)
    assert basis.astype(np.float64).sum() == pytest.approx(5.118657629360314, rel=1e-6)
    assert basis.argmax(axis=1)[[0, 1, 39, 79]].tolist() == [2, 5, 106, 493]  # band k peaks at a higher bin
    expected = {(0, 1): 0.011267280206084251, (0, 2): 0.022534560412168503, (1, 3): 0.006948425434529781,
                (39, 103): 0.00377794005908072, (79, 497): 0.0026294474955648184}  # fmt: skip
    for (band, bin_), value in expected.items():
        assert basis[band, bin_] == pytest.approx(value, rel=1e-6)
    librosa = pytest.importorskip("librosa")
    reference = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(basis, reference, rtol=1e-5, atol=1e-8)


# --- model ---------------------------------------------------------------------------------------------


def test_synthesise_shapes(tiny: Generator) -> None:
    feats = torch.randn(7, 96, dtype=torch.float64)
    assert tiny.synthesise(feats).shape == (7 * 320,)
    assert tiny.synthesise(feats.expand(2, 7, 96)).shape == (2, 7 * 320)
    assert tiny.synthesise(torch.zeros(0, 96)).shape == (0,)
    with pytest.raises(ValueError, match="96"):
        tiny.synthesise(torch.zeros(7, 95))


def test_resblock2_forward_and_fold_are_consistent() -> None:
    torch.manual_seed(0)
    model = Generator(HifiganConfig(input_dim=8, hidden_dim=8, upsample_initial_channel=16, resblock="2"))
    assert "resblocks.0.convs.1.parametrizations.weight.original1" in model.state_dict()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        before = model(x)
        model.fold_weight_norm().fold_weight_norm()
        after = model(x)
    assert model.is_folded and before.shape == (1, 1, 5 * 320)
    torch.testing.assert_close(before, after)


def test_vocoder_never_imports_knnvc() -> None:
    code = "import sys, vocoder; sys.exit(any(m.split('.')[0] == 'knnvc' for m in sys.modules))"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
