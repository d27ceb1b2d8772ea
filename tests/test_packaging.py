"""The distributions of this repository are versioned together.

Every plugin under ``plugins/`` (new ones too) declares a range on the core that
includes the core's current version and stops before its next minor release, and
carries the core's version.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _project(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    return data


CORE_VERSION = Version(_project(ROOT / "core" / "pyproject.toml")["version"])
PLUGIN_FILES = sorted(ROOT.glob("plugins/*/pyproject.toml"))


def test_plugins_are_found() -> None:
    names = {p.parent.name for p in PLUGIN_FILES}
    assert {"_template", "memory", "redis"} <= names


@pytest.mark.parametrize("pyproject", PLUGIN_FILES, ids=lambda p: p.parent.name)
def test_plugin_declares_a_core_range_that_includes_the_core(pyproject: Path) -> None:
    requirements = [Requirement(r) for r in _project(pyproject).get("dependencies", [])]
    on_core = [r for r in requirements if r.name == "dotmac-events"]
    assert len(on_core) == 1, f"{pyproject}: one requirement on dotmac-events, got {on_core}"
    specifier = on_core[0].specifier
    assert specifier.contains(CORE_VERSION, prereleases=True), (
        f"{pyproject}: {specifier} excludes the core's version {CORE_VERSION}"
    )
    # An upper bound below the next minor release: a plugin built against 0.1 says
    # nothing about 0.2.
    next_minor = Version(f"{CORE_VERSION.major}.{CORE_VERSION.minor + 1}")
    assert not specifier.contains(next_minor, prereleases=True), (
        f"{pyproject}: {specifier} admits {next_minor}; bound it with <{next_minor}"
    )


@pytest.mark.parametrize(
    "pyproject", [p for p in PLUGIN_FILES if not p.parent.name.startswith("_")], ids=lambda p: p.parent.name
)
def test_plugin_is_versioned_with_the_core(pyproject: Path) -> None:
    assert Version(_project(pyproject)["version"]) == CORE_VERSION
