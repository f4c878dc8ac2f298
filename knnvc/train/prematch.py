"""Prematched training features for a kNN-VC vocoder (``knnvc train prematch``).

Each utterance's WavLM layer-6 frames are replaced by the mean of their k = 4 nearest frames (cosine) among
the frames of the OTHER utterances of the SAME speaker, so the vocoder learns from the kind of features it
will get at conversion time. (The original pooled by chapter folder; here the pool is the whole speaker.)
Audio is encoded exactly as voices are (``KnnVC.encode_many``: windows for long files, out-of-memory
retries, the chosen precision), and each speaker's pool is built once and matched with every utterance's own
frames excluded, never copied per utterance.

Speakers come from the folder structure (``DATA_DIR/<speaker>/.../<utt>.flac``, e.g. LibriSpeech's
``speaker/chapter/utt``) or from a CSV manifest with the columns ``path,speaker`` (relative paths are relative
to DATA_DIR). Output: one ``OUT_DIR/<id>.safetensors`` per utterance (features fp16 and the audio at the target
rate, format in :mod:`vocoder.train.data`), ``OUT_DIR/index.json``, and ``OUT_DIR/skipped.json`` listing the
utterances left out and why (unreadable, too short, a speaker with a single utterance). Rerunning the same
command resumes: finished utterances are kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from knnvc import files
from knnvc.audio import decode
from knnvc.errors import AudioError, UsageError
from knnvc.nn.encoder import WavLMEncoder, num_frames
from knnvc.nn.matcher import knn_regression
from knnvc.options import DEFAULT_K, DEFAULT_SETTINGS, DEFAULT_WAVLM, SAMPLE_RATE, WAVLM_LAYER, PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.train.speakers import Skipped, Utterance, discover, pool_groups
from knnvc.train.store import PrematchReport, Store
from vocoder.train.data import SUFFIX, Entry, TrainingError, hop_for, write_utterance

logger = logging.getLogger(__name__)

MIN_FRAMES = 10  # 0.2 s: shorter utterances are skipped (and cannot be encoded below 400 samples anyway)
MAX_POOL_MINUTES = 60.0  # a bigger speaker is matched in pools of about this size (WavLM-Large: 0.7 GB fp32)
SpeakerCallback = Callable[[int, int, str], None]  # (speakers done, speakers in all, current speaker)


def prematch_features(features: Sequence[Tensor], k: int = DEFAULT_K) -> list[Tensor]:
    """For each (T_i, D) item, the mean of each frame's ``k`` nearest frames among all OTHER items.

    Returns one (T_i, D) tensor per item, in the inputs' dtype. Needs at least two items, and at least ``k``
    frames outside each item.
    """
    if len(features) < 2:
        raise ValueError("prematching needs at least two utterances of the speaker")
    return _match_items(torch.cat(list(features)), [int(f.shape[0]) for f in features], range(len(features)), k)


def _match_items(pool: Tensor, lengths: Sequence[int], which: Sequence[int], k: int) -> list[Tensor]:
    """Items ``which`` of the (sum(lengths), D) pool, each frame regressed onto the pool minus its own item.

    One ``knn_regression`` call for them all: the pool is normalised once, and each query frame's own item is
    excluded by row range (``exclude=``) rather than by copying the other items.
    """
    starts = [0, *np.cumsum(lengths)[:-1].tolist()]
    ranges = torch.tensor([[starts[i], starts[i] + lengths[i]] for i in which], device=pool.device)
    counts = torch.tensor([lengths[i] for i in which], device=pool.device)
    everything = len(which) == len(lengths)
    query = pool if everything else torch.cat([pool[starts[i] : starts[i] + lengths[i]] for i in which])
    out = knn_regression(query, pool, k, exclude=ranges.repeat_interleave(counts, dim=0))
    return list(out.split([lengths[i] for i in which]))


@dataclass
class _Run:
    """The state of one prematch run."""

    pipeline: KnnVC
    store: Store
    k: int
    sample_rate: int
    min_frames: int
    report: PrematchReport


def _skip(run: _Run, utt: Utterance, reason: str) -> None:
    logger.warning("skipping %s: %s", utt.path, reason)
    run.report.skipped.append(Skipped(str(utt.path), utt.speaker, reason))


def _load_usable(run: _Run, utts: Sequence[Utterance]) -> list[tuple[Utterance, np.ndarray]]:
    """16 kHz waveforms of the utterances that can be read and are long enough; the others are reported."""
    usable = []
    for utt in utts:
        try:
            wav = decode.load(utt.path)
        except AudioError as exc:
            _skip(run, utt, f"unreadable: {exc}")
            continue
        frames = num_frames(wav.shape[0])
        if frames < run.min_frames:
            _skip(run, utt, f"too short: {frames} frames ({wav.shape[0] / SAMPLE_RATE:.2f} s), "
                            f"fewer than {run.min_frames}")
            continue
        usable.append((utt, wav))
    return usable


def _target_audio(run: _Run, utt: Utterance, wav16: np.ndarray, frames: int) -> Tensor:
    """The utterance at the target rate, cut or zero-padded to ``frames * hop`` samples."""
    wav = wav16 if run.sample_rate == SAMPLE_RATE else decode.load(utt.path, sample_rate=run.sample_rate)
    if run.sample_rate != SAMPLE_RATE and decode.native_rate(utt.path) < run.sample_rate:
        run.report.below_rate += 1
        logger.debug("%s is recorded below %d Hz", utt.path, run.sample_rate)
    need = frames * hop_for(run.sample_rate)
    return torch.nn.functional.pad(torch.from_numpy(wav[:need]), (0, max(0, need - wav.shape[0])))


def _write(run: _Run, utt: Utterance, features: Tensor, wav16: np.ndarray) -> Entry:
    file = utt.id + SUFFIX
    settings = run.store.settings
    meta = {"id": utt.id, "speaker": utt.speaker, "source": str(utt.path), "k": str(run.k),
            "encoder": str(settings["encoder"]), "encoder_fingerprint": str(settings["encoder_fingerprint"])}
    target = _target_audio(run, utt, wav16, features.shape[0])
    try:
        write_utterance(run.store.out_dir / file, features, target, sample_rate=run.sample_rate, metadata=meta)
    except OSError as exc:
        raise files.write_error(run.store.out_dir / file, exc) from exc
    return Entry(utt.id, utt.speaker, file, int(features.shape[0]))


def _speaker(run: _Run, speaker: str, utts: Sequence[Utterance]) -> None:
    """Prematch one speaker's utterances that are not written yet (the pool needs all of them encoded)."""
    store = run.store
    done = {u.id: e for u in utts if (e := store.existing(u)) is not None}
    if all(u.id in done or str(u.path) in store.old_skipped for u in utts):
        store.entries.update(done)
        run.report.existing += len(done)
        run.report.skipped.extend(store.old_skipped[str(u.path)] for u in utts if u.id not in done)
        return
    usable = _load_usable(run, utts)
    if len(usable) < 2:
        for utt, _ in usable:
            _skip(run, utt, f"speaker {speaker!r} has no other usable utterance to match against")
        return
    feats = run.pipeline.encode_many([wav for _, wav in usable])
    lengths = [int(f.shape[0]) for f in feats]
    todo = []
    for i, (utt, _) in enumerate(usable):
        if utt.id in done:
            store.entries[utt.id] = done[utt.id]
            run.report.existing += 1
        elif sum(lengths) - lengths[i] < run.k:
            _skip(run, utt, f"speaker {speaker!r} has fewer than k={run.k} frames outside this utterance")
        else:
            todo.append(i)
    if not todo:
        return
    for i, matched in zip(todo, _match_items(torch.cat(feats), lengths, todo, run.k), strict=True):
        utt, wav = usable[i]
        store.entries[utt.id] = _write(run, utt, matched, wav)
        run.report.written += 1


