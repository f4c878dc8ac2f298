"""``python -m bench.stream``: streaming delay (fed in real time) and agreement with offline conversion, per setting.

    python -m bench.stream --models tiny                      # the fixture's tiny models
    python -m bench.stream --models full --precision bf16     # full-size random models (published layouts)
    python -m bench.stream --models tiny --method linear      # a LinearVC pair's map instead of kNN (or mkl)

For each setting (chunk, lookahead, context) it streams the fixture source speech against the fixture voice:

- **agreement**: the stream's final encoder frames against offline encoding of the whole input: the share of
  frames whose k nearest voice frames are the same set (and the same nearest one); and the seam error, the
  stream's output against vocoding all its frames at once (dB SNR).
- **delay**: the audio is pushed in 20 ms blocks on the wall clock, as a sound card delivers it; the delay
  of output sample n is when it came out minus when input sample n was captured. Median, p95 and max over the
  samples (the max is the playback latency a player must buffer for); the real-time factor is compute / audio.

With ``--method linear`` or ``mkl`` the stream converts with a pair's fixed map instead of kNN matching (LinearVC
from the fixture's source speaker, ``speech/pair/source``, to the voice; MKL-VC's speaker-level map between the
same two), and agreement is measured on the features themselves, as no neighbours are chosen: the stream's encoder
frames and its mapped frames against offline's (relative L2 difference, per-frame cosine), the map's own error
(the mapped frames against the map applied here to the stream's frames), the seam error, and the streamed audio
against offline conversion with the same pair (SNR).

Writes ``bench/results/stream-<models>-<machine>-<precision>[-<method>].json`` with the machine's load average
beside every figure (the machine is shared: rerun when it was busy; ``--agreement-only`` skips the real-time feed,
whose delays mean nothing on a busy machine) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from knnvc.nn.matcher import knn_indices
from knnvc.options import ConvertOptions, Models, PipelineSettings
from knnvc.pipeline import KnnVC, Target
from knnvc.stream.settings import StreamSettings
from knnvc.stream.streamer import Streamer
from knnvc.voice import Pair, Voice

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SPEECH = ROOT / "tests" / "fixtures" / "speech"
SR = 16_000
QUIET = ConvertOptions(loudness=None)
BLOCK = 320  # samples: the audio arrives in 20 ms blocks, as from a sound card (knnvc live reads so)

SETTINGS: dict[str, list[dict[str, int]]] = {
    "tiny": [{}, {"chunk_ms": 200}, {"context_ms": 1000}, {"lookahead_ms": 240}, {"lookahead_ms": 120},
             {"chunk_ms": 40, "lookahead_ms": 160}, {"chunk_ms": 60, "lookahead_ms": 60}, {"vocoder_lookahead_ms": 40}],
    "full": [{"chunk_ms": 400}, {"chunk_ms": 400, "lookahead_ms": 640}, {"chunk_ms": 400, "lookahead_ms": 320},
             {"chunk_ms": 200, "lookahead_ms": 200, "context_ms": 1000}],
    "gpu": [{}, {"chunk_ms": 40, "lookahead_ms": 40}, {"chunk_ms": 20, "lookahead_ms": 60},
            {"chunk_ms": 20, "lookahead_ms": 20}],
}  # fmt: skip


def load(models: str, precision: str, workdir: Path) -> KnnVC:
    """The pipeline: the fixture's tiny models, or full-size random ones with the published layouts."""
    if models == "tiny":
        wavlm = ROOT / "tests/fixtures/wavlm_tiny/WavLM-tiny.pt"
        vocoder = ROOT / "tests/fixtures/vocoder_tiny/prematch_g_tiny.pt"
    else:
        from bench.layouts import write_prematch_vocoder, write_wavlm_large

        wavlm, vocoder = workdir / "WavLM-Large.pt", workdir / "prematch_g.pt"
        if not wavlm.exists():
            write_wavlm_large(wavlm)
            write_prematch_vocoder(vocoder)
    return KnnVC.from_pretrained(Models(wavlm, vocoder, PipelineSettings("cpu", precision)))  # bf16: AMX/AVX512


