"""``python -m bench.compact``: a compact voice of an hour-long bank against the full bank, on this machine.

    python -m bench.compact --hours 1 --encode-minutes 10 --max-frames 10000 --source-seconds 30

The bank is ``--encode-minutes`` of perturbed fixture speech encoded with the full-size random-weight WavLM-Large
(``bench/compact_bank.py`` says how), its layer-6 features tiled (exact copies) to ``--hours``. It is saved as a
full voice and as a compact one (``Voice.compact``: spherical k-means, faiss when installed). Reported: both
files' sizes, the compact build time, the kNN search time of a ``--source-seconds`` source (the fixture source,
tiled, encoded by the same model) against each, and how well the compact voice's neighbours agree with the full
bank's. Writes ``bench/results/compact-<machine>.json`` and prints the same JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.__main__ import RESULTS, machine_name
from bench.compact_bank import builder, encoded_bank, source_speech, tile
from knnvc.nn.kmeans import Clustering
from knnvc.nn.matcher import knn_indices, knn_regression
from knnvc.options import DEFAULT_K, FRAME_RATE
from knnvc.voice import Voice


def source_features(work: Path, seconds: float) -> torch.Tensor:
    """Layer-6 features (T, 1024) of the fixture source tiled to ``seconds`` (cached in ``work``)."""
    cache = work / f"source-{seconds:g}s.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    feats = builder(work).encode_many([source_speech(seconds)])[0].cpu()
    torch.save(feats, cache)
    return feats


def timed_search(query: torch.Tensor, keys: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``knn_regression`` (the pipeline's layer-6 search and average), and its result."""
    times, out = [], torch.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        out = knn_regression(query, keys, DEFAULT_K)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def agreement(query: torch.Tensor, full: Voice, compact: Voice, clustering: Clustering) -> dict[str, float]:
    """How the compact voice's k nearest (cluster means) relate to the full bank's k nearest frames.

    - ``top1``: share of source frames whose nearest compact row is the cluster of the nearest full-bank frame;
    - ``topk_clusters``: share of the full bank's k nearest frames whose cluster is among the compact k nearest;
    - ``feature_cosine`` / ``feature_rel_error``: the converted (averaged) features, compact vs full, per frame.
    """
    k = DEFAULT_K
    full_idx = knn_indices(query, full.frames, k)
    compact_idx = knn_indices(query, compact.frames, k)
    full_clusters = clustering.assignment[full_idx]  # (T, k) cluster of each full-bank neighbour
    top1 = (full_clusters[:, 0] == compact_idx[:, 0]).float().mean()
    hits = (full_clusters[:, :, None] == compact_idx[:, None, :]).any(-1).float().mean()
    full_out = full.frames[full_idx].mean(1)
    compact_out = compact.frames[compact_idx].mean(1)
    cosine = F.cosine_similarity(full_out, compact_out, dim=-1).mean()
    rel = (full_out - compact_out).norm(dim=-1) / full_out.norm(dim=-1)
    return {
        "top1": round(float(top1), 4),
        "topk_clusters": round(float(hits), 4),
        "feature_cosine": round(float(cosine), 4),
        "feature_rel_error": round(float(rel.mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compact", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="length of the full bank")
    parser.add_argument("--encode-minutes", type=float, default=10.0, help="speech actually encoded, then tiled")
    parser.add_argument("--max-frames", type=int, default=10_000)
    parser.add_argument("--source-seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed searches per voice (median)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/knnvc-compact"), help="model and feature cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    encoded, encode_seconds = encoded_bank(args.work, args.encode_minutes)
    query = source_features(args.work, args.source_seconds)
    full = Voice(frames=tile(encoded, args.hours), encoder="random WavLM-Large", encoder_fingerprint="bench", layer=6)
    start = time.perf_counter()
    compact, clustering = full.compact(args.max_frames)
    build_seconds = time.perf_counter() - start
    sizes = {}
    for label, voice in (("full", full), ("compact", compact)):
        path = voice.save(args.work / f"{label}.voice")
        sizes[label] = round(path.stat().st_size / 1e6, 1)
        path.unlink()
    full_search, _ = timed_search(query, full.frames, args.repeats)
    compact_search, _ = timed_search(query, compact.frames, args.repeats)
    result: dict[str, Any] = {
        "machine": machine_name(torch.device("cpu")),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bank": {
            "hours": args.hours,
            "frames": full.num_frames,
            "encoded_minutes": args.encode_minutes,
            "distinct_frames": int(encoded.shape[0]),
            "encode_seconds": round(encode_seconds, 1),
            "how": "perturbed fixture speech (speed 0.85-1.15, gain +-6 dB, noise -45 dB) encoded with the "
            "full-size random-weight WavLM-Large; its layer-6 features tiled (exact copies) to the bank's length",
        },
        "compact": {
            "frames": compact.num_frames,
            "method": clustering.method,
            "build_seconds": round(build_seconds, 1),
            "largest_cluster": int(compact.counts.max()) if compact.counts is not None else 1,
        },
        "file_mb": sizes,
        "source_seconds": args.source_seconds,
        "search_seconds": {"full": round(full_search, 3), "compact": round(compact_search, 4)},
        "search_speedup": round(full_search / compact_search, 1),
        "search_realtime": {
            "full": round(query.shape[0] / FRAME_RATE / full_search, 1),
            "compact": round(query.shape[0] / FRAME_RATE / compact_search, 1),
        },
        "agreement": agreement(query, full, compact, clustering),
    }
    text = json.dumps(result, indent=2)
    out = args.out or RESULTS / f"compact-{result['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)  # noqa: T201 (a benchmark's output is its report)


if __name__ == "__main__":
    main()
