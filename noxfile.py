"""Development sessions: tests per distribution, conformance, lint, typecheck, demo, bench.

Plugins are discovered under ``plugins/``; a plugin whose tests need sibling
distributions (which are not on PyPI) names them in its pyproject.toml::

    [tool.dotmac-events]
    test-requires = ["memory"]

Each ``tests`` session measures the coverage of the distribution it tests and fails
below a floor: 90 % for the core, 85 % for a plugin, unless the pyproject declares its
own (visibly, next to the reason)::

    [tool.dotmac-events]
    coverage-floor = 80

Only interpreters that exist on the machine are used; none is ever downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).parent
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False
nox.options.sessions = ["tests", "conformance", "lint", "typecheck"]
if (ROOT / "benchmarks" / "run.py").exists():
    nox.options.sessions.append("bench_smoke")

ALL_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def _usable(version: str) -> bool:
    # pyenv puts shims for every installed version on PATH; only active ones run.
    exe = shutil.which(f"python{version}")
    if exe is None:
        return False
    return subprocess.run([exe, "-c", ""], capture_output=True, check=False).returncode == 0


PYTHONS = [v for v in ALL_PYTHONS if _usable(v)]
DEFAULT_PYTHON = "3.11" if "3.11" in PYTHONS else (PYTHONS[-1] if PYTHONS else None)
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
COVERAGE = "coverage==7.17.3"
# Test-support code shipped in the core (the conformance kit, hostile producers): it is
# exercised by the conformance session and the plugins' suites, not by the core's own
# tests, so it stays out of the core's figure.
CORE_TEST_KIT = ROOT / "core" / "src" / "dotmac" / "events" / "testing"
# Distributions tested on every interpreter; the others on the default one. The Redis
# plugin builds on redis-py's asyncio connection and the event loop's socket writes,
# whose behaviour differs between Python releases.
MATRIX_PACKAGES = ("core", "memory", "redis")


def _plugins() -> list[str]:
    return sorted(
        p.name
        for p in (ROOT / "plugins").iterdir()
        if (p / "pyproject.toml").exists() and not p.name.startswith("_")
    )


PLUGINS = _plugins()


def _home(package: str) -> Path:
    return ROOT / "core" if package == "core" else ROOT / "plugins" / package


def _settings(package: str) -> dict[str, Any]:
    """The ``[tool.dotmac-events]`` table of a distribution's pyproject.toml."""
    data = tomllib.loads((_home(package) / "pyproject.toml").read_text())
    return dict(data.get("tool", {}).get("dotmac-events", {}))


def _test_requires(package: str) -> list[str]:
    return list(_settings(package).get("test-requires", []))


def _install(session: nox.Session, *packages: str, test: bool = True) -> None:
    """Install core and the named plugin distributions editable (with their test extras)."""
    extra = "[test]" if test else ""
    args = ["-e", f"{ROOT / 'core'}{extra}"]
    for name in packages:
        if name == "core":
            continue
        path = ROOT / "plugins" / name
        has_test = "test" in tomllib.loads((path / "pyproject.toml").read_text()).get("project", {}).get(
            "optional-dependencies", {}
        )
        args += ["-e", f"{path}[test]" if test and has_test else str(path)]
    session.install(*args)


def _params() -> list[object]:
    params = []
    for package in ["core", *PLUGINS]:
        if DEFAULT_PYTHON is not None:
            params.append(nox.param(DEFAULT_PYTHON, package, id=package))
        if package in MATRIX_PACKAGES:
            for py in PYTHONS:
                if py != DEFAULT_PYTHON:
                    params.append(nox.param(py, package, id=f"{package}-py{py}"))
    return params


@nox.session
@nox.parametrize(("python", "package"), _params())
def tests(session: nox.Session, package: str) -> None:
    """One distribution in a venv of its own (core alone, or core plus one plugin)."""
    wanted = [package, *_test_requires(package)]
    _install(session, *wanted)
    paths = (
        [str(ROOT / "core" / "tests")] if package == "core" else [str(ROOT / "plugins" / package / "tests")]
    )
    measured = [package]
    if package == "memory":
        # The core's bus tests need a transport: they run here, with the memory plugin,
        # so this is where the core's whole suite runs and its coverage is measured.
        paths.append(str(ROOT / "core" / "tests"))
        measured.append("core")
    elif package == "core":
        measured = []
    env = {"DOTMAC_EVENTS_LOAD_PLUGINS": ",".join(n for n in wanted if n != "core")}
    if not measured:
        session.run("pytest", *paths, *session.posargs, env=env)
        return
    session.install(COVERAGE)
    env["COVERAGE_FILE"] = str(Path(session.create_tmp()) / ".coverage")
    sources = ",".join(str(_home(p) / "src") for p in measured)
    session.run("coverage", "run", f"--source={sources}", "-m", "pytest", *paths, *session.posargs, env=env)
    _check_coverage(session, measured, env)


def _coverage_floor(package: str) -> float:
    return float(_settings(package).get("coverage-floor", 90 if package == "core" else 85))


def _check_coverage(session: nox.Session, measured: list[str], env: dict[str, str]) -> None:
    """A coverage table per distribution; one below its floor fails the session.

    With pytest arguments after ``--`` (a subset of the tests) the figures are shown
    but not checked.
    """
    for package in measured:
        floor = _coverage_floor(package)
        session.log(f"coverage of {package} (floor {floor:g} %):")
        args = ["--skip-covered", "--precision=1", f"--include={_home(package) / 'src'}/*"]
        if package == "core":
            args.append(f"--omit={CORE_TEST_KIT}/*")
        if not session.posargs:
            args.append(f"--fail-under={floor}")
        session.run("coverage", "report", *args, env=env)


@nox.session(python=DEFAULT_PYTHON)
def conformance(session: nox.Session) -> None:
    """The conformance kit against every transport plugin, plus cross-package tests."""
    _install(session, *PLUGINS)
    session.run("pytest", str(ROOT / "tests"), *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=DEFAULT_PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the core and every plugin."""
    _install(session, *PLUGINS)
    session.install(MYPY, "tomli")  # tomli: the Python 3.10 branch of the TOML loader
    sources = [str(ROOT / "core" / "src")] + [str(ROOT / "plugins" / p / "src") for p in PLUGINS]
    env = {"MYPYPATH": os.pathsep.join(sources)}
    targets = [str(ROOT / "core" / "src" / "dotmac")]
    for plugin in PLUGINS:
        targets += [str(p) for p in (ROOT / "plugins" / plugin / "src").iterdir() if p.is_dir()]
    session.run("mypy", *targets, env=env)


@nox.session(python=DEFAULT_PYTHON)
def demo(session: nox.Session) -> None:
    """The order-processing demo on memory:// (pass --url ... after -- for another transport)."""
    _install(session, "memory", *(p for p in PLUGINS if p not in ("memory",)), test=False)
    session.run("dotmac-events", "demo", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def bench(session: nox.Session) -> None:
    """End-to-end benchmarks against the raw clients (pass options after --)."""
    _install(session, *PLUGINS, test=False)
    session.install("-r", str(ROOT / "benchmarks" / "requirements.txt"))
    session.run("python", str(ROOT / "benchmarks" / "run.py"), *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """A tiny benchmark run so the harness cannot rot (numbers are not checked)."""
    _install(session, *PLUGINS, test=False)
    session.install("-r", str(ROOT / "benchmarks" / "requirements.txt"))
    session.run("python", str(ROOT / "benchmarks" / "run.py"), "--smoke")
