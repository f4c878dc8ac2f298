"""``python -m bench.roofline`` keeps working: a quick run on the tiny models writes its figures and its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import roofline
from tests.conftest import TINY_VOCODER, TINY_WAVLM


def test_a_quick_roofline_run_writes_every_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KNNVC_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    out = tmp_path / "roofline.json"
    try:
        args = ["--quick", "--threads", "1", "--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER)]
        assert roofline.main([*args, "--out", str(out)]) == out
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    run = report["after"]["runs"][0]
    assert run["machine"]["cpu"] and set(run["machine"]["flags"]) >= {"avx2", "avx512f", "avx512_bf16"}
    assert run["matmul"]["square_gflops"] > 0 and run["matmul"]["ffn_up_gflops"] > 0
    for name in ("encoder", "vocoder"):
        first, new = run[name]["rows"]
        assert first["call"] == "first in process" and new["call"] == "new length"
        assert first["gflop"] > 0 and first["warm_gflops"] > 0 and new["first_over_warm"] > 0
    assert run["profile"] and all(row["self_s"] >= 0 for row in run["profile"])
    summary = report["after"]["summary"][0]
    assert {"encoder_warm_of_peak", "vocoder_warm_of_peak", "encoder_new_length_over_warm"} <= set(summary)
    printed = capsys.readouterr().out
    assert "fp32 matmul peak" in printed and "| encoder | first in process |" in printed and "top ops" in printed
