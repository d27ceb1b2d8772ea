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

What runs where (``make test``, the command CI runs, runs all of these):

- ``tests(<distribution>)``: its suite on the default interpreter (3.11 when
  installed), with coverage. The memory session runs the core's whole suite too and
  measures the core's coverage; ``tests(core)`` runs that suite with no plugin. The
  memory and redis sessions run again, whole, on the oldest installed interpreter
  (3.10), without coverage. Each runs in one process: its fault tests dominate its
  time and slow down when another module runs beside them.
- ``conformance``: ``tests/`` but ``tests/docs`` (the conformance kit against every
  transport, cross-package tests), on two pytest-xdist workers, each taking a whole
  module at a time.
- ``lint``, ``typecheck``, ``wheels``, ``audit``; ``bench_smoke`` (a tiny benchmark
  run); ``docs`` (every code block runs, then the site builds).

Pass pytest arguments after ``--`` to run a subset (conformance then runs in one process).

Only interpreters that exist on the machine are used; none is ever downloaded.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
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
nox.options.sessions += ["wheels", "audit"]
if (ROOT / "benchmarks" / "run.py").exists():
    nox.options.sessions.append("bench_smoke")
nox.options.sessions.append("docs")

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
XDIST = "pytest-xdist>=3.6"
MYPY = "mypy==2.4.1"
# A range, not a pin: recent releases need Python 3.11, and the matrix runs 3.10 too.
COVERAGE = "coverage>=7.10,<8"  # 7.10: [run] patch = subprocess
# Test-support code shipped in the core (the conformance kit, hostile producers): it is
# exercised by the conformance session and the plugins' suites, not by the core's own
# tests, so it stays out of the core's figure.
CORE_TEST_KIT = ROOT / "core" / "src" / "dotmac" / "events" / "testing"
# Distributions tested on the oldest supported interpreter as well as the default one;
# the others on the default one. The core's whole suite runs in the memory session on
# each of them (tests(core) runs it once more with no plugin installed). Their whole
# suites run on both; coverage is measured on the default interpreter only. The Redis
# plugin builds on the event loop's socket writes, whose behaviour differs between
# Python releases. With MATRIX_PYTHONS=all they run on every installed interpreter
# (3.12 and 3.13 too); CI keeps to the two to stay within its time.
MATRIX_PACKAGES = ("memory", "redis")
MATRIX_PYTHONS = PYTHONS if os.environ.get("MATRIX_PYTHONS") == "all" else PYTHONS[:1]


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


def _install(session: nox.Session, *packages: str, test: bool = True, also: tuple[str, ...] = ()) -> None:
    """Install core and the named plugin distributions editable (with their test extras)
    and the requirements in ``also``, in one resolution."""
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
    session.install(*args, *also)


def _params() -> list[object]:
    params = []
    for package in ["core", *PLUGINS]:
        if DEFAULT_PYTHON is not None:
            params.append(nox.param(DEFAULT_PYTHON, package, id=package))
        if package in MATRIX_PACKAGES:
            for py in MATRIX_PYTHONS:
                if py != DEFAULT_PYTHON:
                    params.append(nox.param(py, package, id=f"{package}-py{py}"))
    return params


