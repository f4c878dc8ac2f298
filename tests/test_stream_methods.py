"""Streaming with a fixed per-frame map (issue 22): a LinearVC pair, or an MKL-VC map fitted on the source
speaker's recordings. Each streamed frame is the map applied to the stream's own encoder frame, then the strength
blend; no kNN search runs. The stream-versus-offline difference is measured by ``bench/stream.py --method`` and
reported in docs/streaming.md.
"""

from __future__ import annotations

import io
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import knnvc.nn.matcher
import knnvc.pipeline
from knnvc.cli.stream import streaming, to_pcm16
from knnvc.errors import UsageError, VoiceError
from knnvc.nn.mkl import fit_mkl
from knnvc.options import ConvertOptions
from knnvc.pipeline import KnnVC
from knnvc.stream.settings import target_gain, voice_gain
from knnvc.stream.streamer import Streamer
from knnvc.voice import Pair, SourceFile, Voice
from tests.conftest import REF_DIR, SOURCE_WAV, SPEECH, TINY_VOCODER, TINY_WAVLM
from tests.fault_tools import MODELS, _tiny_voice, cli, micro_pipeline, no_model_loaded, one_line, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest

PAIR_SOURCE = SPEECH / "pair" / "source"  # the source speaker (the voice of source.wav)
QUIET = ConvertOptions(loudness=None)
EXACT = 1e-5  # the map adds no error of its own


@pytest.fixture(scope="module")
def vc() -> KnnVC:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def voice() -> Voice:
    return _tiny_voice()


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return np.asarray(sf.read(SOURCE_WAV, dtype="float32")[0])


@pytest.fixture(scope="module")
def linear_pair(vc: KnnVC) -> Pair:
    """LinearVC from the source speaker to the fixture references (least squares, not parallel)."""
    return vc.build_pair(PAIR_SOURCE, REF_DIR, trim=False)


@pytest.fixture(scope="module")
def speaker_frames(vc: KnnVC) -> torch.Tensor:
    """The source speaker's recordings encoded, stacked: what a speaker-level MKL map is fitted on."""
    return vc.build_voice(PAIR_SOURCE, trim=False).frames


def stream(streamer: Streamer, wav: np.ndarray, block: int = 1600) -> np.ndarray:
    """Push ``wav`` in ``block``-sample pieces, then flush; the whole output."""
    out = [streamer.push(wav[i : i + block]) for i in range(0, len(wav), block)]
    return np.concatenate([*out, streamer.flush()])


def recorded(streamer: Streamer) -> tuple[torch.Tensor, torch.Tensor]:
    """(the stream's own final encoder frames, what the vocoder got for each), both (T, D)."""
    assert streamer.features is not None and streamer.matched is not None
    return torch.cat(streamer.features), torch.cat(streamer.matched)


