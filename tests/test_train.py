"""Train your own vocoder, on CPU with the tiny fixtures: prematch, train, resume, convert with the result."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REF_DIR, SOURCE_WAV, TINY_WAVLM
from typer.testing import CliRunner

from knnvc.cli import app
from knnvc.errors import OutputError, UsageError
from knnvc.options import PipelineSettings
from knnvc.train.prematch import prematch, prematch_features
from knnvc.train.speakers import discover
from vocoder import Generator, load_generator
from vocoder.train import UPSAMPLE_PRESETS, TrainConfig, TrainingError, vocoder_config_for
from vocoder.train.data import read_index, read_utterance
from vocoder.train.losses import LogMelSpectrogram, mel_filterbank
from vocoder.train.setup import Dist, build_parts
from vocoder.train.trainer import evaluate_mel, train

runner = CliRunner()
CPU = PipelineSettings("cpu", "fp32")
TINY_VOCODER = {"hidden_dim": 48, "upsample_initial_channel": 64}  # as tests/fixtures/vocoder_tiny
FAST = {
    "segment_size": 2560,
    "discriminator_scale": 0.125,
    "val_utterances": 1,
    "num_workers": 0,
    "checkpoint_every": 5,
    "keep_states": 4,
    "log_every": 1,
    "batch_size": 2,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """spk1: the three references (ch1); spk2: the source in three pieces over two chapters, plus one too
    short; spk3: a single utterance (nothing to match against)."""
    root = tmp_path_factory.mktemp("data")
    (root / "spk1" / "ch1").mkdir(parents=True)
    for ref in sorted(REF_DIR.glob("*.wav")):
        shutil.copy(ref, root / "spk1" / "ch1" / ref.name)
    wav, rate = sf.read(SOURCE_WAV, dtype="float32")
    for i, piece in enumerate(np.array_split(wav, 3)):
        chapter = root / "spk2" / ("ch1" if i < 2 else "ch2")
        chapter.mkdir(parents=True, exist_ok=True)
        sf.write(chapter / f"src_{i}.wav", piece, rate)
    sf.write(root / "spk2" / "ch1" / "short.wav", wav[:2000], rate)  # 6 frames
    (root / "spk3" / "ch1").mkdir(parents=True)
    sf.write(root / "spk3" / "ch1" / "only.wav", wav[:16000], rate)
    return root


@pytest.fixture(scope="module")
def features_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features")
    result = runner.invoke(
        app,
        [
            "train",
            "prematch",
            str(data_dir),
            str(out),
            "--wavlm",
            str(TINY_WAVLM),
            "--device",
            "cpu",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps({**TINY_VOCODER, **FAST}))
    return path


@pytest.fixture(scope="module")
def run20(features_dir: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run20")
    result = runner.invoke(
        app,
        [
            "train",
            "vocoder",
            str(features_dir),
            "--out",
            str(run),
            "--steps",
            "20",
            "--config",
            str(config_file),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    return run


def test_prematch_layout_and_report(features_dir: Path) -> None:
    index = read_index(features_dir)
    ids = [e.id for e in index.entries]
    # spk2's ch2 has one utterance: pooled by chapter it would be lost; pooled by speaker it is kept.
    assert ids == [
        "spk1/ch1/ref_01",
        "spk1/ch1/ref_02",
        "spk1/ch1/ref_03",
        "spk2/ch1/src_0",
        "spk2/ch1/src_1",
        "spk2/ch2/src_2",
    ]
    assert (index.sample_rate, index.hop, index.feature_dim, index.settings["k"]) == (16000, 320, 96, 4)
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads((features_dir / "skipped.json").read_text())}
    assert set(skipped) == {"short.wav", "only.wav"}
    assert "too short" in skipped["short.wav"] and "no other usable utterance" in skipped["only.wav"]
    from safetensors.torch import load_file

    tensors = load_file(features_dir / "spk2" / "ch2" / "src_2.safetensors")
    assert tensors["features"].dtype == torch.float16 and tensors["audio"].dtype == torch.int16
    assert tensors["audio"].shape[0] == tensors["features"].shape[0] * 320


def test_prematch_resumes_and_refuses_other_settings(data_dir: Path, features_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "copy"
    shutil.copytree(features_dir, out)
    removed = out / "spk1" / "ch1" / "ref_02.safetensors"
    before = load_file(removed)
    removed.unlink()
    from knnvc.weights.formats import load_encoder

    encoder = load_encoder(TINY_WAVLM)
    report = prematch(data_dir, out, encoder=encoder, settings=CPU)
    assert (report.written, report.existing, len(report.skipped)) == (1, 5, 2)
    assert len(read_index(out).entries) == 6
    again = load_file(removed)  # only it is matched again, against the same pool: the same features
    assert torch.equal(again["audio"], before["audio"])
    torch.testing.assert_close(again["features"].float(), before["features"].float(), rtol=0, atol=2e-3)
    with pytest.raises(UsageError, match="other settings"):
        prematch(data_dir, out, encoder=encoder, settings=CPU, k=2)


def test_pool_is_the_other_utterances_of_the_speaker() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(n, 8, generator=gen) for n in (30, 20, 25))
    out = prematch_features([a, b, c], k=1)
    others = torch.cat([b, c])
    for frame in out[0]:  # every frame of a's result is a frame of b or c, never of a itself
        assert (others == frame).all(dim=1).any()
        assert not (a == frame).all(dim=1).any()
    # a duplicate utterance of the speaker is found, so a's frames come back exactly from the copy
    assert torch.equal(prematch_features([a, a.clone(), b], k=1)[0], a)
    # and k nearest are averaged: with k = all frames of the pool, every frame maps to the pool mean
    mean = prematch_features([a, b], k=20)[0]
    torch.testing.assert_close(mean, b.mean(0).expand_as(a))


def test_pool_match_equals_matching_each_against_the_others() -> None:
    """One pool per speaker, each frame's own utterance excluded: every utterance's result equals matching it
    against a copy of the others (the old way)."""
    from knnvc.nn.matcher import knn_regression

    gen = torch.Generator().manual_seed(1)
    items = [torch.randn(n, 16, generator=gen) for n in (40, 7, 33, 25)]
    got = prematch_features(items, k=4)
    for i, item in enumerate(items):
        others = torch.cat([x for j, x in enumerate(items) if j != i])
        torch.testing.assert_close(got[i], knn_regression(item, others, 4))


def test_prematch_encodes_through_the_pipeline(data_dir: Path, tmp_path: Path) -> None:
    """Prematch encodes as voices do (``KnnVC.encode_many``: windows, out-of-memory retries, precision): with 1 s
    windows its features are the pipeline's windowed encodings matched within the speaker, not whole-file ones."""
    from safetensors.torch import load_file

    from knnvc.pipeline import KnnVC
    from knnvc.weights.formats import load_encoder

    encoder = load_encoder(TINY_WAVLM)
    windowed = PipelineSettings("cpu", "fp32", window_seconds=1.0, context_seconds=0.5)
    data = tmp_path / "data"
    shutil.copytree(data_dir / "spk1", data / "spk1")
    report = prematch(data, tmp_path / "out", encoder=encoder, settings=windowed)
    assert report.written == 3 and read_index(tmp_path / "out").settings["precision"] == "float32"
    refs = sorted(REF_DIR.glob("*.wav"))
    wavs = [sf.read(ref, dtype="float32")[0] for ref in refs]
    expected = prematch_features(KnnVC(encoder, None, windowed).encode_many(wavs), k=4)
    whole = prematch_features(KnnVC(encoder, None, CPU).encode_many(wavs), k=4)
    for ref, want, other in zip(refs, expected, whole, strict=True):
        got = load_file(tmp_path / "out" / "spk1" / "ch1" / f"{ref.stem}.safetensors")["features"].float()
        torch.testing.assert_close(got, want, rtol=0, atol=2e-3)  # stored as float16
        assert not torch.allclose(got, other, rtol=0, atol=2e-2)  # the windows show