def agreement(vc: KnnVC, voice: Voice, wav: np.ndarray, offline: torch.Tensor, settings: StreamSettings) -> dict:
    """Stream as fast as possible; kNN agreement of the stream's frames with offline ones, and the seam error."""
    streamer = Streamer(vc, voice, QUIET, settings, record=True)
    start = time.perf_counter()
    out = np.concatenate([streamer.push(wav[i : i + 1600]) for i in range(0, len(wav), 1600)] + [streamer.flush()])
    seconds = time.perf_counter() - start
    assert streamer.features is not None and len(out) == len(wav)
    feats = torch.cat(streamer.features)
    ours, theirs = (knn_indices(f, voice.frames, 4).sort(-1).values for f in (feats, offline))
    whole = vc.vocode(vc.match(feats, voice, 4))
    err = out[: len(whole)] - whole
    return {
        "agreement_k_set": round(float((ours == theirs).all(-1).float().mean()), 4),
        "agreement_nearest": round(float((ours[:, 0] == theirs[:, 0]).float().mean()), 4),
        "seam_snr_db": round(float(10 * np.log10((whole**2).sum() / max(1e-30, float((err**2).sum())))), 1),
        "fast_realtime_factor": round(seconds * SR / len(wav), 3),
    }


def map_agreement(
    vc: KnnVC, pair: Pair, voice: Voice, wav: np.ndarray, offline: torch.Tensor, settings: StreamSettings
) -> dict:
    """Stream as fast as possible with ``pair``'s map; the stream's features against offline's, and the audio.

    Beside them, in the same units: kNN's matched frames (k = 4 onto ``voice``) from the same stream's encoder frames
    against kNN's from offline's (kNN matches each frame on its own, so this is what a kNN stream would vocode).
    """
    streamer = Streamer(vc, pair, QUIET, settings, record=True)
    start = time.perf_counter()
    out = np.concatenate([streamer.push(wav[i : i + 1600]) for i in range(0, len(wav), 1600)] + [streamer.flush()])
    seconds = time.perf_counter() - start
    assert streamer.features is not None and streamer.matched is not None and len(out) == len(wav)
    feats, mapped = torch.cat(streamer.features).double(), torch.cat(streamer.matched).double()
    matrix, bias = pair.map.matrix.double(), pair.map.bias.double()  # the map in float64, applied here
    reference = offline.cpu().double() @ matrix + bias
    own = feats @ matrix + bias  # to the stream's own frames: what the stream's mapped frames must be
    whole = vc.vocode(mapped.float())
    err = out[: len(whole)] - whole
    converted = vc.convert(wav, pair, QUIET, sample_rate=SR)  # offline conversion with the same pair
    knn_stream, knn_offline = (vc.match(f.float(), voice, 4).cpu().double() for f in (feats, offline.cpu()))
    return {
        "knn_matched_rel_diff": round(float((knn_stream - knn_offline).norm() / knn_offline.norm()), 5),
        "encoder_rel_diff": round(float((feats - offline.cpu().double()).norm() / offline.double().norm()), 5),
        "mapped_rel_diff": round(float((mapped - reference).norm() / reference.norm()), 5),
        "mapped_cosine_mean": round(float(torch.nn.functional.cosine_similarity(mapped, reference).mean()), 5),
        "mapped_cosine_p5": round(float(torch.nn.functional.cosine_similarity(mapped, reference).quantile(0.05)), 5),
        "map_own_error": float((mapped - own).abs().max() / own.abs().max()),
        "seam_snr_db": round(snr_db(whole, err), 1),
        "offline_snr_db": round(snr_db(converted, out - converted), 1),
        "fast_realtime_factor": round(seconds * SR / len(wav), 3),
    }


def snr_db(signal: np.ndarray, error: np.ndarray) -> float:
    return float(10 * np.log10((signal**2).sum() / max(1e-30, float((error**2).sum()))))


