"""Release packaging: one version, the declared license's text, the typing marker, a changelog."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import seqjax
from seqjax.apps import cli

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_version_has_one_source():
    """pyproject.toml holds it; the package and the command read the installed metadata."""
    version = PYPROJECT["version"]
    written = [p for p in (ROOT / "seqjax").rglob("*.py") if f'"{version}"' in p.read_text()]
    assert not written, f"the version is written again in {written}"
    if seqjax.__version__ == "0+unknown":
        pytest.skip("seqjax is not installed, so it has no version metadata")
    assert seqjax.__version__ == PYPROJECT["version"]


def test_seqjax_version_prints_it(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"seqjax {seqjax.__version__}"


def test_the_license_file_is_the_declared_license():
    assert PYPROJECT["license"] == "Apache-2.0"
    assert PYPROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_package_says_it_is_typed():
    assert (ROOT / "seqjax" / "py.typed").exists()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in package_data["package-data"]["seqjax"]
    assert "Typing :: Typed" in PYPROJECT["classifiers"]


def test_the_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    for heading in ("### Added", "### Changed", "### Removed"):
        assert heading in text