@pytest.mark.parametrize("command", ["prematch", "vocoder"])
@pytest.mark.parametrize("fault", ["under_a_file", "permission_denied"])
def test_training_into_a_folder_that_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path, command: str, fault: str
) -> None:
    """One line and exit code 6, before any model loads; permission is simulated (tests often run as root)."""
    import builtins

    from knnvc import files

    if fault == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        target = tmp_path / "a_file" / "out"
    else:
        target = tmp_path / "locked"
        real_open = builtins.open

        def guarded(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
            if any(c in mode for c in "wax+") and Path(os.fsdecode(file)).parent == target:  # type: ignore[arg-type]
                raise PermissionError(13, "Permission denied", os.fsdecode(file))  # type: ignore[arg-type]
            return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(files, "open", guarded, raising=False)
    if command == "prematch":
        args = ["train", "prematch", str(data_dir), str(target), "--wavlm", str(tmp_path / "never-loaded.pt")]
    else:
        args = ["train", "vocoder", str(tmp_path), "--out", str(target), "--init", "prematched", "--offline"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == OutputError.exit_code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    words = "a part of its folder path is a file" if fault == "under_a_file" else "permission denied"
    assert str(target) in errors[0] and words in errors[0] and "choose" in errors[0]


def test_big_speakers_are_matched_in_bounded_pools(tmp_path: Path) -> None:
    from knnvc.train.speakers import Utterance, pool_groups

    utts = []
    for i, seconds in enumerate([1, 1, 1, 1, 1, 1, 3]):
        sf.write(tmp_path / f"u{i}.wav", np.zeros(16000 * seconds, dtype=np.float32), 16000)
        utts.append(Utterance(f"s/u{i}", "s", tmp_path / f"u{i}.wav"))
    assert pool_groups(utts, 60.0) == [utts]
    groups = pool_groups(utts, 3.0)  # 9 s -> pools of about 3 s; the lone 3 s utterance joins the last pool
    assert [[u.id[-1] for u in g] for g in groups] == [["0", "1", "2"], ["3", "4", "5", "6"]]


def test_manifest_speakers(tmp_path: Path, data_dir: Path) -> None:
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "speaker"])
        writer.writerow(["spk1/ch1/ref_01.wav", "alice"])
        writer.writerow([str(data_dir / "spk2" / "ch1" / "src_0.wav"), "alice"])
        writer.writerow(["spk2/ch2/src_2.wav", "bob"])
    utts, _ = discover(data_dir, manifest)
    assert [(u.id, u.speaker) for u in utts] == [
        ("alice/spk1/ch1/ref_01", "alice"),
        ("alice/spk2/ch1/src_0", "alice"),
        ("bob/spk2/ch2/src_2", "bob"),
    ]
    manifest.write_text("file,who\nx.wav,a\n")
    with pytest.raises(UsageError, match="path,speaker"):
        discover(data_dir, manifest)


