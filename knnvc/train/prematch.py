"""Prematched training features for a kNN-VC vocoder (``knnvc train prematch``).

Each utterance's WavLM layer-6 frames are replaced by the mean of their k = 4 nearest frames (cosine) among
the frames of the OTHER utterances of the SAME speaker, so the vocoder learns from the kind of features it
will get at conversion time. (The original pooled by chapter folder; here the pool is the whole speaker.)

Speakers come from the folder structure (``DATA_DIR/<speaker>/.../<utt>.flac``, e.g. LibriSpeech's
``speaker/chapter/utt``) or from a CSV manifest with the columns ``path,speaker`` (relative paths are relative
to DATA_DIR). Output: one ``OUT_DIR/<id>.safetensors`` per utterance (features fp16 and the audio at the target
rate, format in :mod:`vocoder.train.data`), ``OUT_DIR/index.json``, and ``OUT_DIR/skipped.json`` listing the
utterances left out and why (unreadable, too short, a speaker with a single utterance). Rerunning the same
command resumes: finished utterances are kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile
import torch
from torch import Tensor

from knnvc import audio
from knnvc.constants import DEFAULT_K, DEFAULT_WAVLM, SAMPLE_RATE, WAVLM_LAYER
from knnvc.encoder import num_frames
from knnvc.errors import AudioError, OutputError, UsageError
from knnvc.matcher import knn_regression
from knnvc.speakers import Skipped, Utterance, discover, pool_groups
from vocoder.train.data import (
    SUFFIX,
    Entry,
    TrainingError,
    hop_for,
    read_index,
    read_metadata,
    write_index,
    write_utterance,
)

if TYPE_CHECKING:
    from knnvc.encoder import WavLMEncoder

__all__ = ["MIN_FRAMES", "PrematchReport", "Skipped", "Utterance", "discover", "prematch", "prematch_features"]

logger = logging.getLogger(__name__)

MIN_FRAMES = 10  # 0.2 s: shorter utterances are skipped (and cannot be encoded below 400 samples anyway)
MAX_POOL_MINUTES = 60.0  # a bigger speaker is matched in pools of about this size (WavLM-Large: 0.7 GB fp32)
SKIPPED_NAME = "skipped.json"
SpeakerCallback = Callable[[int, int, str], None]  # (speakers done, speakers in all, current speaker)


@dataclass
class PrematchReport:
    """What a run did: utterances written now, found done from an earlier run, and left out."""

    out_dir: Path
    speakers: int = 0
    written: int = 0
    existing: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    below_rate: int = 0  # utterances written whose file is recorded below the target rate (upsampled)


def prematch_features(features: Sequence[Tensor], k: int = DEFAULT_K) -> list[Tensor]:
    """For each (T_i, D) item, the mean of each frame's ``k`` nearest frames among all OTHER items.

    Returns one (T_i, D) tensor per item, in the inputs' dtype. Needs at least two items, and at least ``k``
    frames outside each item.
    """
    if len(features) < 2:
        raise ValueError("prematching needs at least two utterances of the speaker")
    bounds = _bounds(features)
    pool = torch.cat(list(features))
    return [_match_one(pool, bounds, i, k) for i in range(len(features))]


def _bounds(features: Sequence[Tensor]) -> list[int]:
    """Row offsets of each item in their concatenation: [0, T_0, T_0 + T_1, ...]."""
    return [int(x) for x in torch.tensor([0] + [f.shape[0] for f in features]).cumsum(0)]


def _match_one(pool: Tensor, bounds: Sequence[int], i: int, k: int) -> Tensor:
    """Item ``i`` (rows ``bounds[i]:bounds[i+1]`` of ``pool``) regressed onto every other row."""
    others = torch.cat([pool[: bounds[i]], pool[bounds[i + 1] :]])
    return knn_regression(pool[bounds[i] : bounds[i + 1]], others, k)


@dataclass
class _Run:
    """The state of one prematch run."""

    encoder: WavLMEncoder
    out_dir: Path
    k: int
    sample_rate: int
    batch_size: int
    min_frames: int
    settings: dict[str, Any]
    entries: dict[str, Entry]
    old_skipped: dict[str, Skipped]
    report: PrematchReport


def _settings_clash(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in ("k", "encoder_fingerprint", "sample_rate"):
        if key in old and str(old[key]) != str(new[key]):
            return f"{key} was {old[key]}, now {new[key]}"
    return None


def _resume_state(out_dir: Path, settings: dict[str, Any]) -> tuple[dict[str, Entry], dict[str, Skipped]]:
    """Entries and skipped files of an earlier run into ``out_dir`` (empty for a new folder)."""
    entries: dict[str, Entry] = {}
    if (out_dir / "index.json").is_file():
        try:
            index = read_index(out_dir)
        except TrainingError as exc:
            raise UsageError(str(exc)) from exc
        clash = _settings_clash({**index.settings, "sample_rate": index.sample_rate}, settings)
        if clash:
            raise UsageError(f"{out_dir} holds features made with other settings ({clash}); use a new folder")
        entries = {e.id: e for e in index.entries}
    skipped: dict[str, Skipped] = {}
    if (out_dir / SKIPPED_NAME).is_file():
        try:
            rows = json.loads((out_dir / SKIPPED_NAME).read_text(encoding="utf-8"))
            skipped = {r["path"]: Skipped(**r) for r in rows}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{out_dir / SKIPPED_NAME}: unreadable ({exc}); delete it to start over") from exc
    return entries, skipped


def _existing(run: _Run, utt: Utterance) -> Entry | None:
    """The entry of an utterance already written (by this or an earlier run), else None."""
    file = utt.id + SUFFIX
    if not (run.out_dir / file).is_file():
        return None
    if utt.id in run.entries:
        return run.entries[utt.id]
    try:
        meta = read_metadata(run.out_dir / file)
    except TrainingError:
        return None  # a foreign or damaged file: written again
    clash = _settings_clash(meta, run.settings)
    if clash:
        raise UsageError(f"{run.out_dir / file} was made with other settings ({clash}); use a new folder")
    return Entry(utt.id, utt.speaker, file, int(meta["frames"]))


def _skip(run: _Run, utt: Utterance, reason: str) -> None:
    logger.warning("skipping %s: %s", utt.path, reason)
    run.report.skipped.append(Skipped(str(utt.path), utt.speaker, reason))


def _load_usable(run: _Run, utts: Sequence[Utterance]) -> list[tuple[Utterance, Tensor]]:
    """16 kHz waveforms of the utterances that can be read and are long enough; the others are reported."""
    usable = []
    for utt in utts:
        try:
            wav = audio.load(utt.path)
        except AudioError as exc:
            _skip(run, utt, f"unreadable: {exc}")
            continue
        frames = num_frames(wav.shape[0])
        if frames < run.min_frames:
            _skip(run, utt, f"too short: {frames} frames ({wav.shape[0] / SAMPLE_RATE:.2f} s), "
                            f"fewer than {run.min_frames}")
            continue
        usable.append((utt, torch.from_numpy(wav)))
    return usable


def _encode(run: _Run, wavs: Sequence[Tensor]) -> list[Tensor]:
    """Layer-6 features (T_i, D) fp32 of each 16 kHz waveform, in length-sorted batches, input order kept."""
    order = sorted(range(len(wavs)), key=lambda i: wavs[i].shape[0])
    out: dict[int, Tensor] = {}
    for start in range(0, len(order), run.batch_size):
        chunk = order[start : start + run.batch_size]
        for i, feats in zip(chunk, run.encoder.encode_batch([wavs[i] for i in chunk]), strict=True):
            out[i] = feats.float()
    return [out[i] for i in range(len(wavs))]


def _native_rate(path: Path) -> int:
    """The file's own sample rate from its header (0 when unknown)."""
    try:
        return int(soundfile.info(str(path)).samplerate)
    except (soundfile.LibsndfileError, OSError, RuntimeError):
        return 0


