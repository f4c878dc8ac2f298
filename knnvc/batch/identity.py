"""What shaped a batch's audio, as plain JSON: the ``Settings`` that ``knnvc.batch.manifest`` records and compares.

The voice (by the hash of its frames, or of its reference files) or the pair (by the hash of its map), the
``ConvertOptions`` fields that shape the audio, the weights, the precision, and the output format and rate. Two
batches with equal ``Settings.key`` make the same outputs.

The matching step is recorded where it is not kNN's: ``method`` (and MKL-VC's ``mkl_block``), with kNN's own
controls left out since they play no part. A kNN batch's options are recorded as they were before other methods
existed, so outputs made then are still "done" on a rerun.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knnvc.errors import AudioError, KnnvcError
from knnvc.files import sha256
from knnvc.options import ConvertOptions, package_version

if TYPE_CHECKING:
    from knnvc.pipeline import KnnVC, Target

KNN_ONLY = ("k", "match_layer", "knn_weighting", "morph", "morph_weight")  # options that only kNN matching reads


@dataclass(frozen=True)
class Settings:
    """What shaped a batch's audio (``audio``, compared on reruns) and facts kept beside it (not compared)."""

    audio: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A short hash of ``audio``: equal keys mean outputs made the same way."""
        return sha256([json.dumps(self.audio, sort_keys=True).encode()])[:16]

    def changes(self, other: dict[str, Any]) -> list[str]:
        """``section.name: old -> new`` for every compared value that differs from ``other`` (a recorded one)."""
        out = []
        for section in sorted(set(self.audio) | set(other)):
            old, new = other.get(section, {}), self.audio.get(section, {})
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    out.append(f"{section}.{name}: {_short(old.get(name))} -> {_short(new.get(name))}")
        return out

    def compact(self) -> dict[str, Any]:
        """``audio`` small enough for a file's own metadata: the voice (and a morph voice) by the hash of what
        identifies it, every other value as it is. ``Settings(compact).changes`` compares two compact forms."""
        options = self.audio.get("options", {})
        morph = options.get("morph")
        return {
            **self.audio,
            "voice": _hashed(self.audio.get("voice", {})),
            "options": {**options, "morph": _hashed(morph)["sha256"]} if morph is not None else options,
        }


def _hashed(voice: dict[str, Any]) -> dict[str, Any]:
    """A voice identity as its name and a short hash of the whole."""
    return {"name": voice.get("name"), "sha256": sha256([json.dumps(voice, sort_keys=True).encode()])[:16]}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def voice_identity(target: Target | Path) -> dict[str, Any]:
    """Who the outputs sound like, without encoding anything.

    A saved or in-memory ``Voice``: its name, encoder and a hash of its (M, D) frames. A ``Pair``: its name,
    method, encoder and a hash of its map ((D, D) matrix and bias: the same map converts the same way, wherever it
    was saved). Reference audio (a file or a folder, as ``build_voice`` reads it): the sha256 of each file in order
    (built with the same encoder and trim, the same references give the same voice).
    """
    from knnvc.audio import decode
    from knnvc.voice import Pair, Voice

    if isinstance(target, Pair):
        tensors = [target.matrix] if target.bias is None else [target.matrix, target.bias]
        chunks = [t.detach().cpu().contiguous().numpy().tobytes() for t in tensors]
        return {
            "name": target.name,
            "pair": target.method,
            "encoder_fingerprint": target.encoder_fingerprint,
            "layer": target.layer,
            "map_sha256": sha256(chunks)[:16],
        }
    if isinstance(target, Voice):
        frames = target.frames.detach().cpu().float().contiguous().numpy().tobytes()
        return {
            "name": target.name,
            "encoder_fingerprint": target.encoder_fingerprint,
            "layer": target.layer,
            "frames_sha256": sha256([frames])[:16],
        }
    files = decode.audio_files(target) if target.is_dir() else [target]
    try:
        hashes = [sha256(p)[:16] for p in files]
    except OSError as exc:
        raise AudioError(f"{exc.filename or target}: cannot read ({exc.strerror}); check the reference") from exc
    return {"name": target.stem if target.is_file() else target.resolve().name, "references": hashes}


def vocoder_identity(name: str) -> str:
    """The sha256 of a vocoder checkpoint (the registry's pinned one, else the file's), for the record."""
    from knnvc.weights import hub

    try:
        entry = hub.get_entry(name, "vocoder")
    except KnnvcError:  # not a registry name: a path
        entry = None
    if entry is not None and entry.sha256:
        return entry.sha256[:16]
    return sha256(hub.resolve_vocoder(name, offline=True))[:16]


def settings_for(
    voice: dict[str, Any],
    options: ConvertOptions,
    *,
    encoder: tuple[str, str, int],
    vocoder: str,
    precision: str,
    extension: str,
    sample_rate: int,
    device: str = "",
    method: str | None = None,
) -> Settings:
    """The ``Settings`` of a batch: ``voice`` from ``voice_identity``, ``encoder`` as (name, fingerprint, layer),
    ``vocoder`` its registry name or path, ``precision`` the resolved dtype (``torch.float32``...), ``method`` the
    matching step used (``knnvc.pipeline.method_for``: a pair's own; default ``options.method``)."""
    name, fingerprint, layer = encoder
    audio = {
        "voice": voice,
        "options": options_record(options, method or options.method),
        "weights": {"wavlm": fingerprint, "layer": layer, "vocoder": vocoder_identity(vocoder)},
        "compute": {"precision": precision},
        "output": {"format": extension, "sample_rate": sample_rate},
    }
    facts = {"knnvc": package_version(), "wavlm": name, "vocoder": vocoder, "device": device,
             "first_used": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    return Settings(audio, facts)


def options_record(options: ConvertOptions, method: str) -> dict[str, Any]:
    """The options that shape the audio of ``method``, JSON-able: every field for kNN but the other methods' (as
    recorded before they existed), the morph voice by ``voice_identity``; for MKL-VC and a pair, the method (and
    MKL-VC's block size, unless a pair's map fixes it) without kNN's controls."""
    from knnvc.voice import Voice

    morph = voice_identity(options.morph) if isinstance(options.morph, Voice) else None
    fields = {**asdict(replace(options, morph=None)), "morph": morph}
    kept = {key: value for key, value in fields.items() if key not in ("method", "mkl_block")}
    if method == "knn":
        return kept
    kept = {key: value for key, value in kept.items() if key not in KNN_ONLY}
    if options.method == "mkl":  # MKL-VC fitted per utterance (a pair's map holds its own block size)
        return {**kept, "method": method, "mkl_block": options.mkl_block}
    return {**kept, "method": method}


def batch_settings(
    vc: KnnVC,
    target: Target | Path,
    options: ConvertOptions,
    *,
    vocoder: str,
    extension: str,
    compute: tuple[str, str] | None = None,
) -> Settings:
    """The ``Settings`` of converting with ``vc`` into ``target`` (a ``Voice``, a ``Pair`` or reference audio): its
    encoder, ``vocoder`` (the name or path it was loaded from), precision, output rate and ``extension`` (.wav...).

    ``compute`` is (device, precision) when other workers convert (``knnvc.batch.cluster``), else ``vc``'s own."""
    from knnvc.voice import Pair

    device, precision = compute or (str(vc.device), str(vc.dtype).removeprefix("torch."))
    return settings_for(
        voice_identity(target),
        options,
        encoder=(vc.encoder.name, vc.encoder.fingerprint, vc.encoder.layer),
        vocoder=vocoder,
        precision=precision,
        extension=extension,
        sample_rate=vc.output_rate(options),
        device=device,
        method=target.method if isinstance(target, Pair) else options.method,
    )