def _validation_batch(features_dir: Path, frames: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    index = read_index(features_dir)
    pairs = [read_utterance(features_dir / e.file, 0, frames) for e in index.entries[:3]]
    return torch.stack([f for f, _ in pairs]), torch.stack([a for _, a in pairs])


@pytest.mark.slow  # 20 training steps (the run20 fixture): ~6 s on 2 cores
def test_training_lowers_mel_loss_and_converts(run20: Path, features_dir: Path, tmp_path: Path) -> None:
    index = read_index(features_dir)
    vcfg = vocoder_config_for(16000, 96, TINY_VOCODER)
    torch.manual_seed(TrainConfig().seed)  # the trainer's initial generator
    before = Generator(vcfg)
    after = load_generator(run20 / "g_00000020.pt")
    n_fft, win = TrainConfig().stft_sizes(16000)
    mel = LogMelSpectrogram(16000, n_fft, index.hop, win)
    feats, wav = _validation_batch(features_dir)
    loss_before, loss_after = evaluate_mel(before, feats, wav, mel), evaluate_mel(after, feats, wav, mel)
    assert loss_after < 0.8 * loss_before, (loss_before, loss_after)

    saved = torch.load(run20 / "g_00000020.pt", weights_only=True)
    assert saved["step"] == 20 and saved["config"]["input_dim"] == 96
    records = [json.loads(line) for line in (run20 / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "g_mel" in r] == list(range(1, 21))
    assert [r["step"] for r in records if "val_mel" in r] == [5, 10, 15, 20]
    assert (run20 / "losses.png").stat().st_size > 0 and any((run20 / "tb").iterdir())
    assert len(list((run20 / "samples" / "step_00000020").glob("*.wav"))) == 1

    out = tmp_path / "out.wav"
    result = runner.invoke(
        app,
        [
            "convert",
            str(SOURCE_WAV),
            str(REF_DIR),
            "-o",
            str(out),
            "--wavlm",
            str(TINY_WAVLM),
            "--vocoder",
            str(run20 / "g_00000020.pt"),
            "--device",
            "cpu",
            "--no-trim",
            "--loudness",
            "none",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    converted, rate = sf.read(out)
    assert rate == 16000 and converted.shape[0] == sf.info(SOURCE_WAV).frames
    assert np.isfinite(converted).all() and np.abs(converted).max() > 0


@pytest.mark.slow  # shares the 20-step run with the test above
def test_resume_continues_step_and_optimiser(
    run20: Path, features_dir: Path, config_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "resumed"
    run.mkdir()
    for name in ("state_00000015.pt", "run.json"):  # 5 of 6 utterances train, 2 a batch: 15 is mid-epoch
        shutil.copy(run20 / name, run / name)
    saved = torch.load(run / "state_00000015.pt", weights_only=True)
    assert (saved["epoch"], saved["batch_in_epoch"]) == (7, 1)
    cfg = TrainConfig.from_dict({k: v for k, v in FAST.items()})
    parts = build_parts(vocoder_config_for(16000, 96, TINY_VOCODER), cfg, Dist(0, 1, torch.device("cpu")), run, None)
    assert (parts.step, parts.epoch, parts.batch_in_epoch) == (15, 7, 1)
    restored = parts.optim_g.state_dict()["state"]
    for key, value in saved["optim_g"]["state"].items():
        torch.testing.assert_close(restored[key]["exp_avg"], value["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(restored[key]["exp_avg_sq"], value["exp_avg_sq"], rtol=0, atol=0)
    assert parts.sched_g.state_dict() == saved["sched_g"]

    result = runner.invoke(
        app,
        [
            "train",
            "vocoder",
            str(features_dir),
            "--out",
            str(run),
            "--steps",
            "20",
            "--config",
            str(config_file),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "g_mel" in r] == list(range(16, 21))
    # Data order and segments are keyed by (seed, epoch, index), so 15 + 5 steps equal 20 uninterrupted ones.
    resumed = torch.load(run / "g_00000020.pt", weights_only=True)["generator"]
    straight = torch.load(run20 / "g_00000020.pt", weights_only=True)["generator"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # two processes training together: ~8 s on 2 cores
def test_ddp_two_processes_on_cpu(features_dir: Path, config_file: Path, tmp_path: Path) -> None:
    """The torchrun entry point with two gloo processes: the DDP path runs and rank 0 writes the checkpoint."""
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vocoder.train",
        str(features_dir),
        "--out",
        str(run),
        "--steps",
        "2",
        "--config",
        str(config_file),
        "--device",
        "cpu",
    ]
    done = subprocess.run(
        cmd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2" in done.stderr
    assert load_generator(run / "g_00000002.pt").config.input_dim == 96


def test_other_sample_rate(data_dir: Path, tmp_path: Path) -> None:
    """24 kHz: the audio is stored at 24 kHz (480 samples a frame) and the generator upsamples 10*8*3*2."""
    from knnvc.weights.formats import load_encoder

    data = tmp_path / "data"
    shutil.copytree(data_dir / "spk1", data / "spk1")
    report = prematch(data, tmp_path / "f24", encoder=load_encoder(TINY_WAVLM), settings=CPU, sample_rate=24000)
    index = read_index(tmp_path / "f24")
    assert report.below_rate == len(index.entries) == 3  # the fixtures are 16 kHz files: reported as upsampled
    feats, audio = read_utterance(tmp_path / "f24" / index.entries[0].file)
    assert index.hop == 480 and audio.shape[0] == feats.shape[0] * 480
    cfg = TrainConfig.from_dict({**FAST, "segment_size": 8 * 480, "max_steps": 2, "checkpoint_every": 2})
    result = train(tmp_path / "f24", tmp_path / "run", cfg, vocoder_overrides=TINY_VOCODER, device="cpu")
    generator = load_generator(result.generator_path)
    assert generator.config.sample_rate == 24000 and generator.synthesise(feats[:5]).shape == (5 * 480,)


def test_vocoder_configs_per_rate() -> None:
    for rate, (ups, kernels) in UPSAMPLE_PRESETS.items():
        cfg = vocoder_config_for(rate, 1024)
        assert cfg.hop * 50 == rate and cfg.upsample_rates == ups and cfg.upsample_kernel_sizes == kernels
    with pytest.raises(TrainingError, match="multiply to 320"):
        vocoder_config_for(24000, 1024, {"upsample_rates": [10, 8, 2, 2], "upsample_kernel_sizes": [20, 16, 4, 4]})
    with pytest.raises(TrainingError, match="multiple of the 50 Hz"):
        vocoder_config_for(16010, 1024)


def test_published_hyperparameters_and_original_config_file() -> None:
    from conftest import TINY_VOCODER_CONFIG

    from vocoder.train import split_overrides

    cfg = TrainConfig()
    published = (2e-4, 0.8, 0.99, 0.999, 7040, 16)
    assert (cfg.learning_rate, cfg.adam_b1, cfg.adam_b2, cfg.lr_decay, cfg.segment_size, cfg.batch_size) == published
    assert cfg.segment_frames(16000) == 22 and cfg.stft_sizes(16000) == (1024, 1024) and cfg.mel_weight == 45
    vocoder_keys, train_keys = split_overrides(json.loads(TINY_VOCODER_CONFIG.read_text()))  # original key names
    assert vocoder_config_for(16000, 96, vocoder_keys).hidden_dim == 48
    assert TrainConfig.from_dict(train_keys).batch_size == 16
    with pytest.raises(TrainingError, match="unknown config keys"):
        split_overrides({"learning_rat": 1e-4})


def test_mel_filterbank_matches_slaney() -> None:
    from transformers.audio_utils import mel_filter_bank

    ours = mel_filterbank(16000, 1024, 80, 0.0, 8000.0)
    ref = mel_filter_bank(
        num_frequency_bins=513,
        num_mel_filters=80,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(ours, ref.T, rtol=1e-4, atol=1e-7)


def test_vocoder_command_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "vocoder", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == UsageError.exit_code
    assert "index.json" in result.output and "Traceback" not in result.output
