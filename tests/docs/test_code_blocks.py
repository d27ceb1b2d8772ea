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
``text``, ``output``, ``sql``, ``yaml``
    Output, messages, statements or manifests for another program: not run.
``json``, ``toml``
    Parsed, so they stay valid.

A block without an info string fails: each block says what it is. The line
``<!-- generated: quick-start -->`` (where the site shows the README's quick start)
counts as a ``python file=quickstart.py`` block holding it.

Blocks name the brokers a reader has on their own machine: Redis at
``redis://localhost:6379``, RabbitMQ at ``amqp://guest:guest@localhost:5672/``,
NATS at ``nats://localhost:4222``, PostgreSQL at ``postgresql://postgres@localhost``.
CI has the same services on loopback, so those URLs run as written. The README's quick
start takes its URL as an argument: it is run with each URL its comment names,
Kafka on a throwaway Tansu broker and NATS on a private server (or ``$NATS_URL``),
and must print the handler's line each time.
"""

from __future__ import annotations

import ast
import asyncio
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
INERT = {"text", "output", "sql", "yaml", "json", "toml"}
TIMEOUT = 90.0
# Streams the README's blocks make on the shared Redis.
DOCS_TOPICS = ("orders.created", "orders.created.dlq", "failed.events")
# Where the docs site inserts the README's quick start (scripts/docs_hooks.py).
QUICK_START_MARKER = "<!-- generated: quick-start -->"


@attrs.frozen
class Block:
    path: Path
    line: int
    language: str
    words: tuple[str, ...]
    source: str

    @property
    def id(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}"

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


def _readme_quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "README.md has no Python block"
    return match.group(1)


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i] == QUICK_START_MARKER:
            # The site shows the README's quick start here; the reader saves it as this file.
            yield Block(page, i + 1, "python", ("file=quickstart.py",), _readme_quick_start())
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
        # TimeoutExpired carries bytes even when the run asked for text.
        seen = b"".join(x if isinstance(x, bytes) else (x or "").encode() for x in (exc.stdout, exc.stderr))
        pytest.fail(f"{block.id}: still running after {TIMEOUT:g} s\n{seen.decode(errors='replace')}")
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
    if block.language in ("text", "output", "sql", "yaml"):
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


@pytest.fixture(scope="module", autouse=True)
def _forget_the_docs_streams_on_the_shared_redis() -> Iterator[None]:
    # The README's blocks use the names a reader sees on the Redis at localhost:6379;
    # what they leave there is removed afterwards.
    yield
    import redis

    client = redis.Redis.from_url("redis://localhost:6379/0")
    try:
        client.delete(*(f"dotmac:events:{topic}" for topic in DOCS_TOPICS))
    finally:
        client.close()


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    from dotmac_events_nats.testing import (  # type: ignore[import-not-found,unused-ignore]
        NatsUnavailableError,
        nats_url_for_tests,
    )

    try:
        with nats_url_for_tests() as url:
            yield url
    except NatsUnavailableError:
        # No nats-server binary here: the server the README names, which CI also has.
        yield "nats://localhost:4222"


@pytest.fixture(scope="module")
def kafka_servers() -> Iterator[str]:
    from dotmac_events_kafka.testing import kafka_bootstrap_servers

    with kafka_bootstrap_servers() as servers:
        yield servers


@pytest.mark.parametrize("transport", ["redis", "amqp", "nats", "kafka"])
def test_quick_start_prints_on_every_transport_it_names(
    transport: str, request: pytest.FixtureRequest
) -> None:
    """The README's quick start, run with each URL its comment names, prints the handler's line."""
    block = _quick_start()
    named = re.findall(r"\b(?:redis|kafka|amqp|nats)://[^\s,)]+", block.source)
    (url,) = [u for u in named if u.startswith(f"{transport}://")]
    if transport == "kafka":
        url = f"kafka://{request.getfixturevalue('kafka_servers')}"
    elif transport == "nats":
        url = request.getfixturevalue("nats_url")
    try:
        with tempfile.TemporaryDirectory(prefix="dotmac-quickstart-") as tmp:
            script = Path(tmp) / "quickstart.py"
            script.write_text(block.source)
            out = _run([sys.executable, str(script), url], Path(tmp), block)
    finally:
        if transport == "amqp":
            asyncio.run(_delete_rabbitmq_queues(url))
    assert "billing order 7" in out.splitlines()


async def _delete_rabbitmq_queues(url: str) -> None:
    """The quick start's group queue on the shared RabbitMQ, and the topic's retained one."""
    import aio_pika

    from dotmac_events_rabbitmq import RabbitMQConfig

    config = RabbitMQConfig()
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for topic in DOCS_TOPICS:
            for suffix in ("billing", "@retained"):
                await channel.queue_delete(config.queue_name(topic, suffix))
    finally:
        await connection.close()


def test_the_collector_reads_info_strings_and_a_failing_block_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n```python fragment\nawait x\n```\n\n  ```bash\n  exit 3\n  ```\n\n```\nbare\n```\n"
    )
    fragment, shell, bare = blocks(page)
    assert (fragment.language, fragment.fragment, fragment.line) == ("python", True, 3)
    assert (shell.language, shell.source) == ("bash", "exit 3\n")  # indented fences are dedented
    assert bare.language == ""  # what test_every_block_says_what_it_is refuses
    with pytest.raises(pytest.fail.Exception, match="exit 3"):
        _run(["bash", "-euo", "pipefail"], tmp_path, shell, stdin=_shell(shell))