def _target_audio(run: _Run, utt: Utterance, wav16: Tensor, frames: int) -> Tensor:
    """The utterance at the target rate, cut or zero-padded to ``frames * hop`` samples."""
    if run.sample_rate == SAMPLE_RATE:
        wav = wav16
    else:
        wav = torch.from_numpy(audio.load(utt.path, sample_rate=run.sample_rate))
        if _native_rate(utt.path) < run.sample_rate:
            run.report.below_rate += 1
            logger.debug("%s is recorded below %d Hz", utt.path, run.sample_rate)
    need = frames * hop_for(run.sample_rate)
    return torch.nn.functional.pad(wav[:need], (0, max(0, need - wav.shape[0])))


def _write(run: _Run, utt: Utterance, features: Tensor, wav16: Tensor) -> Entry:
    file = utt.id + SUFFIX
    meta = {"id": utt.id, "speaker": utt.speaker, "source": str(utt.path), "k": str(run.k),
            "encoder": str(run.settings["encoder"]), "encoder_fingerprint": str(run.settings["encoder_fingerprint"])}
    target = _target_audio(run, utt, wav16, features.shape[0])
    try:
        write_utterance(run.out_dir / file, features, target, sample_rate=run.sample_rate, metadata=meta)
    except OSError as exc:
        raise OutputError(f"cannot write {run.out_dir / file}: {exc}") from exc
    return Entry(utt.id, utt.speaker, file, int(features.shape[0]))


