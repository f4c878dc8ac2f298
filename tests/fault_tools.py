"""Helpers shared by the fault tests (``tests/test_faults_*.py``): CLI runs, audio writers, checks.

The models are the tiny fixture checkpoints, loaded once per process through ``knnvc.weights.loaded``'s cache; the
property test also uses ``micro_pipeline``, a smaller random-weight pipeline for its long inputs.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from typer.testing import CliRunner, Result

from knnvc.cli import app
from knnvc.errors import EXIT_CODES
from knnvc.nn.encoder import WavLMEncoder
from knnvc.options import Models, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.progress import Job, Progress
from knnvc.voice import Voice
from tests.conftest import REF_DIR, TINY_VOCODER, TINY_WAVLM
from vocoder import Generator, HifiganConfig

MODELS = ["--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER), "--device", "cpu"]
FAST = [*MODELS, "--no-trim"]
SR = 16_000
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli(*args: object, env: dict[str, str] | None = None) -> Result:
    """``knnvc ARGS`` in process, offline; stdout and stderr apart. Unexpected exceptions are NOT re-raised."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"KNNVC_OFFLINE": "1", **(env or {})})


def check_clean(result: Result) -> None:
    """No traceback, no escaped exception, and an exit status from the documented table."""
    assert result.exit_code in EXIT_CODES, (result.exit_code, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def one_line(result: Result) -> str:
    """The one error line (``error: ...`` or ``failed: FILE: ...``) a command with one bad input prints."""
    check_clean(result)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "failed:"))]
    assert len(lines) == 1, result.stderr
    return lines[0]


def json_summary(result: Result) -> dict[str, Any]:
    check_clean(result)
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def last_frame(written: str, first_row: str) -> list[str]:
    """The rows a terminal shows at the end of ``written``, the text a live display wrote to it (frames redrawn in
    place by carriage returns and cursor moves): ANSI codes removed, from the last row that starts with
    ``first_row`` (the display's top row) to the end; [] when no such row was drawn."""
    rows = [row.strip() for row in re.split(r"[\r\n]", ANSI.sub("", written)) if row.strip()]
    tops = [i for i, row in enumerate(rows) if row.startswith(first_row)]
    return rows[tops[-1] :] if tops else []


def no_model_loaded(result: Result) -> None:
    """The command failed on something other than the (missing) weights of the ``unloadable`` fixture: nothing
    tried to load them."""
    from knnvc.errors import WeightsError

    assert result.exit_code != WeightsError.exit_code and "never-loaded" not in result.output, result.output


def bar_rows(capsys: Any, jobs: list[Job], steps: list[tuple[float, Progress]]) -> list[str]:
    """The rows ``knnvc convert``'s progress bar shows on a terminal once ``steps`` (at each one's clock time, in
    seconds) have reached it: the view is closed right after them, so its last frame is what was on screen.
    ``capsys`` is pytest's fixture (the view writes to stderr)."""
    from knnvc.cli.view import BatchView

    now = [0.0]
    capsys.readouterr()
    with BatchView(jobs, show=True, verbose=False, clock=lambda: now[0]) as view:
        for at, event in steps:
            now[0] = at
            view.on_event(event)
    return last_frame(capsys.readouterr().err, "converting")


def tone(seconds: float, rate: int = SR, channels: int = 1, *, level: float = 0.3, seed: int = 0) -> np.ndarray:
    """A voiced-ish test signal (two tones and a little noise), (N, C) float32."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    mono = level * (0.6 * np.sin(2 * np.pi * 180 * t) + 0.3 * np.sin(2 * np.pi * 1230 * t))
    data = mono[:, None] * np.linspace(1.0, 0.6, channels)[None, :] + 0.01 * rng.standard_normal((n, channels))
    return data.astype(np.float32)


def write_audio(path: Path, seconds: float, rate: int = SR, channels: int = 1, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, channels), rate, subtype=subtype)
    return path


def temp_files(folder: Path) -> list[Path]:
    """Temporary files ``write.save`` or ``Voice.save`` would leave after a crash (none should remain)."""
    return sorted(p for p in folder.rglob(".*") if p.name.endswith((".tmp", ".part")))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads. The tiny models on sub-second clips are 10x faster on one thread than
    on two when the machine is busy (thread hand-offs dominate), which keeps these many-file tests quick."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_pipeline(batch_size: int | None = None) -> KnnVC:
    """A fresh ``KnnVC`` around the cached tiny models (fresh, so out-of-memory state never leaks); ``batch_size``
    None is the CPU's (1)."""
    return KnnVC.from_pretrained(Models(TINY_WAVLM, TINY_VOCODER, PipelineSettings("cpu", batch_size=batch_size)))


@functools.lru_cache(maxsize=1)
def _tiny_voice() -> Voice:
    return tiny_pipeline().build_voice(REF_DIR, trim=False, name="ref")


def tiny_voice_file(folder: Path) -> Path:
    """The fixture references as a saved voice for the tiny encoder (encoded once per process)."""
    return _tiny_voice().save(folder / "ref.voice")


@functools.lru_cache(maxsize=1)
def micro_pipeline() -> tuple[KnnVC, Voice]:
    """A random-weight pipeline about 20x cheaper than the tiny one, and a voice for it: for long inputs."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(
        conv_dim=[16] * 7, conv_bias=True, feat_extract_norm="layer", hidden_size=32, num_hidden_layers=6,
        num_attention_heads=2, intermediate_size=64, do_stable_layer_norm=True, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )  # fmt: skip
    encoder = WavLMEncoder(WavLMModel(config), name="micro")
    small = HifiganConfig(
        input_dim=32, hidden_dim=8, upsample_initial_channel=16, resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1,),),
    )  # fmt: skip
    vc = KnnVC(encoder, Generator(small).fold_weight_norm().eval(), PipelineSettings("cpu"))
    voice = vc.build_voice(tone(5.0)[:, 0], sample_rate=SR, trim=False, name="micro")
    return vc, voice
