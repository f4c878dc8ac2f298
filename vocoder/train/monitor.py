"""What a run shows while it trains: loss scalars, the loss-curve PNG and validation audio.

``RUN_DIR/losses.jsonl``: one JSON line per logged step (``{"step": N, "d_total": ..., ...}``), the source of
``RUN_DIR/losses.png`` (redrawn at every checkpoint, matplotlib's Agg backend) and of nothing else.
``RUN_DIR/tb/``: the same scalars for tensorboard (when the ``[train]`` extra is installed).
``RUN_DIR/samples/step_XXXXXXXX/<utt>.wav``: validation audio; ``samples/real/`` holds the targets.
Only rank 0 of a DDP run creates a :class:`Monitor`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import soundfile as sf
from torch import Tensor

logger = logging.getLogger(__name__)

LOSSES_FILE = "losses.jsonl"
PLOT_FILE = "losses.png"
PLOTTED = ("d_total", "g_adv", "g_fm", "g_mel", "val_mel")


class Monitor:
    """Writes scalars, plots and audio for one run (``resume_step``: drop records after it)."""

    def __init__(self, run_dir: Path, resume_step: int = 0) -> None:
        self.run_dir = run_dir
        self.losses_path = run_dir / LOSSES_FILE
        self._truncate(resume_step)
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed (pip install 'knnvc[train]'): scalars go to %s only",
                           self.losses_path)
        else:
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)

    def _truncate(self, step: int) -> None:
        """Forget records of steps after ``step`` (written after the checkpoint a resumed run starts from)."""
        if not self.losses_path.is_file():
            return
        kept = [line for line in self.read() if line["step"] <= step]
        self.losses_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def read(self) -> list[dict[str, float]]:
        """Every record in ``losses.jsonl``."""
        if not self.losses_path.is_file():
            return []
        lines = self.losses_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record scalars at ``step`` (JSON line and tensorboard)."""
        with self.losses_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}" if not name.startswith("val") else name, value, step)

    def plot(self) -> Path | None:
        """Redraw ``losses.png`` from ``losses.jsonl``; None when matplotlib is missing."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("matplotlib is not installed (pip install 'knnvc[train]'): no loss plot")
            return None
        records = self.read()
        fig, axes = plt.subplots(len(PLOTTED), 1, figsize=(8, 2.2 * len(PLOTTED)), sharex=True)
        for ax, name in zip(axes, PLOTTED, strict=True):
            points = [(r["step"], r[name]) for r in records if name in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
        fig.tight_layout()
        path = self.run_dir / PLOT_FILE
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def audio(self, step: int, name: str, wav: Tensor, sample_rate: int, real: Tensor | None = None) -> None:
        """Write (N,) validation audio for ``step`` (and, once, the real target) as 16-bit WAV."""
        folder = self.run_dir / "samples" / f"step_{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        safe = name.replace("/", "__")
        sf.write(folder / f"{safe}.wav", wav.float().clamp(-1, 1).cpu().numpy(), sample_rate, subtype="PCM_16")
        if self.writer is not None:
            self.writer.add_audio(f"val/{safe}", wav.float().cpu().reshape(1, -1), step, sample_rate=sample_rate)
        real_path = self.run_dir / "samples" / "real" / f"{safe}.wav"
        if real is not None and not real_path.is_file():
            real_path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(real_path, real.float().cpu().numpy(), sample_rate, subtype="PCM_16")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
