"""Every fenced code block of the user docs runs, as the reader sees it.

Collected from ``README.md``, ``docs/**/*.md``, ``plugins/*/README.md`` and
``examples/**/*.md``. The blocks of one page run in order, in one scratch
directory, each in a fresh interpreter or shell, so a page reads like a session
a user would type. The info string after the opening fence says what a block is:

``python``
    A whole program: run with the interpreter of this test (every plugin installed).
``python file=PATH``
    A module of a larger example: written to ``PATH`` in the page's directory
    (importable by the blocks after it), then imported once to prove it loads; a
    file named ``test_*.py`` is run with pytest instead.
``bash`` / ``sh``
    Commands: run with ``bash -euo pipefail``; the ``dotmac-events`` command of this
    interpreter is first on ``PATH``.
``console``
    A transcript: lines starting with ``$ `` are run as above, the others are the
    output it shows and are not compared.
``<language> fragment``
    A piece shown for its shape (it needs a host, a package index, a secret, or
    runs for ever): Python is compiled (top-level ``await`` allowed), shell is
    parsed with ``bash -n``; neither runs.
``text``, ``output``, ``sql``
    Output, messages or statements for another program: not run.
``json``, ``toml``
    Parsed, so they stay valid.

A block without an info string fails: each block says what it is.

Blocks name the brokers a reader has on their own machine: Redis at
``redis://localhost:6379``, RabbitMQ at ``amqp://guest:guest@localhost:5672/``,
NATS at ``nats://localhost:4222``, PostgreSQL at ``postgresql://postgres@localhost``.
CI has the same services on loopback, so those URLs run as written. A Kafka block
uses ``kafka://localhost:9092``; no broker listens there here, so the test starts
a throwaway Tansu broker and gives the block its address through
``DOTMAC_EVENTS_DOCS_KAFKA`` only when the block itself reads that variable
(``os.environ.get("DOTMAC_EVENTS_DOCS_KAFKA", "localhost:9092")``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(?P<indent>\s*)(?P<mark>`{3,}|~{3,})(?P<info>[^`]*)$")
RUNNABLE = {"python", "bash", "sh", "console"}
INERT = {"text", "output", "sql", "json", "toml"}
TIMEOUT = 90.0


@attrs.frozen
class Block:
    path: Path
    line: int
    language: str
    words: tuple[str, ...]
    source: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def fragment(self) -> bool:
        return "fragment" in self.words

    @property
    def file(self) -> str | None:
        for word in self.words:
            if word.startswith("file="):
                return word.removeprefix("file=")
        return None


def pages() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found += sorted(ROOT.glob("plugins/*/README.md"))
    found += sorted((ROOT / "examples").rglob("*.md"))
    return [p for p in found if "_template" not in p.parts]


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, mark = len(match["indent"]), match["mark"]
        words = tuple(match["info"].split())
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(mark):
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        yield Block(page, i + 1, words[0] if words else "", words[1:], body)
        i = end + 1


ALL = [block for page in pages() for block in blocks(page)]


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Blocks read what they need; nothing of the test's own bus settings leaks in.
    env.pop("DOTMAC_EVENTS_URL", None)
    env.setdefault("DOTMAC_EVENTS_LOAD_PLUGINS", "")
    if not env["DOTMAC_EVENTS_LOAD_PLUGINS"]:
        env.pop("DOTMAC_EVENTS_LOAD_PLUGINS")
    return env


def _run(cmd: list[str], workdir: Path, block: Block, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            cmd,
            cwd=workdir,
            env=_env(workdir),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id}: still running after {TIMEOUT:g} s\n{exc.stdout or ''}{exc.stderr or ''}")
    if done.returncode != 0:
        pytest.fail(
            f"{block.id}: exit {done.returncode}\n--- block\n{block.source}--- stdout\n{done.stdout}"
            f"--- stderr\n{done.stderr}"
        )
    return done.stdout


def _shell(block: Block) -> str:
    if block.language != "console":
        return block.source
    commands = [line[2:] for line in block.source.splitlines() if line.startswith("$ ")]
    assert commands, f"{block.id}: a console block without a '$ ' command"
    return "\n".join(commands) + "\n"


@pytest.fixture(scope="module")
def workdirs() -> Iterator[dict[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="dotmac-docs-") as tmp:
        made: dict[Path, Path] = {}
        for page in {b.path for b in ALL}:
            made[page] = Path(tmp) / str(len(made))
            made[page].mkdir()
        yield made


def test_every_block_says_what_it_is() -> None:
    unknown = [b.id for b in ALL if b.language not in RUNNABLE | INERT]
    assert not unknown, f"blocks without a known info string (see this module's docstring): {unknown}"


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_block(block: Block, workdirs: dict[Path, Path]) -> None:
    workdir = workdirs[block.path]
    if block.language in ("text", "output", "sql"):
        pytest.skip("output or statements for another program")
    if block.language == "json":
        json.loads(block.source)
        return
    if block.language == "toml":
        tomllib.loads(block.source)
        return
    if block.language == "python":
        if block.fragment:
            compile(block.source, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            return
        if block.file is not None:
            target = workdir / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            for parent in target.relative_to(workdir).parents:
                if parent != Path(".") and not (workdir / parent / "__init__.py").exists():
                    (workdir / parent / "__init__.py").write_text("")
            target.write_text(block.source)
            if target.name.startswith("test_"):
                pytest_args = ["-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto"]
                _run([sys.executable, "-m", "pytest", *pytest_args, block.file], workdir, block)
                return
            module = ".".join(Path(block.file).with_suffix("").parts)
            _run([sys.executable, "-c", f"import {module}"], workdir, block)
            return
        _run([sys.executable, "-"], workdir, block, stdin=block.source)
        return
    script = _shell(block)
    if block.fragment:
        _run(["bash", "-n"], workdir, block, stdin=script)
        return
    _run(["bash", "-euo", "pipefail"], workdir, block, stdin=script)


def _quick_start() -> Block:
    return next(b for b in ALL if b.path == ROOT / "README.md" and b.language == "python")


@pytest.fixture(scope="module")
def kafka_servers() -> Iterator[str]:
    from dotmac_events_kafka.testing import kafka_bootstrap_servers

    with kafka_bootstrap_servers() as servers:
        yield servers


@pytest.mark.parametrize("transport", ["redis", "amqp", "kafka"])
def test_quick_start_prints_on_every_transport_it_names(
    transport: str, request: pytest.FixtureRequest
) -> None:
    """The README's quick start, run with each URL its comment names, prints the handler's line."""
    block = _quick_start()
    named = re.findall(r"\b(?:redis|kafka|amqp)://\S+?(?=[\s)]|$)", block.source)
    (url,) = [u for u in named if u.startswith(f"{transport}://")]
    if transport == "kafka":
        url = f"kafka://{request.getfixturevalue('kafka_servers')}"
    with tempfile.TemporaryDirectory(prefix="dotmac-quickstart-") as tmp:
        script = Path(tmp) / "quickstart.py"
        script.write_text(block.source)
        out = _run([sys.executable, str(script), url], Path(tmp), block)
    assert "billing order 7" in out.splitlines()
