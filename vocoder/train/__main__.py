"""``python -m vocoder.train FEATURES_DIR --out RUN_DIR`` and, for several GPUs,
``torchrun --nproc_per_node=N -m vocoder.train FEATURES_DIR --out RUN_DIR``.

The same trainer as ``knnvc train vocoder``, with no knnvc import (argparse, not typer).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from vocoder.checkpoint import VocoderLoadError
from vocoder.train.config import TrainConfig, split_overrides
from vocoder.train.data import TrainingError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vocoder.train", description=__doc__)
    p.add_argument("features_dir", type=Path, help="folder written by `knnvc train prematch`")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed when it holds a state)")
    p.add_argument("--steps", type=int, help=f"total steps to reach (default {TrainConfig.max_steps})")
    p.add_argument("--batch-size", type=int, help=f"segments per GPU per step (default {TrainConfig.batch_size})")
    p.add_argument("--checkpoint-every", type=int, help=f"default {TrainConfig.checkpoint_every}")
    p.add_argument("--config", type=Path, help="JSON overrides (vocoder and training keys)")
    p.add_argument("--init", type=Path, help="generator checkpoint to fine-tune from")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: LOCAL_RANK)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vocoder.train.trainer import train

    try:
        overrides = json.loads(args.config.read_text(encoding="utf-8")) if args.config else {}
        vocoder_overrides, train_overrides = split_overrides(overrides)
        flags = {"max_steps": args.steps, "batch_size": args.batch_size, "checkpoint_every": args.checkpoint_every}
        config = TrainConfig.from_dict({**train_overrides, **{k: v for k, v in flags.items() if v is not None}})
        result = train(args.features_dir, args.out, config, vocoder_overrides=vocoder_overrides,
                       init=args.init, device=args.device)
    except (TrainingError, VocoderLoadError, OSError, ValueError) as exc:
        logging.getLogger("vocoder.train").error("%s", exc)
        return 2
    logging.getLogger("vocoder.train").info("stopped at step %d: %s", result.step, result.generator_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
