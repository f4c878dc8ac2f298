"""The design page cannot drift: its module map names every module of ``knnvc/`` and nothing else, its layers are
the ones ``lint-imports`` checks, and the top of the package stays small."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DESIGN = ROOT / "docs" / "design.md"
MAX_TOP_ENTRIES = 16  # modules and folders at the top of knnvc/, the package's own __init__/__main__ aside


def modules_on_disk() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "knnvc").rglob("*.py") if "__pycache__" not in p.parts}


def modules_in_map() -> list[str]:
    return re.findall(r"^\| `(knnvc/[\w/]+\.py)` \|", DESIGN.read_text(encoding="utf-8"), re.M)


def test_the_module_map_names_every_module_once() -> None:
    listed = modules_in_map()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    missing = sorted(modules_on_disk() - set(listed))
    stale = sorted(set(listed) - modules_on_disk())
    assert not missing and not stale, f"docs/design.md module map: add {missing}, remove {stale}"


def test_the_layers_drawn_are_the_layers_checked() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    drawn = DESIGN.read_text(encoding="utf-8").split("The layers as import-linter states them", 1)[1]
    block = drawn.split("```", 2)[1].strip().splitlines()
    assert block == contract["layers"]
    assert config["tool"]["importlinter"]["exclude_type_checking_imports"] is False


def test_the_top_of_the_package_is_small_and_two_levels_deep() -> None:
    top = [p for p in (ROOT / "knnvc").iterdir() if p.name not in ("__init__.py", "__main__.py", "__pycache__")]
    assert len(top) <= MAX_TOP_ENTRIES, sorted(p.name for p in top)
    nested = [p for p in (ROOT / "knnvc").glob("*/*") if p.is_dir() and p.name != "__pycache__"]
    assert not nested, f"folders more than two levels deep: {nested}"
