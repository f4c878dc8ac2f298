"""``--sweep NAME=V1,V2,...``: convert over a grid of one ``ConvertOptions`` setting, then score each point.

The setting's name and type come from ``ConvertOptions``' own fields, so a control added there can be swept with
no change here. Conversion goes through the public pipeline (``knnvc.batch.runner.run`` with a ``KnnVC``); each grid
point is written to ``OUT/NAME=VALUE/`` and scored like any folder of conversions.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knnvc.errors import UsageError
from knnvc.options import ConvertOptions

if TYPE_CHECKING:
    from knnvc.batch.plan import Report
    from knnvc.pipeline import KnnVC
    from knnvc.voice import Voice

TRUE, FALSE, NONE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}, {"none", "null", "off"}


@dataclass(frozen=True)
class Grid:
    """One setting of ``ConvertOptions`` and the values it takes."""

    name: str
    values: tuple[Any, ...]

    def options(self, base: ConvertOptions) -> list[ConvertOptions]:
        """``base`` with the setting replaced by each value (validated by ``ConvertOptions``)."""
        return [dataclasses.replace(base, **{self.name: value}) for value in self.values]

    def folder(self, value: Any) -> str:
        return f"{self.name}={value}"


def settings() -> list[str]:
    """The names ``--sweep`` accepts: every field of ``ConvertOptions``."""
    return [f.name for f in dataclasses.fields(ConvertOptions)]


def parse_sweep(spec: str, base: ConvertOptions | None = None) -> Grid:
    """``"k=1,4,8"`` -> ``Grid("k", (1, 4, 8))``, each value typed as its field and checked by ``ConvertOptions``.

    Raises:
        UsageError: no ``=``, an unknown setting, an empty or repeated value, or a value the field refuses.
    """
    name, sep, raw = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not raw.strip():
        raise UsageError(f"sweep takes 'NAME=V1,V2,...' (for example 'k=1,4,8'), got {spec!r}")
    if name not in settings():
        raise UsageError(f"sweep: unknown setting {name!r}; ConvertOptions has {', '.join(settings())}")
    from knnvc.voice import Voice  # ConvertOptions names it only for type checkers (options sits below voice)

    kind = typing.get_type_hints(ConvertOptions, localns={"Voice": Voice})[name]
    texts = [v.strip() for v in raw.split(",")]
    if any(not t for t in texts) or len(set(texts)) != len(texts):
        raise UsageError(f"sweep {spec!r}: values must be non-empty and distinct")
    grid = Grid(name, tuple(_typed(t, kind, name) for t in texts))
    grid.options(base or ConvertOptions())  # every value checked before anything loads
    return grid


def _typed(text: str, kind: Any, name: str) -> Any:
    allowed = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if type(None) in allowed and text.lower() in NONE:
        return None
    for t in allowed:
        if typing.get_origin(t) is typing.Literal:
            choices = {str(c): c for c in typing.get_args(t)}
            if text in choices:
                return choices[text]
            continue
        if t is bool and text.lower() in TRUE | FALSE:
            return text.lower() in TRUE
        if t in (int, float, str):
            try:
                return t(text)
            except ValueError:
                continue
    names = " or ".join(getattr(t, "__name__", None) or str(t) for t in allowed)
    raise UsageError(f"sweep: {name} takes {names} values, got {text!r}")


def run_sweep(
    vc: KnnVC,
    source: Path,
    voice: Voice,
    grid: Grid,
    out: Path,
    *,
    base: ConvertOptions | None = None,
    overwrite: bool = False,
    on_point: Callable[[str, Report], None] | None = None,
) -> list[tuple[Any, Path]]:
    """Convert ``source`` (file or folder) into ``voice`` at each grid value; return (value, output folder) pairs.

    Outputs already there are kept (rerun to resume) unless ``overwrite``. A grid point whose files all fail
    raises the first failure.
    """
    from knnvc.batch import plan, runner

    points = []
    for value, options in zip(grid.values, grid.options(base or ConvertOptions()), strict=True):
        folder = out / grid.folder(value)
        target = folder if source.is_dir() else folder / f"{source.stem}.wav"
        folder.mkdir(parents=True, exist_ok=True)
        jobs = plan.plan(source, target, voice.name)
        report = runner.run(vc, jobs, voice, options, overwrite=overwrite)
        if report.interrupted:
            raise KeyboardInterrupt
        if report.failed and not report.converted and not report.skipped:
            raise report.failed[0].error
        if on_point is not None:
            on_point(grid.folder(value), report)
        points.append((value, folder))
    return points
