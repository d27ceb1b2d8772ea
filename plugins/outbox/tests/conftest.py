"""Fixtures: a throw-away PostgreSQL database per session, pools, buses, fault figures.

PostgreSQL is ``$DOTMAC_TEST_PG`` (a server DSN, default ``postgresql://postgres@127.0.0.1:5432/postgres``);
each session creates a database with a unique name and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from dotmac.events.plugins import reset_plugins
from dotmac.events.retry import set_testing
from dotmac.events.testing.figures import FaultFigures

SERVER_DSN = os.environ.get("DOTMAC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# Figures of the fault tests, printed at the end of the run (visible with -q).
_figures = FaultFigures("outbox/inbox fault-test figures")
report = _figures.fixture()


@pytest.fixture(autouse=True, scope="session")
def _test_mode() -> Iterator[None]:
    # Only the plugins these tests use, whatever else is installed; retry waits off.
    mp = pytest.MonkeyPatch()
    mp.setenv("DOTMAC_EVENTS_LOAD_PLUGINS", "memory,redis,kafka,outbox")
    reset_plugins()
    set_testing(True)
    yield
    set_testing(False)
    mp.undo()
    reset_plugins()


def _missing(reason: str) -> None:
    # On a developer's machine a missing service skips; in CI it must fail, or the
    # tests that need it would pass by never running.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(path=f"/{database}").geturl()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The DSN of a database created for this session (dropped at the end)."""
    name = f"dotmac_outbox_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(SERVER_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        _missing(f"PostgreSQL is not reachable at {SERVER_DSN}: {exc}")
    try:
        yield _with_database(SERVER_DSN, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def table() -> str:
    """A unique outbox table name for one test."""
    return f"outbox_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection: asyncpg.Connection[Any] = await asyncpg.connect(pg_dsn)
    yield connection
    await connection.close()


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    p: asyncpg.Pool[Any] = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=8)
    yield p
    await p.close()


@pytest.fixture
def memory_url() -> str:
    return f"memory://outbox-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server for the session."""
    from dotmac_events_redis.testing import RedisServer, redis_server_available

    if not redis_server_available():
        _missing("redis-server is not installed")
    with RedisServer() as server:
        yield server.url


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def until() -> Callable[..., Awaitable[None]]:
    """``await until(condition, timeout=..., what=...)`` (tests import nothing from here)."""
    return wait_for
