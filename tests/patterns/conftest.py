"""Fixtures of the pattern tests: a private ``redis-server`` (the tests kill consumers,
not Redis, but keep their keys away from shared servers) and consumer processes
(``child.py``) that a test kills with SIGKILL."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).with_name("child.py")
STARTUP = 30.0


class Child:
    """``child.py`` in a subprocess; ``start`` returns once it printed ``ready``."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), *self.args, stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP)
        assert line == b"ready\n", line
        return self

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def children() -> AsyncIterator[Any]:
    started: list[Child] = []

    async def spawn(*args: str) -> Child:
        child = Child(*args)
        started.append(child)
        return await child.start()

    yield spawn
    for child in started:
        await child.kill()


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    pytest.importorskip("dotmac_events_redis")
    from dotmac_events_redis.testing import RedisServer, redis_server_available

    if not redis_server_available():
        pytest.fail("redis-server is not installed: the pattern tests need their own server")
    with RedisServer() as running:
        yield running
