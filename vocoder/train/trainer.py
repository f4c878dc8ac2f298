"""The HiFi-GAN training loop: one process, or one per GPU under ``torchrun`` (DDP).

Each step: the generator maps a batch of prematched segments (B, F, D) at 50 Hz to audio (B, 1, F * hop);
the discriminators (MPD + MSD) take one least-squares GAN step on real vs generated audio; then the generator
takes one step on adversarial + feature-matching + 45 x mel-L1 loss. AdamW (0.8, 0.99), lr 2e-4, decayed by
0.999 at the end of every epoch. bf16 autocast on CUDA only. The run resumes from its latest state file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from vocoder.config import HifiganConfig
from vocoder.model import Generator
from vocoder.train import checkpointing as ckpt
from vocoder.train.config import TrainConfig, vocoder_config_for
from vocoder.train.data import Entry, EpochSampler, FeatureIndex, PrematchedDataset, TrainingError, read_index
from vocoder.train.data import read_utterance as read_full
from vocoder.train.losses import (
    LogMelSpectrogram,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_loss,
)
from vocoder.train.monitor import Monitor
from vocoder.train.setup import Dist, Parts, build_parts, setup_distributed, unwrap

__all__ = ["TrainConfig", "TrainResult", "evaluate_mel", "train"]

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, Mapping[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    """Where a run stopped: its step, the last generator file written, and the last step's losses."""

    step: int
    generator_path: Path | None
    losses: dict[str, float]


def _split(index: FeatureIndex, config: TrainConfig, world_size: int) -> tuple[list[Entry], list[Entry]]:
    """(train, validation) entries: ``val_utterances`` chosen by a seeded shuffle, the rest for training."""
    order = np.random.default_rng(config.seed).permutation(len(index.entries))
    n_val = min(config.val_utterances, max(0, len(order) - 1))
    val = sorted((index.entries[i] for i in order[:n_val]), key=lambda e: e.id)
    train = [e for e in index.entries if e not in val]
    if len(train) < config.batch_size * world_size:
        raise TrainingError(
            f"{index.root}: {len(train)} training utterances ({n_val} held out for validation) cannot fill one "
            f"batch of {config.batch_size} on {world_size} process(es); lower batch_size or add data"
        )
    return train, val


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _halves(xs: list[Tensor], n: int) -> tuple[list[Tensor], list[Tensor]]:
    return [x[:n] for x in xs], [x[n:] for x in xs]


