"""The encoder's fast paths are the same maths: the private attention patch still runs, the channels-last layout
equals the plain one, the CPU tuning never raises a thread count, and bf16 without native support warns."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch

from knnvc.nn import encoder as encoder_module
from knnvc.nn.encoder import WavLMEncoder, channels_last
from knnvc.runtime import devices
from knnvc.weights import formats
from knnvc.weights.loaded import prepare_encoder
from tests.conftest import TINY_WAVLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_encoder() -> WavLMEncoder:
    return formats.load_encoder(TINY_WAVLM).eval()


def test_transformers_still_has_the_patched_attention_method() -> None:
    """knnvc replaces transformers' private ``WavLMAttention.torch_multi_head_self_attention``: it must still exist,
    with the arguments our replacement takes, and ``WavLMAttention.forward`` must still call it."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    method = getattr(WavLMAttention, "torch_multi_head_self_attention", None)
    assert method is not None, "transformers no longer has WavLMAttention.torch_multi_head_self_attention"
    theirs = list(inspect.signature(method).parameters)
    ours = list(inspect.signature(encoder_module._fused_attention).parameters)
    assert theirs == ours, f"the patched method's arguments changed: {theirs} (ours: {ours})"
    assert "self.torch_multi_head_self_attention(" in inspect.getsource(WavLMAttention.forward)


def test_the_patched_attention_runs_in_every_layer(tiny_encoder: WavLMEncoder) -> None:
    """A real forward of the tiny model goes through our attention, once per layer and call."""
    encoder = copy.deepcopy(tiny_encoder)
    calls: list[int] = []

    def counting(patched: Callable[..., Any], index: int) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(index)
            return patched(*args, **kwargs)

        return wrapper

    for index, layer in enumerate(encoder.model.encoder.layers):
        attention: Any = layer.attention
        assert attention.torch_multi_head_self_attention.__func__ is encoder_module._fused_attention
        attention.torch_multi_head_self_attention = counting(attention.torch_multi_head_self_attention, index)
    encoder.encode(torch.randn(16_000) * 0.1)
    assert calls == list(range(len(encoder.model.encoder.layers))), "the patched attention was not called"


def test_channels_last_layout_is_the_same_maths(tiny_encoder: WavLMEncoder) -> None:
    config, state = formats.read_original(TINY_WAVLM)
    plain = WavLMEncoder(formats.wavlm_model(config, state, config.num_hidden_layers), "plain", layout_2d=False).eval()
    fast = tiny_encoder
    assert fast.layout_2d and not plain.layout_2d and fast.fingerprint == plain.fingerprint
    gen = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(n, generator=gen) for n in (16_000, 9_931, 400)]
    for a, b in zip(plain.encode_batch(wavs), fast.encode_batch(wavs), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.frontend(wavs[0]), plain.frontend(wavs[0]), rtol=1e-5, atol=1e-5)
    channels_last(fast.model)  # idempotent
    assert fast.layout_2d


def test_a_channels_last_encoder_casts_with_its_fp32_island(tiny_encoder: WavLMEncoder) -> None:
    assert prepare_encoder(tiny_encoder, torch.device("cpu"), torch.float32) is tiny_encoder
    bf16 = prepare_encoder(tiny_encoder, torch.device("cpu"), torch.bfloat16)
    assert bf16 is not tiny_encoder and bf16.layout_2d
    first = bf16.model.feature_extractor.conv_layers
    assert first[0].conv.weight.dtype == torch.float32 and first[1].conv.weight.dtype == torch.bfloat16
    assert bf16.encode(torch.randn(4_000) * 0.1).dtype == torch.bfloat16


def test_tune_cpu_lowers_the_thread_count_to_the_cores_and_never_raises_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert devices.physical_cores() >= 1
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        for cores, expected in ((before + 4, before), (1, 1)):
            monkeypatch.setattr(devices, "physical_cores", lambda cores=cores: cores)
            devices.tune_cpu.cache_clear()
            devices.tune_cpu()
            assert torch.get_num_threads() == expected
    finally:
        devices.tune_cpu.cache_clear()
        torch.set_num_threads(before)


def test_bf16_on_a_cpu_without_it_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    devices.warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="knnvc.runtime.devices"):
        assert devices.resolve_precision("auto", cpu) == torch.float32
        assert not caplog.records  # auto stays fp32, silently
        assert devices.resolve_precision("bf16", cpu) == torch.bfloat16
        assert devices.resolve_precision("bf16", cpu) == torch.bfloat16
    assert len(caplog.records) == 1 and "emulated" in caplog.records[0].getMessage()
    assert "slower" in caplog.records[0].getMessage()
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    devices.warn_emulated_bf16.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="knnvc.runtime.devices"):
        assert devices.resolve_precision("bf16", cpu) == torch.bfloat16
    assert not caplog.records
