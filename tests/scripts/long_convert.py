"""Convert a long synthetic input on CPU with micro models and report peak memory (run as a subprocess).

usage: python tests/scripts/long_convert.py SOURCE.wav OUT.wav
Prints JSON: the resident memory just before the conversion and the peak during it (bytes).
"""

from __future__ import annotations

import json
import resource
import sys
import threading
from pathlib import Path

import numpy as np
import torch
from transformers import WavLMConfig, WavLMModel

from knnvc.nn.encoder import WavLMEncoder
from knnvc.options import SAMPLE_RATE, ConvertOptions, PipelineSettings
from knnvc.pipeline import KnnVC
from vocoder import Generator, HifiganConfig


def micro_pipeline() -> KnnVC:
    torch.manual_seed(0)
    config = WavLMConfig(
        conv_dim=[16] * 7,
        conv_bias=True,
        feat_extract_norm="layer",
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=64,
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    encoder = WavLMEncoder(WavLMModel(config), name="micro")
    vocoder = Generator(
        HifiganConfig(
            input_dim=32,
            hidden_dim=8,
            upsample_initial_channel=16,
            resblock_kernel_sizes=(3,),
            resblock_dilation_sizes=((1,),),
        )
    ).fold_weight_norm()
    settings = PipelineSettings("cpu", "fp32", window_seconds=5, context_seconds=1, batch_size=4)
    return KnnVC(encoder, vocoder.eval(), settings)


def current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    vc = micro_pipeline()
    rng = np.random.default_rng(0)
    ref = (0.1 * rng.standard_normal(30 * SAMPLE_RATE)).astype(np.float32)
    voice = vc.build_voice(ref, sample_rate=SAMPLE_RATE, trim=False)
    vc.convert(ref, voice, sample_rate=SAMPLE_RATE)  # warm-up: allocator pools, lazy imports
    before = current_rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:  # the process-wide peak (ru_maxrss) may predate the conversion, so sample it
        while not done.wait(0.01):
            peak[0] = max(peak[0], current_rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    vc.convert_file(source, voice, out, ConvertOptions(loudness=None if "--no-loudness" in sys.argv else -16.0))
    done.set()
    sampler.join()
    print(json.dumps({"rss_before": before, "rss_peak": max(peak[0], current_rss())}))


if __name__ == "__main__":
    main()
