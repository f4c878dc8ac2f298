"""The conversion controls' options for ``knnvc convert`` (the method, strength, match layer, weighting, morph).

Kept apart from ``convert.py`` so the command stays short; see docs/controls.md for what each control does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from knnvc.errors import UsageError
from knnvc.options import MKL_BLOCK, ConvertOptions

if TYPE_CHECKING:
    from knnvc.pipeline import KnnVC

StrengthOpt = Annotated[
    float,
    typer.Option("--strength", help="0-2: 0 keeps the source voice, 1 the target, above 1 exaggerates."),
]
MatchLayerOpt = Annotated[
    int,
    typer.Option("--match-layer", help="WavLM layer searched for neighbours (1 to the model's layers)."),
]
WeightingOpt = Annotated[
    str,
    typer.Option("--knn-weighting", help="uniform (the paper's mean) or inverse-distance (1/d^2 weights)."),
]
MethodOpt = Annotated[
    str,
    typer.Option("--method", help="knn (kNN-VC), mkl (MKL-VC: a per-utterance map, for seconds of reference) or "
                 "linear (LinearVC: give a .pair as the target; a .pair always converts with its own map)."),
]  # fmt: skip
MklBlockOpt = Annotated[
    int,
    typer.Option("--mkl-block", min=1, help="MKL-VC: feature dimensions mapped jointly (the authors suggest 2-16)."),
]
MorphOpt = Annotated[
    Path | None,
    typer.Option("--morph", help="A second voice (.voice file, reference file or folder) to morph towards."),
]
MorphWeightOpt = Annotated[
    float | None,  # None: not given (it needs --morph), so ConvertOptions' own default
    typer.Option("--morph-weight", help="0-1: share of the --morph voice (0 the first voice, 1 the second).",
                 show_default=str(ConvertOptions.morph_weight)),  # fmt: skip
]


def controls(
    strength: float,
    match_layer: int,
    knn_weighting: str,
    morph: Path | None,
    morph_weight: float | None,
    *,
    method: str = "knn",
    mkl_block: int = MKL_BLOCK,
) -> dict[str, Any]:
    """``ConvertOptions`` keywords for the control flags (the morph voice itself is loaded later)."""
    if morph_weight is not None and morph is None:
        raise UsageError("--morph-weight needs --morph VOICE (the second voice to morph towards)")
    if mkl_block != MKL_BLOCK and method != "mkl":
        raise UsageError(f"--mkl-block is MKL-VC's block size: it needs --method mkl (got --method {method})")
    weight = {} if morph_weight is None else {"morph_weight": morph_weight}
    chosen = {"strength": strength, "match_layer": match_layer, "knn_weighting": knn_weighting, **weight}
    return {**chosen, "method": method, "mkl_block": mkl_block}


def with_morph_voice(vc: KnnVC, options: ConvertOptions, morph: Path | None) -> ConvertOptions:
    """``options`` with the ``--morph`` voice loaded (a .voice file) or built (references, trimmed as asked)."""
    if morph is None:
        return options
    from dataclasses import replace

    voice = vc.voice_from(morph, trim=options.trim, match_layer=options.match_layer)
    voice.check_compatible(vc.encoder.fingerprint, vc.encoder.layer, vc.encoder.name)
    return replace(options, morph=voice)