def train_step(parts: Parts, mel: LogMelSpectrogram, batch: tuple[Tensor, Tensor], config: TrainConfig,
               device: torch.device) -> dict[str, float]:
    """One discriminator and one generator update on features (B, F, D) and audio (B, F * hop)."""
    feats, wav = (t.to(device, non_blocking=True) for t in batch)
    real = wav.unsqueeze(1)  # (B, 1, N)
    n = real.shape[0]
    with _autocast(device):
        fake = parts.generator(feats)  # (B, 1, N)
        scores, _ = parts.discriminators(torch.cat([real, fake.detach()]))
        loss_d = discriminator_loss(*_halves(scores, n))
    parts.optim_d.zero_grad(set_to_none=True)
    loss_d.backward()
    parts.optim_d.step()

    with _autocast(device):
        scores, fmaps = parts.discriminators(torch.cat([real, fake]))
        loss_adv = generator_adversarial_loss(_halves(scores, n)[1])
        loss_fm = feature_matching_loss([[m[:n] for m in f] for f in fmaps], [[m[n:] for m in f] for f in fmaps])
    loss_mel = mel_loss(mel, real, fake)
    loss_g = loss_adv + loss_fm + config.mel_weight * loss_mel
    parts.optim_g.zero_grad(set_to_none=True)
    loss_g.backward()
    parts.optim_g.step()
    return {"d_total": loss_d.item(), "g_adv": loss_adv.item(), "g_fm": loss_fm.item(),
            "g_mel": loss_mel.item(), "g_total": loss_g.item(), "lr": parts.optim_g.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate_mel(generator: Generator, features: Tensor, audio: Tensor, mel: LogMelSpectrogram) -> float:
    """Mel L1 of ``generator`` (in eval mode, then restored) on features (B, F, D) vs audio (B, F * hop)."""
    was_training = generator.training
    generator.eval()
    try:
        fake = generator(features.to(generator.device, generator.dtype))
        return mel_loss(mel, audio.to(fake.device).unsqueeze(1), fake).item()
    finally:
        generator.train(was_training)


def _validate(generator: Generator, index: FeatureIndex, val: list[Entry], mel: LogMelSpectrogram,
              monitor: Monitor, step: int, max_seconds: float) -> float | None:
    """Synthesise each validation utterance (up to ``max_seconds``), write it, return the mean mel L1."""
    losses = []
    max_frames = max(1, int(max_seconds * index.sample_rate / index.hop))
    for entry in val:
        feats, audio = read_full(index.root / entry.file, 0, min(entry.frames, max_frames))
        losses.append(evaluate_mel(generator, feats[None], audio[None], mel))
        generator.eval()
        wav = generator.synthesise(feats.to(generator.device))
        generator.train()
        monitor.audio(step, entry.id, wav, index.sample_rate, real=audio)
    return float(np.mean(losses)) if losses else None


def _checkpoint(parts: Parts, dist: Dist, run_dir: Path, config: TrainConfig, monitor: Monitor | None,
                val: tuple[FeatureIndex, list[Entry], LogMelSpectrogram]) -> Path | None:
    """Rank 0 writes g/state files, validation audio, the val mel loss and the loss plot."""
    path = None
    if dist.rank == 0 and monitor is not None:
        generator = unwrap(parts.generator)
        path = ckpt.save_checkpoint(run_dir, parts.state_dict(), generator, config.keep_states)
        val_mel = _validate(generator, *val, monitor, parts.step, config.val_max_seconds)
        if val_mel is not None:
            monitor.log(parts.step, {"val_mel": val_mel})
        monitor.plot()
        logger.info("step %d: wrote %s", parts.step, path.name)
    dist.barrier()
    return path


def train(
    features_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    vocoder_overrides: Mapping[str, Any] | None = None,
    init: str | os.PathLike[str] | None = None,
    device: str = "auto",
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train (or resume training) a HiFi-GAN on a prematched features folder, up to ``config.max_steps``.

    Args:
        features_dir: written by ``knnvc train prematch`` (see :mod:`vocoder.train.data`).
        run_dir: checkpoints, logs and samples; resumed from its latest ``state_*.pt`` when present.
        vocoder_overrides: generator config keys (``upsample_rates``, ``hidden_dim``, ...) over the preset for
            the data's sample rate. A resumed run keeps its recorded config.
        init: a generator checkpoint to start from (fine-tuning); ignored when resuming.
        device: auto, cpu, cuda or cuda:N (under torchrun: each process's ``LOCAL_RANK`` GPU).
        on_step: called on rank 0 after every step with the step and its losses.

    Raises:
        TrainingError: bad data, config or state; VocoderLoadError: an unusable ``init`` checkpoint.
    """
    config = config or TrainConfig()
    run_dir = Path(run_dir)
    dist = setup_distributed(device)
    try:
        return _run(Path(features_dir), run_dir, config, vocoder_overrides or {}, init, dist, on_step)
    finally:
        dist.close()


def _resolve_config(index: FeatureIndex, run_dir: Path, overrides: Mapping[str, Any]) -> HifiganConfig:
    cfg = vocoder_config_for(index.sample_rate, index.feature_dim, overrides)
    recorded = ckpt.read_run_config(run_dir)
    if recorded is None or recorded == cfg:
        return cfg
    if overrides:
        raise TrainingError(f"{run_dir} was started with another vocoder config ({recorded.to_dict()}); "
                                "use a new run folder or the same config overrides")
    return vocoder_config_for(index.sample_rate, index.feature_dim, recorded.to_dict())


def _run(features_dir: Path, run_dir: Path, config: TrainConfig, overrides: Mapping[str, Any],
         init: str | os.PathLike[str] | None, dist: Dist, on_step: StepCallback | None) -> TrainResult:
    index = read_index(features_dir)
    vcfg = _resolve_config(index, run_dir, overrides)
    train_entries, val_entries = _split(index, config, dist.world_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = build_parts(vcfg, config, dist, run_dir, Path(init) if init else None)
    n_fft, win = config.stft_sizes(index.sample_rate)
    mel = LogMelSpectrogram(index.sample_rate, n_fft, index.hop, win, config.num_mels, config.fmin,
                            config.fmax_for_loss).to(dist.device)
    monitor = None
    if dist.rank == 0:
        ckpt.write_run_file(run_dir, vcfg, {"train": asdict(config), "features": str(features_dir.resolve())})
        monitor = Monitor(run_dir, resume_step=parts.step)
    dataset = PrematchedDataset(index, train_entries, config.segment_frames(index.sample_rate), config.seed)
    sampler = EpochSampler(len(dataset), seed=config.seed, rank=dist.rank, world_size=dist.world_size)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.num_workers, pin_memory=dist.device.type == "cuda",
                        persistent_workers=config.num_workers > 0)
    val = (index, val_entries, mel)
    last_path: Path | None = None
    losses: dict[str, float] = {}
    try:
        while parts.step < config.max_steps:
            sampler.set_epoch(parts.epoch, skip=parts.batch_in_epoch * config.batch_size)
            for batch in loader:
                losses = train_step(parts, mel, batch, config, dist.device)
                parts.step += 1
                parts.batch_in_epoch += 1
                if monitor is not None and (parts.step % config.log_every == 0 or parts.step == 1):
                    monitor.log(parts.step, losses)
                if on_step is not None and dist.rank == 0:
                    on_step(parts.step, losses)
                if parts.step % config.checkpoint_every == 0 or parts.step >= config.max_steps:
                    last_path = _checkpoint(parts, dist, run_dir, config, monitor, val) or last_path
                if parts.step >= config.max_steps:
                    break
            else:
                parts.end_epoch()
    finally:
        if monitor is not None:
            monitor.close()
    return TrainResult(parts.step, last_path, losses)