@nox.session
@nox.parametrize(("python", "package"), _params())
def tests(session: nox.Session, package: str) -> None:
    """One distribution in a venv of its own (core alone, or core plus one plugin)."""
    wanted = [package, *_test_requires(package)]
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
    if session.python != DEFAULT_PYTHON:
        # The same tests on another interpreter; coverage is measured (and its floor
        # checked) once, on the default one: tracing slows the run, and the figure
        # would tell nothing new.
        measured = []
    _install(session, *wanted, also=(COVERAGE,) if measured else ())
    env = {"DOTMAC_EVENTS_LOAD_PLUGINS": ",".join(n for n in wanted if n != "core")}
    if not measured:
        session.run("pytest", *paths, *session.posargs, env=env)
        return
    tmp = Path(session.create_tmp())
    # Processes the tests start (the worker runner, the relay) are measured too.
    rcfile = tmp / "coveragerc"
    sources = "\n    ".join(str(_home(p) / "src") for p in measured)
    rcfile.write_text(f"[run]\nparallel = true\npatch = subprocess\nsource =\n    {sources}\n")
    env["COVERAGE_FILE"] = str(tmp / ".coverage")
    env["COVERAGE_RCFILE"] = str(rcfile)
    for stale in tmp.glob(".coverage*"):
        stale.unlink()
    session.run("coverage", "run", "-m", "pytest", *paths, *session.posargs, env=env)
    session.run("coverage", "combine", "--quiet", env=env)
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
    _install(session, *PLUGINS, also=(XDIST,))
    # Two workers, one test module each at a time: most of this suite waits on brokers,
    # and a module keeps its own broker fixtures. The docs' code blocks have a session
    # of their own (docs).
    workers = [] if session.posargs else ["-n", "2", "--dist", "loadfile"]
    session.run(
        "pytest", str(ROOT / "tests"), f"--ignore={ROOT / 'tests' / 'docs'}", *workers, *session.posargs
    )


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=DEFAULT_PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the core and every plugin."""
    # tomli: the Python 3.10 branch of the TOML loader
    _install(session, *PLUGINS, also=(MYPY, "tomli"))
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
    _install(session, *PLUGINS, test=False, also=("-r", str(ROOT / "benchmarks" / "requirements.txt")))
    session.run("python", str(ROOT / "benchmarks" / "run.py"), *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """A tiny benchmark run so the harness cannot rot (numbers are not checked)."""
    _install(session, *PLUGINS, test=False, also=("-r", str(ROOT / "benchmarks" / "requirements.txt")))
    session.run("python", str(ROOT / "benchmarks" / "run.py"), "--smoke")


# --- packages a user installs: wheels and the dependency audit -------------------------

TWINE = "twine==7.0.0"
PIP_AUDIT = "pip-audit==2.10.1"
# Pinned input, looked up one by one in PyPI's per-release data (what pypi.org serves).
AUDIT_OPTIONS = ("--no-deps", "--disable-pip", "--vulnerability-service", "pypi", "--progress-spinner", "off")
DIST = ROOT / "dist"


def _uv() -> str:
    # The uv that runs nox's venvs (.tools/bin/uv next to nox's interpreter).
    return shutil.which("uv") or str(Path(sys.executable).with_name("uv"))


def _project(package: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((_home(package) / "pyproject.toml").read_text())["project"]
    return data


def _wheel(package: str) -> Path:
    project = _project(package)
    stem = f"{project['name'].replace('-', '_')}-{project['version']}-"
    (wheel,) = (p for p in DIST.glob("*.whl") if p.name.startswith(stem))
    return wheel


def _clean_venv(session: nox.Session, path: Path, *, pip: bool = False) -> Path:
    """A new venv at ``path`` (with pip when asked); its scripts directory."""
    shutil.rmtree(path, ignore_errors=True)
    seed = ["--seed"] if pip else []
    session.run(_uv(), "venv", "-q", *seed, "-p", str(session.python), str(path), external=True)
    return path / ("Scripts" if sys.platform == "win32" else "bin")


@nox.session(python=DEFAULT_PYTHON)
def wheels(session: nox.Session) -> None:
    """sdist and wheel of every distribution into dist/, checked and installed as a user would.

    Each wheel goes into a venv of its own with only its declared dependencies (ours
    from dist/) and is imported; then ``pip install --find-links dist
    "dotmac-events[redis]"`` must install exactly the core, the Redis plugin and what
    they need.
    """
    session.install(TWINE)
    packages = ["core", *PLUGINS]
    shutil.rmtree(DIST, ignore_errors=True)
    # uv builds the sdist, then the wheel from the sdist: a file missing from the sdist
    # fails here rather than for a user. The builds run side by side (each is mostly
    # the start of a build backend).
    builds = [[_uv(), "build", "-q", "--out-dir", str(DIST), str(_home(p))] for p in packages]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        done = list(pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True), builds))
    for result in done:
        session.log(" ".join(result.args))
        if result.returncode != 0:
            session.error(f"build failed:\n{result.stdout}{result.stderr}")
    built = sorted(str(p) for p in [*DIST.glob("*.whl"), *DIST.glob("*.tar.gz")])
    session.run("twine", "check", "--strict", *built)
    check = str(ROOT / "scripts" / "check_install.py")
    tmp = Path(session.create_tmp())
    for package in packages:
        python = str(_clean_venv(session, tmp / f"venv-{package}") / "python")
        uv_install = [_uv(), "pip", "install", "-q", "-p", python, "--find-links", str(DIST)]
        session.run(*uv_install, str(_wheel(package)), external=True)
        session.run(python, check, "imports", _project(package)["name"], external=True)
    # What the README tells a user to run, with pip itself.
    bin_dir = _clean_venv(session, tmp / "venv-redis-extra", pip=True)
    python, wanted = str(bin_dir / "python"), "dotmac-events[redis]"
    pip_install = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    session.run(*pip_install, "--find-links", str(DIST), wanted, external=True)
    session.run(python, check, "closure", wanted, "dotmac-events", "dotmac-events-redis", external=True)
    session.run(str(bin_dir / "dotmac-events"), "plugins", external=True)


# A release with advisories that will never be withdrawn (CVE-2018-18074): PyPI's answer
# for it shows both that pip-audit's source is reachable and that it carries the data.
ADVISORY_CANARY = "https://pypi.org/pypi/requests/2.19.0/json"


def _advisories_unreachable(session: nox.Session) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(ADVISORY_CANARY, timeout=15) as response:
            data = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return f"{ADVISORY_CANARY}: {type(exc).__name__}: {exc}"
    if not data.get("vulnerabilities"):
        session.error(
            f"{ADVISORY_CANARY} answered without its known vulnerabilities: the audit would prove nothing"
        )
    return None


def _req_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    return match.group(0).lower().replace("_", "-") if match else requirement


def _audit_input(package: str, ours: set[str]) -> list[str]:
    """What a user installs: the distribution with its extras that pull in others' code."""
    project = _project(package)
    extras = [
        name
        for name, reqs in project.get("optional-dependencies", {}).items()
        if name not in ("test", "dev") and any(_req_name(r) not in ours for r in reqs)
    ]
    lines = [f"{_home(package)}[{','.join(extras)}]" if extras else str(_home(package))]
    if package != "core":
        # Plugins need the core, which no index has: resolve it from the checkout.
        lines.append(str(_home("core")))
    return lines


