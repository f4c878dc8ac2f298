"""Processes, devices and the trainable parts of a run (models, optimisers, schedulers, counters).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each process joins the group (NCCL on GPUs, gloo
on CPU), takes GPU ``LOCAL_RANK``, and wraps the generator and the discriminators in DDP.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import AdamW
from torch.optim.lr_scheduler import ExponentialLR

from vocoder.config import HifiganConfig
from vocoder.model import Generator
from vocoder.train import checkpointing as ckpt
from vocoder.train.config import TrainConfig
from vocoder.train.data import TrainingError
from vocoder.train.discriminators import Discriminators

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    def close(self) -> None:
        if self.distributed and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _single_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device={device!r} was asked for, but torch sees no CUDA GPU; use device='cpu'")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise TrainingError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group when there is one; else a single process on ``device``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(0, 1, _single_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    logger.info("DDP: rank %d of %d on %s", torch_dist.get_rank(), world_size, dev)
    return Dist(torch_dist.get_rank(), world_size, dev)


def unwrap(module: nn.Module) -> Any:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


@dataclass
class Parts:
    """Everything a step changes, and the counters a resume needs."""

    generator: nn.Module  # a Generator, or DDP around one
    discriminators: nn.Module  # Discriminators, or DDP around them
    optim_g: AdamW
    optim_d: AdamW
    sched_g: ExponentialLR
    sched_d: ExponentialLR
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def end_epoch(self) -> None:
        """Decay both learning rates (once per epoch, as HiFi-GAN) and start the next epoch."""
        self.sched_g.step()
        self.sched_d.step()
        self.epoch += 1
        self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """The contents of a ``state_*.pt`` file (tensors on whatever device; torch.save moves nothing)."""
        return {
            "generator": unwrap(self.generator).state_dict(),
            "discriminators": unwrap(self.discriminators).state_dict(),
            "optim_g": self.optim_g.state_dict(), "optim_d": self.optim_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.generator).load_state_dict(state["generator"])
        unwrap(self.discriminators).load_state_dict(state["discriminators"])
        self.optim_g.load_state_dict(state["optim_g"])
        self.optim_d.load_state_dict(state["optim_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])


def _optimiser(module: nn.Module, config: TrainConfig) -> AdamW:
    return AdamW(module.parameters(), lr=config.learning_rate, betas=(config.adam_b1, config.adam_b2),
                 weight_decay=config.weight_decay)


def build_parts(vocoder_config: HifiganConfig, config: TrainConfig, dist: Dist, run_dir: Path,
                init: Path | None) -> Parts:
    """Fresh models (or ``init``'s generator weights), resumed from ``run_dir``'s latest state if any."""
    torch.manual_seed(config.seed)
    state_file = ckpt.latest_state(run_dir)
    if init is not None and state_file is None:
        generator = ckpt.init_generator(init, vocoder_config)
    else:
        generator = Generator(vocoder_config)
    generator = generator.to(dist.device).train()
    discriminators = Discriminators(config.discriminator_scale).to(dist.device).train()
    optim_g, optim_d = _optimiser(generator, config), _optimiser(discriminators, config)
    parts = Parts(generator, discriminators, optim_g, optim_d,
                  ExponentialLR(optim_g, gamma=config.lr_decay), ExponentialLR(optim_d, gamma=config.lr_decay))
    if state_file is not None:
        try:
            parts.load_state_dict(ckpt.load_state(state_file, dist.device))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"{state_file}: does not fit this run's models ({exc})") from exc
        logger.info("resuming from %s (step %d, epoch %d)", state_file.name, parts.step, parts.epoch)
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        parts.generator = DistributedDataParallel(generator, device_ids=ids)
        parts.discriminators = DistributedDataParallel(discriminators, device_ids=ids)
    return parts