def delay(
    vc: KnnVC, voice: Target, wav: np.ndarray, settings: StreamSettings, give_up_s: float = 5.0, **kw: Any
) -> dict:
    """Feed ``wav`` in 20 ms blocks (a sound card's buffer) on the wall clock; per-sample delay from capture to
    output, and the real-time factor (compute / audio)."""
    streamer = Streamer(vc, voice, QUIET, settings, **kw)
    block = BLOCK
    delays, compute, emitted, behind = [], 0.0, 0, False
    start = time.perf_counter()
    for i in range(0, len(wav), block):
        due = start + min(len(wav), i + block) / SR  # the block's last sample is captured now
        time.sleep(max(0.0, due - time.perf_counter()))
        t = time.perf_counter()
        out = streamer.push(wav[i : i + block]) if i + block < len(wav) else np.concatenate(
            [streamer.push(wav[i : i + block]), streamer.flush()])  # fmt: skip
        now = time.perf_counter()
        compute += now - t
        delays.append(now - (start + np.arange(emitted, emitted + len(out)) / SR))
        emitted += len(out)
        if now - due > give_up_s:
            behind = True
            break
    d = np.concatenate(delays) * 1000
    steady = d[len(d) // 10 :] if len(d) else d  # after the first tenth (warm caches)
    return {
        "delay_ms_median": round(float(np.median(steady)), 1) if len(d) else None,
        "delay_ms_p95": round(float(np.percentile(steady, 95)), 1) if len(d) else None,
        "delay_ms_max": round(float(steady.max()), 1) if len(d) else None,
        "realtime_factor": round(compute * SR / min(len(wav), i + block), 3),
        "keeps_up": not behind,
        "algorithmic_delay_ms": streamer.delay_ms,
    }


def measure(
    vc: KnnVC, voice: Voice, wav: np.ndarray, chosen: list[dict[str, int]], rows: list[dict], timed: bool = True,
    pair: Pair | None = None,
) -> Iterator[dict]:  # fmt: skip
    """Delay (fed in real time; unless not ``timed``) and agreement per setting, appended to ``rows`` and yielded
    as each is done; with ``pair``, of streaming its map instead of kNN onto ``voice``."""
    target: Target = voice if pair is None else pair
    offline = vc.encode(wav, SR)  # one window: attention over the whole input
    for given in chosen:
        settings = StreamSettings(**given)
        row: dict[str, Any] = {"settings": Streamer(vc, target, QUIET, settings, gain=1.0).settings.__dict__}
        row["load_before"] = load_avg()
        if timed:
            row.update(delay(vc, target, wav, settings, gain=1.0))
        if pair is not None:
            row.update(map_agreement(vc, pair, voice, wav, offline, settings))
        else:
            row.update(agreement(vc, voice, wav, offline, settings))
        row["load_after"] = load_avg()
        rows.append(row)
        print(json.dumps(row), flush=True)
        yield row


def context_sweep(vc: KnnVC, voice: Voice, wav: np.ndarray, contexts_ms: list[int], chunk_ms: int = 400) -> list[dict]:
    """Encoder only: agreement of the stream's windows (lookahead = the encoder's reach) with offline, per context.

    A context longer than the input is the whole past: what is left then is the future beyond the lookahead.
    """
    from knnvc.stream.settings import encoder_reach

    offline = vc.encoder.encode(torch.from_numpy(wav)).float()
    theirs = knn_indices(offline, voice.frames, 4).sort(-1).values
    total, chunk, lookahead = offline.shape[0], chunk_ms // 20, encoder_reach(vc)
    rows = []
    for context_ms in contexts_ms:
        parts = []
        for s in range(0, total, chunk):
            a, b = max(0, s - context_ms // 20), min(total, s + chunk + lookahead)
            feats = vc.encoder.encode(torch.from_numpy(wav[a * 320 : (b - 1) * 320 + 400])).float()
            parts.append(feats[s - a : min(total, s + chunk) - a])
        ours = knn_indices(torch.cat(parts), voice.frames, 4).sort(-1).values
        rows.append({"context_ms": context_ms, "lookahead_ms": lookahead * 20, "chunk_ms": chunk_ms,
                     "agreement_k_set": round(float((ours == theirs).all(-1).float().mean()), 4),
                     "agreement_nearest": round(float((ours[:, 0] == theirs[:, 0]).float().mean()), 4),
                     "load": load_avg()})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seconds", type=float, default=20.0, help="source audio streamed per setting")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", type=int, nargs="*", help="indices into the settings list")
    parser.add_argument("--context-sweep", action="store_true", help="encoder-only agreement per context, then stop")
    parser.add_argument("--method", choices=["knn", "linear", "mkl"], default="knn",
                        help="kNN onto the voice, or a pair's map: LinearVC's or MKL-VC's (fitted on a speaker)")
    parser.add_argument("--mkl-block", type=int, default=2, help="K of the MKL-VC map")
    parser.add_argument("--agreement-only", action="store_true", help="skip the real-time feed (a busy machine)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "knnvc-bench-stream")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    vc = load(args.models, args.precision, args.workdir)
    voice = vc.build_voice(SPEECH / "ref")
    source = sf.read(SPEECH / "source.wav", dtype="float32")[0]
    wav = np.tile(source, int(np.ceil(args.seconds * SR / len(source))))[: int(args.seconds * SR)]
    if args.context_sweep:
        sweep = context_sweep(vc, voice, wav, [1000, 2000, 1000 * int(args.seconds) + 1000])
        machine = f"cpu-{platform.machine()}-{os.cpu_count()}core"
        path = RESULTS / f"stream-{args.models}-{machine}-{args.precision}-context.json"
        path.write_text(json.dumps({"source_seconds": args.seconds, "rows": sweep}, indent=2) + "\n")
        print(f"wrote {path}")
        return
    pair = None
    if args.method != "knn":  # the fixture's source speaker (the voice of source.wav) to the voice
        start = time.perf_counter()
        pair = vc.build_pair(SPEECH / "pair" / "source", voice, method=args.method, mkl_block=args.mkl_block)
        args.fit_seconds = round(time.perf_counter() - start, 2)
    target: Target = voice if pair is None else pair
    rows: list[dict] = []
    chosen = SETTINGS[args.models] if args.only is None else [SETTINGS[args.models][i] for i in args.only]
    for _ in measure(vc, voice, wav, chosen, rows, timed=not args.agreement_only, pair=pair):
        save(args, wav, target, rows, {})  # after every row: a long run that is stopped keeps what it measured
    cache = {}
    for cached in (True, False) if args.method == "knn" and not args.agreement_only else ():
        # the encoder's conv stack: computed once per frame, or re-encoded each step
        settings = StreamSettings(**chosen[0])
        cache["cached" if cached else "re_encoded"] = delay(vc, voice, wav[: 10 * SR], settings, gain=1.0,
                                                            cache_frontend=cached)["realtime_factor"]  # fmt: skip
    path = save(args, wav, target, rows, cache)
    print(table(json.loads(path.read_text())) if args.method == "knn" else map_table(json.loads(path.read_text())))
    print(f"wrote {path}")


def save(args: argparse.Namespace, wav: np.ndarray, target: Target, rows: list[dict], cache: dict) -> Path:
    machine = f"cpu-{platform.machine()}-{os.cpu_count()}core"
    result = {
        "machine": machine, "models": args.models, "precision": args.precision, "threads": args.threads,
        "torch": torch.__version__, "source_seconds": len(wav) / SR, "method": args.method,
        "frontend_cache_realtime_factor": cache, "load_avg_end": load_avg(), "rows": rows,
    }  # fmt: skip
    if isinstance(target, Pair):
        result["pair"] = {"method": target.method, "mkl_block": target.mkl_block, "source_frames": target.source_frames,
                          "target_frames": target.target_frames, "fit_seconds": args.fit_seconds,
                          "realtime": not args.agreement_only}  # fmt: skip
    else:
        result["voice_frames"] = target.num_frames
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.method == "knn" else f"-{args.method}"
    path = RESULTS / f"stream-{args.models}-{machine}-{args.precision}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def map_table(result: dict) -> str:
    """docs/streaming.md's table for a pair's map: one row per setting."""
    lines = ["| chunk | lookahead | vocoder lookahead | context | encoder frames vs offline | mapped frames vs offline "
             "| kNN's matched frames vs offline | cosine mean / p5 | map's own error | seam SNR | audio vs offline "
             "| fast RTF | load |", "|" + "---|" * 13]  # fmt: skip
    for r in result["rows"]:
        s = r["settings"]
        lines.append(
            f"| {s['chunk_ms']} | {s['lookahead_ms']} | {s['vocoder_lookahead_ms']} | {s['context_ms']} "
            f"| {100 * r['encoder_rel_diff']:.2f}% | {100 * r['mapped_rel_diff']:.2f}% "
            f"| {100 * r['knn_matched_rel_diff']:.2f}% "
            f"| {r['mapped_cosine_mean']:.4f} / {r['mapped_cosine_p5']:.4f} | {r['map_own_error']:.1e} "
            f"| {r['seam_snr_db']} dB | {r['offline_snr_db']} dB | {r['fast_realtime_factor']} "
            f"| {r['load_before'][0]} |"
        )
    return "\n".join(lines)


def table(result: dict) -> str:
    """The README's table: one row per setting."""
    lines = ["| chunk | lookahead | vocoder lookahead | context | delay median / p95 / max (ms) | real-time factor "
             "| same k set | same nearest | seam SNR | load |", "|" + "---|" * 10]  # fmt: skip
    for r in result["rows"]:
        s = r["settings"]
        lines.append(
            f"| {s['chunk_ms']} | {s['lookahead_ms']} | {s['vocoder_lookahead_ms']} | {s['context_ms']} "
            f"| {r['delay_ms_median']} / {r['delay_ms_p95']} / {r['delay_ms_max']}{'' if r['keeps_up'] else ' behind'} "
            f"| {r['realtime_factor']} | {100 * r['agreement_k_set']:.1f}% | {100 * r['agreement_nearest']:.1f}% "
            f"| {r['seam_snr_db']} dB | {r['load_before'][0]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
