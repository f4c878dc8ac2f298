"""`knnvc convert` with the tiny fixture models writes what the original kNN-VC computed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from knnvc.cli import app
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

FIXTURE_ARGS = ["--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER), "--device", "cpu"]
EXACT_ARGS = [*FIXTURE_ARGS, "--k", "4", "--no-trim", "--loudness", "none"]


def check_matches_original(path: Path, reference_outputs: dict) -> None:
    wav, sr = sf.read(path, dtype="float32")
    assert sr == 16_000
    expected = reference_outputs["converted_wav"].numpy()
    assert len(wav) == len(sf.read(SOURCE_WAV)[0])
    covered = wav[: len(expected)]
    # 16-bit PCM output: the error is quantisation, at most half a step.
    assert np.abs(covered - expected).max() <= 1.0 / 32768 + 1e-6
    assert np.linalg.norm(covered - expected) / np.linalg.norm(expected) < 1e-3


def test_convert_in_process(tmp_path: Path, reference_outputs: dict) -> None:
    out = tmp_path / "out.wav"
    result = CliRunner().invoke(app, ["convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(out), *EXACT_ARGS])
    assert result.exit_code == 0, result.output
    check_matches_original(out, reference_outputs)


@pytest.mark.slow  # an interpreter that imports torch and loads the models: ~5 s on 2 cores
def test_convert_subprocess(tmp_path: Path, reference_outputs: dict) -> None:
    out = tmp_path / "out.wav"
    cmd = [sys.executable, "-m", "knnvc", "convert", str(SOURCE_WAV), str(REF_DIR), "-o", str(out), *EXACT_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "KNNVC_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    check_matches_original(out, reference_outputs)