def _speaker(run: _Run, speaker: str, utts: Sequence[Utterance]) -> None:
    """Prematch one speaker's utterances that are not written yet (the pool needs all of them encoded)."""
    done = {u.id: e for u in utts if (e := _existing(run, u)) is not None}
    if all(u.id in done or str(u.path) in run.old_skipped for u in utts):
        run.entries.update(done)
        run.report.existing += len(done)
        run.report.skipped.extend(run.old_skipped[str(u.path)] for u in utts if u.id not in done)
        return
    usable = _load_usable(run, utts)
    if len(usable) < 2:
        for utt, _ in usable:
            _skip(run, utt, f"speaker {speaker!r} has no other usable utterance to match against")
        return
    feats = _encode(run, [wav for _, wav in usable])
    bounds = _bounds(feats)
    pool = torch.cat(feats)
    for i, (utt, wav) in enumerate(usable):
        if utt.id in done:
            run.entries[utt.id] = done[utt.id]
            run.report.existing += 1
        elif pool.shape[0] - feats[i].shape[0] < run.k:
            _skip(run, utt, f"speaker {speaker!r} has fewer than k={run.k} frames outside this utterance")
        else:
            run.entries[utt.id] = _write(run, utt, _match_one(pool, bounds, i, run.k), wav)
            run.report.written += 1


def _save_progress(run: _Run) -> None:
    """Rewrite ``index.json`` and ``skipped.json`` (atomically enough to resume after a crash)."""
    try:
        write_index(run.out_dir, list(run.entries.values()), sample_rate=run.sample_rate,
                    feature_dim=int(run.settings["feature_dim"]), settings=run.settings)
        rows = [asdict(s) for s in run.report.skipped]
        tmp = run.out_dir / f".{SKIPPED_NAME}.tmp"
        tmp.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        os.replace(tmp, run.out_dir / SKIPPED_NAME)
    except OSError as exc:
        raise OutputError(f"cannot write the index of {run.out_dir}: {exc}") from exc


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
            _save_progress(run)
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
    device: str = "auto",
    sample_rate: int = SAMPLE_RATE,
    batch_size: int = 8,
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
        sample_rate: rate of the stored target audio (resampled from the original files with soxr).
        batch_size: waveforms encoded together.
        min_frames: utterances with fewer 50 Hz frames are skipped and reported.
        max_pool_minutes: a speaker with more audio is matched in separate pools of about this size (memory).

    Raises:
        UsageError (bad folders, manifest, settings), WeightsError, DeviceError, OutputError.
    """
    from knnvc.pipeline import resolve_device

    try:
        hop_for(sample_rate)
    except TrainingError as exc:
        raise UsageError(f"--sample-rate: {exc}") from exc
    if k < 1 or batch_size < 1 or min_frames < 1:
        raise UsageError("k, batch size and min frames must be at least 1")
    utts, skipped = discover(data_dir, manifest)
    if encoder is None:
        from knnvc.checkpoints import load_encoder

        encoder = load_encoder(wavlm, offline=offline)
    encoder = encoder.to(resolve_device(device)).eval()
    settings = {"k": k, "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint, "layer": WAVLM_LAYER,
                "feature_dim": encoder.dim, "sample_rate": sample_rate, "pool": "other utterances of the speaker",
                "max_pool_minutes": max_pool_minutes}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries, old_skipped = _resume_state(out, settings)
    run = _Run(encoder, out, k, sample_rate, batch_size, min_frames, settings, entries, old_skipped,
               PrematchReport(out, skipped=list(skipped)))
    _run_speakers(run, utts, max_pool_minutes * 60, on_speaker)
    if run.report.below_rate:
        logger.warning("%d utterances are recorded below %d Hz and were upsampled: the vocoder will learn their "
                       "missing high frequencies", run.report.below_rate, sample_rate)
    logger.info("prematch: %d written, %d already done, %d skipped", run.report.written, run.report.existing,
                len(run.report.skipped))
    return run.report