def _advisories(package: str, found: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """One line per advisory in a pip-audit JSON report, and whether a fixed release exists."""
    lines = []
    for dep in found:
        for vuln in dep.get("vulns", []):
            fixes = vuln.get("fix_versions") or []
            fixed_in = ", ".join(fixes) or "no release yet"
            lines.append(
                (
                    f"{package}: {dep['name']} {dep['version']} {vuln['id']} (fixed in: {fixed_in})",
                    bool(fixes),
                )
            )
    return lines


@nox.session(python=DEFAULT_PYTHON)
def audit(session: nox.Session) -> None:
    """pip-audit of what each distribution resolves to today, against PyPI's advisory data.

    Fails on a known vulnerability that has a fixed release; one without a fix is
    listed. When PyPI cannot be reached the session is skipped and says so.
    """
    unreachable = _advisories_unreachable(session)
    if unreachable is not None:
        session.skip(f"dependency audit NOT run: PyPI's advisory data cannot be reached ({unreachable})")
    session.install(PIP_AUDIT)
    ours = {_project(p)["name"] for p in ["core", *PLUGINS]}
    tmp = Path(session.create_tmp())
    fixable: list[str] = []
    for package in ["core", *PLUGINS]:
        wanted, pinned, report = (tmp / f"{package}.{ext}" for ext in ("in", "txt", "json"))
        wanted.write_text("\n".join(_audit_input(package, ours)) + "\n")
        compile_ = [_uv(), "pip", "compile", "-q", "--no-header", "-p", str(session.python)]
        session.run(*compile_, str(wanted), "-o", str(pinned), external=True)
        # Ours are not on PyPI (nothing to look up); everything else is pinned, so
        # pip-audit needs no resolver of its own.
        third_party = [
            line
            for line in pinned.read_text().splitlines()
            if "==" in line and not line.startswith((" ", "#")) and _req_name(line) not in ours
        ]
        pinned.write_text("\n".join(third_party) + "\n")
        report.unlink(missing_ok=True)
        session.run(
            "pip-audit",
            "-r",
            str(pinned),
            *AUDIT_OPTIONS,
            "-f",
            "json",
            "-o",
            str(report),
            success_codes=[0, 1],
        )
        if not report.exists():
            session.error(f"{package}: pip-audit wrote no report (its error is above)")
        found = json.loads(report.read_text())["dependencies"]
        skipped = [(d["name"], d["skip_reason"]) for d in found if d.get("skip_reason")]
        if skipped:
            session.error(f"{package}: not audited: {skipped}")
        advisories = _advisories(package, found)
        session.log(f"{package}: {len(found)} dependencies audited, {len(advisories)} advisories")
        for line, fixed in advisories:
            session.log(line)
            if fixed:
                fixable.append(line)
    if fixable:
        session.error(f"{len(fixable)} known vulnerabilities with a fixed release:\n" + "\n".join(fixable))


# --- the docs: every code block runs, and the site builds ------------------------------


@nox.session(python=DEFAULT_PYTHON)
def docs(session: nox.Session) -> None:
    """Every code block of the README, docs/, plugin READMEs and examples runs; then
    ``mkdocs build --strict`` (a broken link or reference fails) into a scratch directory.

    The blocks run with every plugin and its test extra installed (the Kafka test
    broker runs the quick start on Kafka). Pass pytest arguments after ``--``.
    """
    # With the site's tools and what the observability page tells a reader to install
    # next to the otel plugin (resolved with the OpenTelemetry SDK of its test extra).
    docs_tools = ("-r", str(ROOT / "requirements-docs.txt"), "opentelemetry-exporter-prometheus")
    _install(session, *PLUGINS, also=docs_tools)
    session.run("pytest", str(ROOT / "tests" / "docs"), *session.posargs)
    site = Path(session.create_tmp()) / "site"
    env = {"NO_MKDOCS_2_WARNING": "1"}
    session.run("mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site), env=env)
