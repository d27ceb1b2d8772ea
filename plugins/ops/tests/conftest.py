"""Fixtures: private redis-servers, fresh Prometheus registries, an HTTP client."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from dotmac_events_redis.testing import RedisServer, redis_server_available


@pytest.fixture
def redis_server() -> Iterator[Callable[[], RedisServer]]:
    """Factory of redis-servers owned by one test (so it may stop them)."""
    if not redis_server_available():
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI must have it)")
        pytest.skip("redis-server is not installed")
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        server = RedisServer()
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.cleanup()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def topic() -> str:
    return f"t.{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


def redis_url(server: RedisServer, **query: Any) -> str:
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    return server.url + (f"?{extra}" if extra else "")
