"""The package metadata: a license setuptools accepts without a deprecation warning, the decoders it needs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_license_is_an_spdx_string_and_setuptools_does_not_warn() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (77, 0):
        pytest.skip("setuptools < 77 does not know SPDX license strings")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the table form raised a BuildBackendWarning here
        dist = apply_configuration(Distribution(), str(PYPROJECT))
    assert dist.metadata.license_expression == "MIT"


def test_pyav_is_a_core_dependency() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert any(dep.split(">")[0].split("=")[0].strip() == "av" for dep in project["dependencies"])