def _run_speakers(run: _Run, utts: Sequence[Utterance], max_pool_seconds: float,
                  on_speaker: SpeakerCallback | None) -> None:
    """Prematch speaker by speaker (pool by pool within a big speaker), saving the index after each."""
    by_speaker: dict[str, list[Utterance]] = {}
    for utt in utts:
        by_speaker.setdefault(utt.speaker, []).append(utt)
    run.report.speakers = len(by_speaker)
    for n, (speaker, items) in enumerate(sorted(by_speaker.items()), start=1):
        for group in pool_groups(items, max_pool_seconds):
            _speaker(run, speaker, group)
            run.store.save(run.report.skipped)
        if on_speaker is not None:
            on_speaker(n, len(by_speaker), speaker)


def prematch(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    wavlm: str = DEFAULT_WAVLM,
    encoder: WavLMEncoder | None = None,
    manifest: str | os.PathLike[str] | None = None,
    k: int = DEFAULT_K,
    settings: PipelineSettings = DEFAULT_SETTINGS,
    sample_rate: int = SAMPLE_RATE,
    min_frames: int = MIN_FRAMES,
    max_pool_minutes: float = MAX_POOL_MINUTES,
    offline: bool | None = None,
    on_speaker: SpeakerCallback | None = None,
) -> PrematchReport:
    """Build (or resume building) a prematched features folder for vocoder training.

    Args:
        data_dir: speaker folders (``<speaker>/<chapter>/<utt>``), or the root of the manifest's paths.
        out_dir: the features folder (see :mod:`vocoder.train.data` for its format).
        wavlm / encoder: the WavLM to load (hub id or file), or an already loaded encoder.
        manifest: a CSV with the columns ``path,speaker``, instead of the folder structure.
        k: neighbours averaged per frame (4, as published).
        settings: device, precision and batch size, as for ``KnnVC`` (the encoding is the pipeline's).
        sample_rate: rate of the stored target audio (resampled from the original files with soxr).
        min_frames: utterances with fewer 50 Hz frames are skipped and reported.
        max_pool_minutes: a speaker with more audio is matched in separate pools of about this size (memory).

    Raises:
        UsageError (bad folders, manifest, settings), WeightsError, DeviceError, OutputError (an output folder
        that cannot be written, found before any model loads).
    """
    try:
        hop_for(sample_rate)
    except TrainingError as exc:
        raise UsageError(f"sample_rate: {exc}") from exc
    if k < 1 or min_frames < 1:
        raise UsageError("k and min frames must be at least 1")
    utts, skipped = discover(data_dir, manifest)
    out = files.writable_folder(Path(out_dir))
    if encoder is None:
        from knnvc.weights.formats import load_encoder

        encoder = load_encoder(wavlm, offline=offline)
    pipeline = KnnVC(encoder, None, settings)
    record = {"k": k, "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint, "layer": WAVLM_LAYER,
                "feature_dim": encoder.dim, "sample_rate": sample_rate, "pool": "other utterances of the speaker",
                "max_pool_minutes": max_pool_minutes, "precision": str(pipeline.dtype).removeprefix("torch.")}
    run = _Run(pipeline, Store.open(out, record), k, sample_rate, min_frames, PrematchReport(out, skipped=skipped))
    _run_speakers(run, utts, max_pool_minutes * 60, on_speaker)
    if run.report.below_rate:
        logger.warning("%d utterances are recorded below %d Hz and were upsampled: the vocoder will learn their "
                       "missing high frequencies", run.report.below_rate, sample_rate)
    logger.info("prematch: %d written, %d already done, %d skipped", run.report.written, run.report.existing,
                len(run.report.skipped))
    return run.report
