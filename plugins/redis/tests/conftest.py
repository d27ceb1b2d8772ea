"""Fixtures: a private redis-server (or ``$REDIS_URL``), buses, raw clients, fault figures."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import pytest
import redis.asyncio as aioredis

from dotmac.events import EventBus, create_bus
from dotmac.events.config import structure_config
from dotmac.events.plugins import get_registry
from dotmac.events.testing.figures import FaultFigures
from dotmac_events_redis import RedisConfig
from dotmac_events_redis.testing import RedisServer, redis_server_available

# Figures of the fault tests, printed at the end of the run (visible with -q).
_figures = FaultFigures("redis fault-test figures")
report = _figures.fixture()


def needs_redis_server() -> None:
    if not redis_server_available():
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``$REDIS_URL``, or a private redis-server on a free port for the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    needs_redis_server()
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def private_server() -> Iterator[Callable[..., RedisServer]]:
    """Factory of redis-servers owned by one test (to restart or kill them)."""
    needs_redis_server()
    servers: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.cleanup()


def config_for(url: str, **overrides: Any) -> RedisConfig:
    """The RedisConfig of ``url`` with ``overrides``."""
    spec = get_registry().transport_for_scheme(url.split(":", 1)[0])
    assert spec.parse_url is not None
    fields = spec.parse_url(url)
    base: RedisConfig = structure_config(spec, fields)
    return attrs.evolve(base, **overrides)


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def buses(redis_url: str, prefix: str) -> AsyncIterator[Callable[..., EventBus]]:
    """Factory of un-started buses on the session server; all are closed afterwards."""
    made: list[EventBus] = []

    def make(
        url: str | None = None,
        *,
        observers: tuple[object, ...] = (),
        bus_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> EventBus:
        overrides.setdefault("key_prefix", prefix)
        config = config_for(url or redis_url, **overrides)
        bus = create_bus(config, observers=observers, **(bus_options or {}))
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close(timeout=1.0)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the session server, to look at what the bus wrote."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
