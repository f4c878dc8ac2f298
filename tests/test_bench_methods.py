"""``python -m bench.methods`` keeps working: its core runs on the tiny fixture models in seconds, every method
gets its figures, and the lasso's cap either fits W whole or says the figure is extrapolated. No timing is
asserted (speed is the benchmark's own report)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import methods
from knnvc.nn import linear
from knnvc.nn.encoder import num_frames
from knnvc.options import LINEAR_LASSO
from tests.conftest import TINY_VOCODER, TINY_WAVLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_method_gets_its_figures_on_the_tiny_models(tmp_path: Path) -> None:
    saved: list[dict] = []
    result = methods.measure(TINY_WAVLM, TINY_VOCODER, tmp_path, lengths=(2.0,), source_seconds=1.5, repeats=1,
                             saved=saved.append)  # fmt: skip
    assert saved == [result]  # saved after each length
    assert len(result["load_average_at_start"]) == 3 and len(result["load_average_at_end"]) == 3
    assert result["precision"] == "fp32" and result["cpu"]["model"]
    (length,) = result["lengths"]
    assert length["reference_seconds"] == 2.0 and length["reference_frames"] == num_frames(2 * 16_000)
    assert set(length["methods"]) == set(methods.METHODS)
    for figure in (length["encode_references"], length["encode_source_speaker"], length["encode_source"]):
        assert figure["median_s"] > 0 and "load_before" in figure and "load_after" in figure
    assert length["methods"]["knn"]["fit"] is None and "fit_share_of_encoding" not in length["methods"]["knn"]
    speakers = length["encode_references"]["median_s"] + length["encode_source_speaker"]["median_s"]
    for method, row in length["methods"].items():
        convert = row["convert"]
        assert convert["total_s"] == pytest.approx(convert["encode_s"] + convert["match_s"] + convert["vocode_s"],
                                                   abs=1e-3)  # fmt: skip
        if method != "knn":
            base = length["encode_source"]["median_s"] if method == "mkl" else speakers
            assert row["fit_share_of_encoding"] == pytest.approx(row["fit"]["median_s"] / base, rel=1e-2, abs=1e-4)
    assert length["methods"]["linear_parallel"]["fit"]["extrapolated"] is False  # 2 s: far under the cap
    lines = methods.table(result).splitlines()
    assert len(lines) == 2 + len(methods.METHODS) and "(extrapolated)" not in lines[-1]


def test_the_lasso_is_fitted_whole_under_the_cap_and_extrapolated_over_it() -> None:
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(60, 48, generator=gen), torch.randn(50, 48, generator=gen)) for _ in range(2)]
    whole, weights = methods.lasso_fit(pairs, cap=1e9)
    assert whole["extrapolated"] is False and weights is not None
    assert torch.allclose(weights, linear.fit_parallel(pairs, LINEAR_LASSO))
    capped, none = methods.lasso_fit(pairs, cap=0.0)
    assert capped["extrapolated"] is True and none is None
    assert capped["median_s"] == pytest.approx(capped["probe_s"] * 48 / methods.LASSO_PROBE, rel=0.05, abs=0.01)
