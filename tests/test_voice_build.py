"""``knnvc voice build``: an existing voice is never replaced by accident, and each reference counts once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from knnvc.errors import OutputError
from tests.conftest import REF_DIR, TINY_WAVLM
from tests.fault_tools import cli, one_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BUILD = ["--wavlm", TINY_WAVLM, "--device", "cpu", "--no-trim"]


def _meta(path: Path) -> dict[str, object]:
    result = cli("voice", "info", path, "--json")
    assert result.exit_code == 0, result.stderr
    meta: dict[str, object] = json.loads(result.stdout)
    return meta


def test_existing_voice_needs_overwrite(tmp_path: Path) -> None:
    refs = sorted(REF_DIR.glob("*.wav"))
    path = tmp_path / "alice.voice"
    assert cli("voice", "build", refs[0], "-o", path, *BUILD).exit_code == 0
    before = path.read_bytes()
    refused = cli("voice", "build", refs[1], "-o", path, "--wavlm", tmp_path / "never-loaded.pt")
    assert refused.exit_code == OutputError.exit_code  # refused before any model loads
    line = one_line(refused)
    assert str(path) in line and "already exists" in line and "--overwrite" in line
    assert path.read_bytes() == before
    replaced = cli("voice", "build", refs[1], "-o", path, *BUILD, "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    assert [s["path"] for s in _meta(path)["sources"]] == [str(refs[1])]  # type: ignore[index]


def test_each_reference_file_counts_once(tmp_path: Path) -> None:
    folder = tmp_path / "refs"
    shutil.copytree(REF_DIR, folder)
    files = sorted(folder.glob("*.wav"))
    once = tmp_path / "once.voice"
    assert cli("voice", "build", folder, "-o", once, *BUILD).exit_code == 0
    twice = tmp_path / "twice.voice"
    # the same file twice (once by another spelling of its path), and a file that is also inside the folder
    again = folder / ".." / folder.name / files[0].name
    result = cli("voice", "build", files[0], again, folder, files[1], "-o", twice, *BUILD)
    assert result.exit_code == 0, result.stderr
    first, second = _meta(once), _meta(twice)
    assert second["frames"] == first["frames"]
    assert sorted(s["path"] for s in second["sources"]) == sorted(str(p) for p in files)  # type: ignore[attr-defined]
    assert "counted once" in result.stderr