def check_mapped(found: torch.Tensor, frames: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``found`` is ``frames @ matrix + bias``, computed here in float64, within ``EXACT`` of its scale."""
    expected = frames.double() @ matrix.double() + (0 if bias is None else bias.double())
    assert found.shape == expected.shape
    assert float((found.double() - expected).abs().max()) <= EXACT * float(expected.abs().max())


def no_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any kNN search from here on fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a kNN search ran on the live path")

    for module in (knnvc.pipeline, knnvc.nn.matcher):
        monkeypatch.setattr(module, "knn_regression", refuse)
    monkeypatch.setattr(knnvc.nn.matcher, "knn_indices", refuse)


def test_a_pair_streams_its_map_of_the_streams_own_frames(
    linear_pair: Pair, source: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22: each streamed frame is W applied to that stream's own encoder frame, within 1e-5; the audio is
    those frames vocoded (exact seams); no kNN search runs and no matching set is held."""
    vc = tiny_pipeline()  # fresh: it holds no voice
    no_search(monkeypatch)
    streamer = Streamer(vc, linear_pair, QUIET, record=True)
    assert streamer.method == "linear"
    out = stream(streamer, source)
    frames, mapped = recorded(streamer)
    check_mapped(mapped, frames, linear_pair.matrix, None)
    assert len(out) == len(source)
    whole = vc.vocode(mapped)
    err = out[: len(whole)] - whole
    assert 10 * np.log10((whole**2).sum() / (err**2).sum()) > 60  # dB: the seams are exact
    assert not vc._held_voices  # no matching set was moved or normalised
    # The stream's own frames, not offline's: they differ (the encoder's bounded window), and the map follows them.
    offline = vc.encode(source, 16_000)
    assert frames.shape == offline.shape and not torch.allclose(frames, offline, atol=1e-4)


def test_the_strength_blend_follows_the_map(vc: KnnVC, linear_pair: Pair, source: np.ndarray) -> None:
    streamer = Streamer(vc, linear_pair, ConvertOptions(loudness=None, strength=0.5), record=True)
    stream(streamer, source[:16_000])
    frames, blended = recorded(streamer)
    expected = 0.5 * (frames.double() @ linear_pair.matrix.double()) + 0.5 * frames.double()
    assert float((blended.double() - expected).abs().max()) <= EXACT * float(expected.abs().max())


def test_mkl_with_source_speaker_streams_the_speaker_level_map(
    voice: Voice, speaker_frames: torch.Tensor, source: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--method mkl --source-speaker DIR`` (the CLI's loader): the map is MKL-VC's, fitted on the speaker's
    recordings against the target's frames, and each streamed frame is that map of the stream's own frame."""
    load = streaming(wavlm=str(TINY_WAVLM), vocoder=str(TINY_VOCODER), device="cpu", offline=True, trim=False,
                     loudness="none", method="mkl", mkl_block=4, source_speaker=PAIR_SOURCE)  # fmt: skip
    streamer = load(REF_DIR, 16_000, 16_000)
    pair = streamer.target
    assert isinstance(pair, Pair) and pair.method == "mkl" and pair.mkl_block == 4 and streamer.method == "mkl"
    fitted = fit_mkl(speaker_frames, voice.frames, 4)  # the speaker-level map, computed here
    assert torch.allclose(pair.matrix, fitted.matrix, atol=1e-8) and pair.bias is not None
    assert torch.allclose(pair.bias, fitted.bias, atol=1e-8)
    no_search(monkeypatch)
    streamer.features, streamer.matched = [], []  # record what this streamer computes
    stream(streamer, source)
    frames, mapped = recorded(streamer)
    check_mapped(mapped, frames, fitted.matrix, fitted.bias)


def test_a_pair_takes_its_loudness_from_its_target(vc: KnnVC, linear_pair: Pair, tmp_path: Path) -> None:
    """A pair holds no target frames: the fixed gain is measured on its target recordings, as a voice's on its
    frames; with them gone, one line says to give the loudness."""
    assert target_gain(vc, linear_pair, -16.0) == pytest.approx(voice_gain(vc, _tiny_voice(), -16.0), rel=1e-4)
    assert target_gain(vc, linear_pair, None) == 1.0
    moved = Pair.load(linear_pair.save(tmp_path / "moved.pair"))
    gone = SourceFile(path=str(tmp_path / "gone.wav"), sha256="", seconds=1.0)
    with pytest.raises(UsageError, match="--loudness none"):
        target_gain(vc, replace(moved, targets=(gone,)), -16.0)


def test_what_cannot_stream_is_refused(vc: KnnVC, voice: Voice, linear_pair: Pair) -> None:
    with pytest.raises(UsageError, match="whole source utterance.*--source-speaker"):
        Streamer(vc, voice, ConvertOptions(method="mkl"))
    with pytest.raises(UsageError, match="pair build"):
        Streamer(vc, voice, ConvertOptions(method="linear"))
    with pytest.raises(UsageError, match="holds a fixed map, LinearVC's map, not method mkl's"):
        Streamer(vc, linear_pair, ConvertOptions(method="mkl"))
    mkl_pair = replace(linear_pair, method="mkl", mkl_block=2)
    with pytest.raises(UsageError, match="a speaker-level MKL-VC map, not method linear's"):
        Streamer(vc, mkl_pair, ConvertOptions(method="linear"))
    assert Streamer(vc, mkl_pair, ConvertOptions(method="mkl", loudness=None)).method == "mkl"
    with pytest.raises(UsageError, match="a match layer is a control of kNN matching"):
        Streamer(vc, linear_pair, ConvertOptions(match_layer=3))
    with pytest.raises(UsageError, match="k=8 is a control of kNN matching"):
        Streamer(vc, linear_pair, ConvertOptions(k=8))
    other, _ = micro_pipeline()
    with pytest.raises(VoiceError, match="fitted with encoder"):
        Streamer(other, linear_pair, QUIET)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--method", "mkl"], "--method mkl needs --source-speaker DIR: MKL-VC fits its map on the source's"),
     (["--method", "linear"], "--method linear streams a pair's map: give a .pair"),
     (["--source-speaker", str(PAIR_SOURCE)], "give --method mkl with it"),
     (["--method", "mkl", "--mkl-block", "0"], "--mkl-block")],
)  # fmt: skip
def test_cli_method_errors_are_one_line(unloadable: list[str], args: list[str], message: str) -> None:
    result = cli("stream", REF_DIR, *unloadable, *args)
    assert result.exit_code == 2 and message in one_line(result)
    no_model_loaded(result)
    assert result.stdout == ""


def test_cli_source_speaker_with_a_pair_is_one_line(unloadable: list[str], tmp_path: Path) -> None:
    result = cli("stream", tmp_path / "me2alice.pair", *unloadable, "--method", "mkl", "--source-speaker", PAIR_SOURCE)
    assert result.exit_code == 2 and "is a pair, a map already fitted" in one_line(result)
    no_model_loaded(result)


def test_cli_streams_a_pair_file_through_the_pipe(
    linear_pair: Pair, source: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``knnvc stream me2alice.pair < in.pcm > out.pcm`` in this process (stdin and stdout real files): the ready
    line names the map, and the PCM out is the in-process stream's, exactly as long as the input."""
    import typer

    from knnvc.cli import app

    pair_file = linear_pair.save(tmp_path / "me2alice.pair")
    wav = source[:32_000]
    (tmp_path / "in.pcm").write_bytes(to_pcm16(wav))
    with open(tmp_path / "in.pcm", "rb") as fin, open(tmp_path / "out.pcm", "wb") as fout:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(fin))
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(fout))
        monkeypatch.setenv("KNNVC_OFFLINE", "1")
        command = typer.main.get_command(app)
        with pytest.raises(SystemExit) as done:
            command.main(["stream", str(pair_file), *MODELS, "--loudness", "none"], prog_name="knnvc")
    assert done.value.code in (0, None)
    assert "LinearVC map of pair 'source2ref', no search; chunk 100 ms" in capfd.readouterr().err
    got = np.frombuffer((tmp_path / "out.pcm").read_bytes(), "<i2").astype(np.float32) / 32768
    fed = np.frombuffer(to_pcm16(wav), "<i2").astype(np.float32) / 32768
    expected = stream(Streamer(tiny_pipeline(), Pair.load(pair_file), QUIET), fed)
    assert len(got) == len(wav) and np.abs(got - expected).max() < 5e-3
